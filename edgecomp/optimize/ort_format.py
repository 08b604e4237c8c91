"""ONNX -> ORT format (.ort) for ONNX Runtime Mobile, plus the required-operators config for a reduced build."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import EdgecompError


def to_ort_format(src: Path, out_dir: Path, custom_op_library: str | None = None) -> tuple[Path, Path]:
    """Write ``<stem>.ort`` and ``<stem>.required_operators.config`` next to each other in ``out_dir``.

    The config lists exactly the operators (and opsets) the model uses; pass it to ORT's
    ``build.sh --include_ops_by_config`` to build a runtime that contains only those kernels.
    ``custom_op_library``: the library of the graph's custom ops (onnxruntime-extensions' tokenizer ops),
    which the conversion must load; the config then lists those ops under their domain too.
    """
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    src, out_dir = Path(src), Path(out_dir)
    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)  # an INFO line per written config
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        work = Path(tmp) / src.name
        shutil.copy(src, work)
        # Fixed optimization: the saved graph runs on any ORT build (runtime optimizations need
        # kernels a reduced build may not carry).
        with contextlib.redirect_stdout(io.StringIO()):
            convert_onnx_models_to_ort(Path(tmp), output_dir=Path(tmp) / "out",
                                       optimization_styles=[OptimizationStyle.Fixed],
                                       custom_op_library_path=Path(custom_op_library) if custom_op_library else None)
        produced = list((Path(tmp) / "out").glob("*.ort"))
        configs = list((Path(tmp) / "out").glob("*.config"))
        if not produced or not configs:
            raise EdgecompError(f"ORT-format conversion of {src.name} produced no .ort file",
                                "check that the model loads in onnxruntime (run `edgecomp run` on the .onnx)")
        ort_path = out_dir / f"{src.stem}.ort"
        cfg_path = out_dir / f"{src.stem}.required_operators.config"
        os.replace(produced[0], ort_path)
        os.replace(configs[0], cfg_path)
    return ort_path, cfg_path
