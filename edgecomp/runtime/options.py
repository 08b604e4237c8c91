"""The session options each artifact format is meant to run with, in one place: the runners apply them,
the native probe (edgecomp/bench/native) measures with them, and the manifest records them per artifact
(``session_options``) so an app loads the artifact the way it was measured.

Keys are the probe's (``--option KEY=VALUE``): ORT session config keys as ORT spells them (``session.*``),
plus ``arena``/``mem_pattern``/``load`` for ORT and ``weight_cache`` for LiteRT. Each entry lowers the
native footprint without changing outputs, as measured on all-MiniLM-L6-v2 int8 (x86, 1 thread, seq 128):
- ``.ort``: ORT maps the file and keeps its initializers in the mapping instead of copying the flatbuffer
  and every initializer to the heap: native peak RSS 87.8 -> 61.2 MB (anonymous 41.7 -> 26.4 MB), outputs
  bit-identical. The mapping stays valid because ORT owns it; the same keys on a bytes buffer crashed from
  Python because the binding hands ORT a temporary copy of the bytes (see tests/test_native_probe.py).
- ``.tflite``: XNNPACK's in-memory weight cache (see edgecomp/runtime/litert.py): 71.2 -> 30.6 MB.
- a graph with edgecomp's own custom op (``edgecomp.MoEFeedForward``, edgecomp/kernels) also gets
  ``custom_ops = "edgecomp"``: register edgecomp's custom-op library (built for the machine that runs it)
  before the session is made; the runner does it through ``SessionOptions.register_custom_ops_library``,
  the probe through ``RegisterCustomOpsLibrary`` (``--option custom_ops=PATH``).
- ``.onnx``: none of ORT's switches helps a self-contained .onnx (arena off: 67.0 -> 76.5 MB; prepacking
  off: 66.8 MB); only external data does (52.1 MB), which is a different artifact layout.
"""

from __future__ import annotations

from pathlib import Path

SESSION_OPTIONS: dict[str, dict[str, str]] = {
    "onnx": {},
    "ort": {
        "session.use_memory_mapped_ort_model": "1",
        "session.use_ort_model_bytes_directly": "1",
        "session.use_ort_model_bytes_for_initializers": "1",
    },
    "tflite": {"weight_cache": ":memory"},
}


CUSTOM_OPS_KEY = "custom_ops"
EDGECOMP_OPS = "edgecomp"  # the value naming edgecomp's own library (edgecomp.kernels.build_custom_ops)


def session_options(path: str | Path) -> dict[str, str]:
    """A copy of the options for ``path``'s format ({} for a format without any), plus ``custom_ops`` when
    the graph has an ``edgecomp.MoEFeedForward`` node: the library's kernel runs it (ORT prefers it over
    the node's local-function fallback, which is all that runs without the library)."""
    options = dict(SESSION_OPTIONS.get(Path(path).suffix.lstrip("."), {}))
    if Path(path).suffix in (".onnx", ".ort") and Path(path).is_file():
        from ..kernels import uses_edgecomp_ops

        if uses_edgecomp_ops(Path(path)):
            options[CUSTOM_OPS_KEY] = EDGECOMP_OPS
    return options


def custom_ops_library(value: str, machine: str | None = None) -> str:
    """The library file a ``custom_ops`` option names: edgecomp's (built for ``machine``) or a path."""
    if value == EDGECOMP_OPS:
        from ..kernels import build_custom_ops

        return str(build_custom_ops(machine))
    return value


def options_for_machine(options: dict[str, str], machine: str | None = None) -> dict[str, str]:
    """``options`` as a process on ``machine`` takes them: ``custom_ops=edgecomp`` becomes the library file
    built for that machine (the native probe, the aarch64 guest)."""
    return {k: custom_ops_library(v, machine) if k == CUSTOM_OPS_KEY else v for k, v in options.items()}


def apply_ort_options(so, options: dict[str, str]) -> None:
    """Set ``options`` on an onnxruntime.SessionOptions the way the native probe sets them through the
    C API; ``load`` (how the probe hands over the file) has no Python counterpart: Python loads by path."""
    for key, value in options.items():
        if key == "arena":
            so.enable_cpu_mem_arena = value != "0"
        elif key == "mem_pattern":
            so.enable_mem_pattern = value != "0"
        elif key == "opt_level":
            import onnxruntime as ort

            so.graph_optimization_level = {0: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                           1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                           2: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}.get(
                int(value), ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        elif key == CUSTOM_OPS_KEY:
            so.register_custom_ops_library(custom_ops_library(value))
        elif "." in key:
            so.add_session_config_entry(key, value)
