"""Silence third-party chatter (import-time warnings, tracer warnings, advice logs) for CLI users.

Our own progress lines say what is happening; library logs at WARNING level are noise to a user who
did nothing wrong. Errors still surface (as EdgecompError one-liners or ERROR logs).
"""

import logging
import os
import warnings

NOISY_LOGGERS = ("torchao", "torch.utils._pytree", "torch.onnx", "optimum", "transformers", "root", "absl",
                 "onnxruntime", "litert_torch", "ai_edge_litert", "jax")


def quiet_third_party() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("GLOG_minloglevel", "2")
    for name in NOISY_LOGGERS:
        logging.getLogger(None if name == "root" else name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
