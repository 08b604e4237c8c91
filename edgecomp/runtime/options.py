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


def session_options(path: str | Path) -> dict[str, str]:
    """A copy of the options for ``path``'s format ({} for a format without any)."""
    return dict(SESSION_OPTIONS.get(Path(path).suffix.lstrip("."), {}))


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
        elif "." in key:
            so.add_session_config_entry(key, value)
