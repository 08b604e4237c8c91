"""Silence third-party chatter (import-time warnings, tracer warnings, advice logs) for CLI users.

Our own progress lines say what is happening; library logs at WARNING level are noise to a user who
did nothing wrong. Errors still surface (as EdgecompError one-liners or ERROR logs).
"""

import contextlib
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


@contextlib.contextmanager
def native_stderr_silenced():
    """Mute C++ logging written straight to file descriptor 2 (TensorFlow/absl INFO lines from the TFLite
    converter) for the duration of a call. Python exceptions still carry their messages."""
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (e.g. captured by a test runner)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
