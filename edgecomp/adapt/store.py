"""The adapter folder `edgecomp adapt` writes: adapter.json (what, on which base, how trained, how good, the
files it owns) + adapter.safetensors (the trained tensors: R per module (LoRA-XS), D/U (LoRA), the whole
backbone (full) and the task head). Built in a staging folder and swapped in (edgecomp.outdir)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import EdgecompError

RECORD = "adapter.json"  # listed in edgecomp.outdir.RECORDS, so --force may replace an adapter folder
TENSORS = "adapter.safetensors"
HEAD_PREFIX = "adapter_head."


@dataclass
class StoredAdapter:
    path: Path
    record: dict
    tensors: dict[str, torch.Tensor]

    @property
    def name(self) -> str:
        return self.record.get("name") or self.path.name

    @property
    def method(self) -> str:
        return self.record["config"]["method"]

    @property
    def rank(self) -> int:
        return int(self.record["config"]["rank"])

    @property
    def roles(self) -> list[str]:
        return list(self.record["config"]["roles"])

    @property
    def task(self) -> str:
        return self.record["config"]["task"]

    def module_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.tensors.items() if not k.startswith(HEAD_PREFIX)}

    def head(self) -> torch.nn.Linear | None:
        w = self.tensors.get(HEAD_PREFIX + "weight")
        if w is None:
            return None
        head = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            head.weight.copy_(w)
            head.bias.copy_(self.tensors[HEAD_PREFIX + "bias"])
        return head


def write_adapter(out: Path, record: dict, tensors: dict[str, torch.Tensor], force: bool = False,
                  protected: tuple[Path, ...] = ()) -> None:
    from safetensors.torch import save_file

    from .. import __version__
    from ..manifest import write_json_atomic
    from ..outdir import staged_output_dir, written_files

    with staged_output_dir(out, force, protected=protected) as build:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(build / TENSORS))
        record = {"edgecomp_version": __version__, "kind": "adapter", **record}
        record["files"] = [f for f in written_files(build) if f != RECORD]
        write_json_atomic(build / RECORD, record)


def read_adapter(path: Path) -> StoredAdapter:
    from safetensors.torch import load_file

    path = Path(path)
    rec_path = path / RECORD
    if not rec_path.is_file():
        raise EdgecompError(f"{path} is not an adapter folder (no {RECORD})", "pass a folder written by `edgecomp adapt`")
    try:
        record = json.loads(rec_path.read_text())
        tensors = load_file(str(path / TENSORS))
        record["config"]["method"]
    except Exception as e:
        raise EdgecompError(f"{path} is a damaged adapter folder ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})",
                            "re-run `edgecomp adapt` to rebuild it") from None
    return StoredAdapter(path, record, tensors)
