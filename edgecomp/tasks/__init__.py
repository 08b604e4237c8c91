"""Task handlers: what a model's artifact takes and returns, how its raw outputs become a result per
text, and how an artifact's outputs are compared with PyTorch's. One module per task, registered by
name (the ``task`` of a model file, edgecomp/data/models/*.toml)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..registry import Registry


class Task(Protocol):
    name: str
    optimum_task: str  # the task name optimum's exporter uses
    output_names: list[str]
    plan: str  # the export plan that builds its artifacts (edgecomp.plans)

    def manifest_fields(self, loaded) -> dict:
        """Task-specific fields of the manifest's ``model`` block."""

    def head(self, spec):
        """The post-processing an encoder artifact carries as graph ops after ``output_names``
        (edgecomp.lower.wrap.GraphHead), or None."""

    def auto_class(self): ...

    def torch_forward(self, model, feeds: dict[str, "np.ndarray"]) -> dict[str, np.ndarray]:
        """The PyTorch reference outputs for numpy feeds, keyed like the artifact's outputs."""

    def records(self, outputs: dict[str, np.ndarray], feeds: dict[str, np.ndarray], spec) -> list[dict]:
        """One JSON-able result per text (what `edgecomp run` writes)."""

    def fidelity(self, ref: dict[str, np.ndarray], got: dict[str, np.ndarray], feeds, spec) -> dict:
        """Per-batch comparison; values are lists per text so batches can be concatenated."""


TASKS: Registry[Task] = Registry("task")

def graph_head(task, spec):
    """The task's post-processing head for ``spec`` (None for tasks without one)."""
    head = getattr(task, "head", None)
    return head(spec) if head else None


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def torch_inputs(feeds: dict, names=MODEL_INPUTS) -> dict:
    """The numpy feeds a task's PyTorch model takes, as int64 tensors (other feeds are ignored)."""
    import torch

    return {k: torch.from_numpy(np.asarray(v, dtype=np.int64)) for k, v in feeds.items() if k in names}

from . import feature_extraction, text_classification, text_generation  # noqa: E402,F401
