"""``edgecomp run``: an exported artifact on its runtime over a text file, one JSON object per line.

Tokenizes with the model's own tokenizer files copied into the export folder, padding each batch only
to its longest text; never imports torch (this is the on-device code path).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .errors import EdgecompError
from .manifest import read_manifest
from .runtime import open_artifact
from .texts import batches, read_texts


def locate(artifact: Path) -> tuple[Path, dict, dict]:
    """(export dir, manifest, artifact record) for an export folder or a file inside one."""
    artifact = Path(artifact)
    if not artifact.exists():
        raise EdgecompError(f"{artifact} does not exist", "pass an export folder or an artifact file inside it")
    export_dir = artifact if artifact.is_dir() else artifact.parent
    manifest = read_manifest(export_dir)
    if artifact.is_dir():
        return export_dir, manifest, manifest["artifacts"][0]
    for rec in manifest["artifacts"]:
        if rec["path"] == artifact.name:
            return export_dir, manifest, rec
    raise EdgecompError(f"{artifact.name} is not listed in {export_dir}/manifest.json",
                        "pass an artifact written by `edgecomp export` (its folder holds the tokenizer)")


class TextEncoder:
    """The fast tokenizer from tokenizer.json, padded to the longest text of each batch."""

    def __init__(self, export_dir: Path, max_length: int):
        from tokenizers import Tokenizer

        tj = export_dir / "tokenizer.json"
        if not tj.exists():
            raise EdgecompError(f"{export_dir} has no tokenizer.json", "re-run `edgecomp export` (it copies the tokenizer)")
        self.tok = Tokenizer.from_file(str(tj))
        self.tok.no_padding()
        self.tok.enable_truncation(max_length)
        cfg = json.loads((export_dir / "tokenizer_config.json").read_text()) if (export_dir / "tokenizer_config.json").exists() else {}
        pad = cfg.get("pad_token") or "[PAD]"
        pad = pad["content"] if isinstance(pad, dict) else pad
        self.pad_id = self.tok.token_to_id(pad) or 0

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        encs = self.tok.encode_batch(texts)
        n = max(len(e.ids) for e in encs)
        ids = np.full((len(encs), n), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encs), n), dtype=np.int64)
        types = np.zeros((len(encs), n), dtype=np.int64)
        for i, e in enumerate(encs):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
            types[i, : len(e.ids)] = e.type_ids
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def max_length_for(export_dir: Path, record: dict) -> int:
    if record.get("seq_buckets"):
        return max(record["seq_buckets"])
    cfg = json.loads((export_dir / "config.json").read_text()) if (export_dir / "config.json").exists() else {}
    return int(min(cfg.get("max_position_embeddings", 512), 512))


def run_file(artifact: Path, input_file: Path, output_file: Path, threads: int = 1, batch_size: int = 8,
             generate: int | None = None, perplexity: bool = False) -> int:
    from .tasks import TASKS

    export_dir, manifest, record = locate(artifact)
    texts = read_texts(input_file)
    if manifest.get("early_exit"):
        # stages in order, stopping at the first confident exit (edgecomp.early_exit.runtime)
        from .early_exit.runtime import EarlyExitRunner

        runner = EarlyExitRunner(export_dir, threads=threads)
        records = runner.classify(texts, batch_size=batch_size)
        _write_lines([json.dumps(r) for r in records], output_file)
        return len(records)
    if manifest["model"]["task"] == "text-generation":
        from .llm.run import run_causal_lm

        records = run_causal_lm(export_dir / record["path"], export_dir, texts, generate_tokens=generate,
                                score_perplexity=perplexity, threads=threads)
        _write_lines([json.dumps(r) for r in records], output_file)
        return len(records)
    task = TASKS.get(manifest["model"]["task"])
    spec = SimpleNamespace(**manifest["model"])
    runner = open_artifact(export_dir / record["path"], threads=threads)
    encode = TextEncoder(export_dir, max_length_for(export_dir, record))
    lines = []
    for chunk in batches(texts, batch_size):
        feeds = encode(chunk)
        feeds = {k: v for k, v in feeds.items() if k in runner.input_names}
        for rec in task.records(runner.run(feeds), feeds, spec):
            lines.append(json.dumps(rec))
    _write_lines(lines, output_file)
    return len(lines)


def _write_lines(lines: list[str], output_file: Path) -> None:
    if str(output_file) == "-":
        sys.stdout.write("\n".join(lines) + "\n")
        return
    output_file = Path(output_file)
    tmp = output_file.with_name(f".{output_file.name}.tmp")
    try:
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, output_file)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise EdgecompError(f"cannot write {output_file} ({e.strerror})", "choose a writable --output path") from None
