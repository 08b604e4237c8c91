"""The ``.onnx`` layout with the weights in a side file (``model.onnx`` + ``model.onnx.data``), an artifact
option of a target (``external_data = true`` in its ``[[artifacts]]``).

Why: ONNX Runtime copies every initializer of a self-contained .onnx into its heap, where it stays as
anonymous memory next to the packed weights; initializers in an external file are memory-mapped instead, so
the weights become file-backed pages the kernel can drop and re-read (a phone or a board under memory
pressure) and the anonymous footprint falls. Outputs are the same bytes (the graph is unchanged).

An artifact's files are its .onnx plus the data files its initializers name (``artifact_files``); sizes,
hashes and page-cache drops go over all of them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

SUFFIX = ".data"
# initializers below this stay in the graph file: shapes and scales, not worth a mapping each
SIZE_THRESHOLD = 1024


def data_file_name(onnx_path: Path) -> str:
    return Path(onnx_path).name + SUFFIX


def save_with_external_data(path: Path) -> Path:
    """Rewrite the self-contained ``path`` as ``path`` + ``path.data`` (in place; the folder is a staging one).
    Returns the data file."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    data = path.with_name(data_file_name(path))
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=SIZE_THRESHOLD, convert_attribute=False)
    os.replace(tmp, path)
    # onnx creates the data file owner-only; an artifact is read by whoever runs it, like the .onnx
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(data, 0o666 & ~umask)
    return data


def external_files(path: Path) -> list[Path]:
    """The data files ``path``'s initializers live in (none for a self-contained .onnx or another format)."""
    path = Path(path)
    if path.suffix != ".onnx" or not path.is_file():
        return []
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    names = {ExternalDataInfo(t).location for t in _get_all_tensors(model) if uses_external_data(t)}
    return [path.parent / n for n in sorted(names)]


def artifact_files(path: Path) -> list[Path]:
    return [Path(path), *external_files(path)]


def stored_bytes(path: Path) -> int:
    """What a device stores for the artifact: the file and its data files."""
    return sum(f.stat().st_size for f in artifact_files(path))


def copy_self_contained(src: Path, dst: Path) -> None:
    """``src`` (either layout) as one self-contained .onnx at ``dst`` (e.g. what ORT's format converter takes)."""
    if not external_files(src):
        shutil.copy(src, dst)
        return
    import onnx

    onnx.save(onnx.load(str(src)), str(dst))
