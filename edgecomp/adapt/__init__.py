"""Task adapters over one frozen base: LoRA-XS (a trainable r x r matrix between two frozen factors of the
base weight's truncated SVD), plain LoRA for comparison, head-only and full fine-tuning baselines.

``config`` (AdaptConfig), ``modules`` (the adapted Linear and attach/detach by archs roles), ``train``
(the CPU loop and task quality), ``store`` (the adapter folder `edgecomp adapt` writes), ``onnx`` (adapter
slots in the base graph, ``.onnx_adapter`` files for ONNX Runtime's multi-LoRA), ``litert`` (the same slots as
.tflite signature inputs, fed from the same files), ``bench`` (the scripts/bench_adapters.py measurements).
"""



def __getattr__(name):
    # lazily: the run-time modules (attach, litert's runner half) are imported on the device path, which
    # must not pull in torch/transformers through config -> archs
    if name in ("METHODS", "TASKS", "AdaptConfig"):
        from . import config

        return getattr(config, name)
    raise AttributeError(name)
