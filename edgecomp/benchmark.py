"""``edgecomp bench OUT``: re-measure an existing export in place and update its manifest and report.

With ``--target arm64`` every artifact is also run under qemu-aarch64 (see edgecomp.bench.arm64):
parity with x86, guest instructions per inference and guest-only peak RSS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .errors import EdgecompError
from .manifest import MANIFEST, check_artifact_hash, read_manifest, write_json_atomic
from .models import load_model, resolve_model
from .targets import load_target
from .tasks import TASKS
from .texts import default_texts, read_texts


def bench_export(export_dir: Path, target: str | None = None, texts_file: Path | None = None,
                 log: Callable[[str], None] = lambda s: None) -> dict:
    from .bench.fidelity import ReferenceSet
    from .pipeline import measure_artifact

    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    paths = [check_artifact_hash(export_dir, rec) for rec in manifest["artifacts"]]
    spec = resolve_model(manifest["model"].get("location") or manifest["model"]["name"])
    t = manifest["target"]
    export_target = load_target(t["file"] if t.get("file") and Path(t["file"]).exists() else t["name"])
    log(f"load: {spec.name} (the uncompressed PyTorch reference)")
    loaded = load_model(spec)
    task = TASKS.get(spec.task)
    texts = read_texts(texts_file) if texts_file else default_texts()
    ref = ReferenceSet(loaded, task, texts)
    for rec, path in zip(manifest["artifacts"], paths):
        rec["metrics"] = measure_artifact(path, rec, ref, loaded, export_target, True, log)
    if target is not None:
        if target not in ("arm64", "android"):
            raise EdgecompError(f"`edgecomp bench --target {target}` is not a measurement mode",
                                "use --target arm64 (qemu-aarch64 parity, instructions, guest RSS) or omit it")
        _bench_arm64(manifest, export_dir, paths, loaded, export_target, log)
    write_json_atomic(export_dir / MANIFEST, manifest)
    from .report import write_report

    write_report(manifest, export_dir)
    return manifest


def _bench_arm64(manifest, export_dir, paths, loaded, export_target, log) -> None:
    from .bench import arm64
    from .bench.latency import benchmark_feeds
    from .runtime import open_artifact

    if not arm64.env_present():
        raise EdgecompError("the aarch64 emulation environment is not set up", arm64.SETUP_HINT)
    cpu = export_target.emulated_cpu or "cortex-a76"
    texts = default_texts()
    for rec, path in zip(manifest["artifacts"], paths):
        feeds = benchmark_feeds(loaded.tokenizer, texts, 1, export_target.bench.seq_len, rec["inputs"])
        x86 = open_artifact(path, threads=1).run(feeds)
        log(f"arm64: {path.name} under qemu-aarch64 ({cpu})")
        rec["arm64"] = arm64.arm64_block(path, feeds, x86, cpu=cpu)
