"""``edgecomp run``: an exported artifact on its runtime over a text file, one JSON object per input line.

Every input line gets a record carrying its ``index`` (0-based line number), blank lines included (they
get an ``error``). Texts longer than the artifact's ``max_length`` (recorded in the manifest) are cut
there and marked ``truncated``. A text's output does not depend on its batch: texts are grouped by length,
and artifacts whose activations are quantized with one range per tensor run one text at a time.
Tokenizes with the model's own tokenizer files copied into the export folder; never imports torch (this
is the on-device code path).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .errors import EdgecompError
from .manifest import check_artifact_hash, read_manifest
from .runtime import open_artifact
from .tasks import TASKS
from .texts import read_lines


@dataclass
class RunSummary:
    records: int = 0
    blank: list[int] = field(default_factory=list)
    truncated: int = 0
    max_length: int | None = None


def locate(artifact: Path) -> tuple[Path, dict, dict]:
    """(export dir, manifest, artifact record) for an export folder or a file inside one; the file must be
    the one the manifest measured (same sha256), so a corrupt or swapped artifact never reaches a runtime."""
    artifact = Path(artifact)
    if not artifact.exists():
        raise EdgecompError(f"{artifact} does not exist", "pass an export folder or an artifact file inside it")
    export_dir = artifact if artifact.is_dir() else artifact.parent
    manifest = read_manifest(export_dir)
    if artifact.is_dir():
        record = manifest["artifacts"][0]
    else:
        record = next((r for r in manifest["artifacts"] if r["path"] == artifact.name), None)
        if record is None:
            raise EdgecompError(f"{artifact.name} is not listed in {export_dir}/manifest.json",
                                "pass an artifact written by `edgecomp export` (its folder holds the tokenizer)")
    check_artifact_hash(export_dir, record)
    return export_dir, manifest, record


class TextEncoder:
    """The fast tokenizer from tokenizer.json, truncating at ``max_length`` and reporting who was cut."""

    def __init__(self, export_dir: Path, max_length: int):
        from tokenizers import Tokenizer

        tj = export_dir / "tokenizer.json"
        if not tj.exists():
            raise EdgecompError(f"{export_dir} has no tokenizer.json", "re-run `edgecomp export` (it copies the tokenizer)")
        try:
            self.tok = Tokenizer.from_file(str(tj))
        except Exception as e:
            raise EdgecompError(f"{tj} cannot be read by tokenizers ({str(e).splitlines()[0][:120]})",
                                "re-run `edgecomp export` to rebuild the folder") from None
        self.tok.no_padding()
        self.tok.enable_truncation(max_length)
        cfg = _json_or_empty(export_dir / "tokenizer_config.json")
        pad = cfg.get("pad_token") or "[PAD]"
        pad = pad["content"] if isinstance(pad, dict) else pad
        self.pad_id = self.tok.token_to_id(pad) if isinstance(pad, str) and self.tok.token_to_id(pad) is not None else 0

    def encode(self, texts: list[str]) -> list:
        return self.tok.encode_batch(texts)

    def feeds(self, encs: list) -> dict[str, np.ndarray]:
        n = max(len(e.ids) for e in encs)
        ids = np.full((len(encs), n), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encs), n), dtype=np.int64)
        types = np.zeros((len(encs), n), dtype=np.int64)
        for i, e in enumerate(encs):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
            types[i, : len(e.ids)] = e.type_ids
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _json_or_empty(p: Path) -> dict:
    try:
        data = json.loads(p.read_text(encoding="utf-8")) if p.exists() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise EdgecompError(f"{p} is not valid JSON", "re-run `edgecomp export` to rebuild the folder") from None
    return data if isinstance(data, dict) else {}


def artifact_max_length(export_dir: Path, record: dict) -> int:
    """The longest input the artifact takes, as its export recorded it (older exports: derived the same way)."""
    if isinstance(record.get("max_length"), int):
        return record["max_length"]
    if record.get("seq_buckets"):
        return max(record["seq_buckets"])
    cfg = _json_or_empty(export_dir / "config.json")
    return int(min(cfg.get("max_position_embeddings", 512), 512))


def batch_invariant(record: dict) -> bool:
    """False when the artifact quantizes activations with one range per tensor (edgecomp.quant
    QuantScheme.batch_invariant, recorded per artifact); a record without it is fed one text at a time."""
    return bool(record.get("batch_invariant", False))


def length_groups(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (shortest first), at most ``batch_size`` each."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def check_run_options(manifest: dict, batch_size: int, threads: int, generate: int | None, perplexity: bool,
                      max_length: int | None) -> None:
    if batch_size < 1:
        raise EdgecompError(f"--batch-size {batch_size} is not a positive number of texts", "use e.g. --batch-size 8")
    if threads < 1:
        raise EdgecompError(f"--threads {threads} is not a positive number of threads", "use e.g. --threads 1")
    if max_length is not None and max_length < 2:
        raise EdgecompError(f"--max-length {max_length} leaves no room for a text", "use e.g. --max-length 128")
    task = TASKS.get(manifest["model"]["task"])
    if getattr(task, "run_records", None):  # a decoder: run means generating or scoring
        if generate is None and not perplexity:
            raise EdgecompError(f"a {task.name} artifact needs --generate N or --perplexity",
                                "add `--generate 32` (greedy continuation) or `--perplexity`")
        if generate is not None and generate < 1:
            raise EdgecompError(f"--generate {generate} is not a positive number of tokens", "use e.g. --generate 32")
    elif generate is not None or perplexity:
        flag = "--generate" if generate is not None else "--perplexity"
        raise EdgecompError(f"{flag} is for text-generation exports, and this export is {task.name}",
                            f"drop {flag}, or run it on an export of a causal LM")


def run_file(artifact: Path, input_file: Path, output_file: Path, threads: int = 1, batch_size: int = 8,
             generate: int | None = None, perplexity: bool = False, max_length: int | None = None,
             adapter: str | None = None) -> RunSummary:
    export_dir, manifest, record = locate(artifact)
    check_run_options(manifest, batch_size, threads, generate, perplexity, max_length)
    if adapter is not None:  # a LoRA adapter active in an artifact with slots (edgecomp.adapt.attach)
        from .adapt.attach import adapter_record, resolve_adapter

        record = adapter_record(manifest, record, Path(artifact).is_dir())
        adapter = resolve_adapter(export_dir, manifest, adapter)
    lines = read_lines(input_file)
    if not any(t.strip() for t in lines):
        raise EdgecompError(f"text file {input_file} is empty (no line holds text)",
                            "put one text per line in it")
    summary = RunSummary(blank=[i for i, t in enumerate(lines) if not t.strip()])
    index = [i for i, t in enumerate(lines) if t.strip()]
    texts = [lines[i].strip() for i in index]
    results: list[dict] = []
    if texts:
        run_records = getattr(TASKS.get(manifest["model"]["task"]), "run_records", None)
        if manifest.get("early_exit"):
            results = _run_early_exit(export_dir, texts, threads, summary)
        elif run_records:
            results = run_records(export_dir / record["path"], export_dir, texts, generate_tokens=generate,
                                  score_perplexity=perplexity, threads=threads)
        else:
            results = _run_encoder(export_dir, manifest, record, texts, threads, batch_size, max_length, summary, adapter)
    out: list[dict | None] = [None] * len(lines)
    for i in summary.blank:
        out[i] = {"index": i, "error": "empty line: nothing to run"}
    for i, rec in zip(index, results):
        out[i] = {"index": i, **rec}
    summary.records = len(out)
    _write_lines([json.dumps(r) for r in out], output_file)
    return summary


def _run_encoder(export_dir, manifest, record, texts, threads, batch_size, max_length, summary, adapter=None) -> list[dict]:
    task = TASKS.get(manifest["model"]["task"])
    spec = SimpleNamespace(**manifest["model"])
    limit = artifact_max_length(export_dir, record)
    if max_length is not None:
        if max_length > limit:
            raise EdgecompError(f"--max-length {max_length} is more than {record['path']} takes ({limit} tokens)",
                                f"use --max-length {limit} or less")
        limit = max_length
    summary.max_length = limit
    results: list[dict | None] = [None] * len(texts)
    adapter_path, entry = adapter or (None, None)
    for group, outputs, feeds, cut in encoder_batches(export_dir, record, texts, threads, batch_size, limit, adapter_path):
        summary.truncated += sum(cut)
        extra = [{}] * len(group)
        if adapter_path is not None:
            from .adapt.attach import adapter_records

            extra = adapter_records(outputs, entry)
        for i, c, rec, more in zip(group, cut, task.records(outputs, feeds, spec), extra):
            results[i] = {**rec, **more, "truncated": c}
    return results


def encoder_batches(export_dir: Path, record: dict, texts: list[str], threads: int = 1, batch_size: int = 8,
                    max_length: int | None = None, adapter: Path | None = None):
    """An encoder artifact over texts the way `edgecomp run` feeds it: (indices, outputs, feeds, truncated
    per index) per length-grouped batch; one text per batch when the artifact is not batch-invariant."""
    limit = max_length or artifact_max_length(export_dir, record)
    runner = open_artifact(export_dir / record["path"], threads=threads)
    if adapter is not None:
        runner.activate_adapter(adapter)
    if not batch_invariant(record):
        batch_size = 1
    if getattr(runner, "takes_text", False):
        yield from _string_input_batches(export_dir, record, runner, texts, batch_size, limit)
        return
    encode = TextEncoder(export_dir, limit)
    encs = encode.encode(texts)
    for group in length_groups([len(e.ids) for e in encs], batch_size):
        feeds = encode.feeds([encs[i] for i in group])
        feeds = {k: v for k, v in feeds.items() if k in runner.input_names}
        yield group, runner.run(feeds), feeds, [bool(encs[i].overflowing) for i in group]


def _string_input_batches(export_dir, record, runner, texts, batch_size, limit):
    """A string-input artifact (``export --with-tokenizer``): texts go in as they are, no tokenizer library is
    imported. Batches group texts of similar character length. The graph reports the ids it fed its model;
    a text whose ids fill ``limit`` is reported ``truncated`` (it may have been exactly that long)."""
    built = artifact_max_length(export_dir, record)
    if limit != built:
        raise EdgecompError(f"{record['path']} tokenizes inside its graph, at {built} tokens: --max-length cannot "
                            "change that", "drop --max-length, or run the token-input artifact")
    for group in length_groups([len(t) for t in texts], batch_size):
        out = runner.run({"text": np.array([texts[i] for i in group], dtype=object)})
        feeds = {k: out[k] for k in ("input_ids", "attention_mask") if k in out}
        yield group, out, feeds, [bool(n >= limit) for n in feeds["attention_mask"].sum(-1)]


def _run_early_exit(export_dir, texts, threads, summary) -> list[dict]:
    """Stages in order, stopping at the first confident exit (edgecomp.early_exit.runtime). The stages
    quantize activations per tensor, so each text runs alone and its result is its own. Tokenized like
    the encoder path (tokenizers, all texts at once; transformers is never imported), and stages open as
    texts first reach them; ``latency_ms`` counts a text's stages."""
    from .early_exit.runtime import EarlyExitRunner

    runner = EarlyExitRunner(export_dir, threads=threads)
    encode = TextEncoder(export_dir, runner.max_length)
    encs = encode.encode(texts)
    summary.max_length = runner.max_length
    summary.truncated = sum(bool(e.overflowing) for e in encs)
    return [{**runner.run_feeds(encode.feeds([e]))[0], "truncated": bool(e.overflowing)} for e in encs]


def _write_lines(lines: list[str], output_file: Path) -> None:
    if str(output_file) == "-":
        sys.stdout.write("\n".join(lines) + ("\n" if lines else ""))
        return
    output_file = Path(output_file)
    if output_file.is_dir():
        raise EdgecompError(f"--output {output_file} is a folder", "pass a file path for the JSON lines")
    tmp = output_file.with_name(f".{output_file.name}.tmp")
    try:
        tmp.write_text("\n".join(lines) + ("\n" if lines else ""))
        os.replace(tmp, output_file)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno == 28:
            from .outdir import no_space

            raise no_space(output_file.parent, sum(len(x) + 1 for x in lines)) from None
        raise EdgecompError(f"cannot write {output_file} ({e.strerror})", "choose a writable --output path") from None

