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
    from .pipeline import VERIFY_MAX_LENGTH, measure_artifact

    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    paths = [check_artifact_hash(export_dir, rec) for rec in manifest["artifacts"]]
    if target is not None:
        wanted = load_target(target)
        from .bench import arm64

        if "arm64" in wanted.checks and not arm64.env_present():  # asked for explicitly: say how, do not skip
            raise EdgecompError("the aarch64 emulation environment is not set up", arm64.SETUP_HINT)
    spec = resolve_model(manifest["model"].get("location") or manifest["model"]["name"])
    t = manifest["target"]
    export_target = load_target(t["file"] if t.get("file") and Path(t["file"]).exists() else t["name"])
    task = TASKS.get(spec.task)
    # A task whose artifacts are not one forward pass (a causal LM's KV cache) measures them its own way.
    own_measure = getattr(task, "measure_artifact", None)
    if own_measure and target is not None and target != export_target.name:
        raise EdgecompError(f"`edgecomp bench --target {target}` re-measures fixed-shape artifacts; this "
                            f"{spec.task} export is measured for its own target {export_target.name!r}",
                            "run `edgecomp bench OUT` without --target, or export for that target")
    log(f"load: {spec.name} (the uncompressed PyTorch reference)")
    loaded = load_model(spec)
    texts = read_texts(texts_file) if texts_file else default_texts()
    limits = [r["max_length"] for r in manifest["artifacts"] if isinstance(r.get("max_length"), int)]
    ref = None if own_measure else ReferenceSet(loaded, task, texts, max_length=min([VERIFY_MAX_LENGTH, *limits]))
    for rec, path in zip(manifest["artifacts"], paths):
        if rec.get("role") == "early-exit-stage":  # takes hidden states, not text: measured by the exit runtime
            continue
        if rec.get("input") == "text":  # a string-input twin: fidelity, token ids and parity with its twin
            from .pipeline import measure_text_artifact

            rec["metrics"] = measure_text_artifact(path, rec, ref, export_dir / rec["token_input_twin"], log)
        elif own_measure:
            # no --texts: the task's own default verification set (the one its export used)
            rec["metrics"] = own_measure(path, rec, loaded, texts if texts_file else None, export_target, True, log)
        else:
            rec["metrics"] = measure_artifact(path, rec, ref, loaded, export_target, True, log)
    if target is not None and target != export_target.name:
        # e.g. `--target arm64` on a cpu-x86 export: measure these artifacts the way that target would
        extra = wanted
        from .bench.checks import run_checks
        from .bench.latency import benchmark_feeds

        checks = [c for c in extra.checks if c not in export_target.checks]  # the export's own ran above
        for rec, path in zip(manifest["artifacts"], paths):
            if not checks or rec.get("role") == "early-exit-stage" or rec.get("input") == "text":
                continue
            feeds = benchmark_feeds(loaded.tokenizer, texts, 1, min(extra.bench.seq_len, rec.get("max_length") or extra.bench.seq_len),
                                    rec["inputs"])
            run_checks(checks, path, rec, feeds, extra.emulated_cpu or "cortex-a76", log,
                       reference=lambda: task.torch_forward(loaded.model, feeds))
    write_json_atomic(export_dir / MANIFEST, manifest)
    from .report import write_report

    write_report(manifest, export_dir)
    return manifest
