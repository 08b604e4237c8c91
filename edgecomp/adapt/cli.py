"""`edgecomp adapt`: every refusal before any work, train with a progress bar, write the adapter folder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from .config import AdaptConfig


def run_adapt(model: str, data: Path, task: str, output: Path, method: str = "lora-xs", rank: int = 8,
              roles: str = "", steps: int = 200, lr: float | None = None, batch: int = 16, seed: int = 0,
              dev: Path | None = None, force: bool = False, log: Callable[[str], None] = print, console=None) -> dict:
    from ..models import load_model, model_dir, resolve_model
    from ..outdir import check_output
    from ..tasks import TASKS
    from .modules import check_rank, fingerprint, module_state
    from .store import HEAD_PREFIX, write_adapter
    from .train import evaluate, label_names, read_task_data, train

    cfg = AdaptConfig(method=method, rank=rank, roles=roles, task=task, steps=steps, lr=lr, batch=batch, seed=seed)
    spec = resolve_model(model)
    if TASKS.get(spec.task).name != "feature-extraction":
        from ..errors import EdgecompError

        raise EdgecompError(f"{spec.name} is a {spec.task} model; adapters train on an encoder's embeddings",
                            "pass the base encoder (a feature-extraction model)")
    train_data = read_task_data(data, task)
    dev_data = read_task_data(dev, task, "--dev") if dev else None
    check_output(output, force, spec.local_paths())
    source = model_dir(spec)
    log(f"load: {spec.name}")
    loaded = load_model(spec)
    check_rank(loaded.model, cfg)  # before training: a rank above a module's width is refused
    base = fingerprint(loaded.model, cfg.roles) if cfg.uses_modules or method == "head-only" else None
    labels = label_names(train_data) if task == "classification" else None
    log(f"train: {method} r={rank} on {len(train_data)} {task} rows, {steps} steps of {batch}")
    t0 = time.time()
    with _bar(console, steps) as tick:
        head, result = train(loaded.model, loaded.tokenizer, cfg, train_data, labels, progress=tick)
    quality = None
    if dev_data is not None:
        log(f"eval: {len(dev_data)} dev rows")
        quality = {**evaluate(loaded.model, loaded.tokenizer, task, dev_data, head, labels), "data": str(dev)}
    tensors = module_state(loaded.model) if cfg.uses_modules else {}
    if method == "full":
        tensors = {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}
    if head is not None:
        tensors[HEAD_PREFIX + "weight"] = head.weight.detach().clone()
        tensors[HEAD_PREFIX + "bias"] = head.bias.detach().clone()
    record = {"name": Path(output).name, "config": cfg.to_json(), "labels": labels, "modules": result.modules,
              "base": {"model": spec.to_json(), "fingerprint": base}, "train": {**result.to_json(), "data": str(data)},
              "quality": quality, "seconds": round(time.time() - t0, 1)}
    write_adapter(output, record, tensors, force=force, protected=(source, *spec.local_paths()))
    return record


class _bar:
    """A rich progress bar on stderr (the step and the running loss); a no-op without a console."""

    def __init__(self, console, total: int):
        self.console, self.total = console, total

    def __enter__(self):
        if self.console is None or self.total == 0:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                                 TimeRemainingColumn(), console=self.console, transient=True)
        self.progress.start()
        self.task = self.progress.add_task("train", total=self.total, loss="—")

        def tick(step: int, total: int, loss: float) -> None:
            self.progress.update(self.task, completed=step, loss=f"{loss:.4f}")

        return tick

    def __exit__(self, *exc):
        if getattr(self, "progress", None) is not None:
            self.progress.stop()
        return False
