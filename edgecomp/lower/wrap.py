"""Positional-argument wrapper: converters (torch.onnx, litert-torch) trace ``module(*tensors)``."""

from __future__ import annotations

import torch


class PositionalModel(torch.nn.Module):
    """``forward(*inputs)`` -> one tensor or a tuple, from an HF model's keyword/ModelOutput interface."""

    def __init__(self, model, input_names: list[str], output_names: list[str]):
        super().__init__()
        self.model = model
        self.input_names = list(input_names)
        self.output_names = list(output_names)

    def forward(self, *inputs):
        out = self.model(**dict(zip(self.input_names, inputs)))
        outs = tuple(out[k] for k in self.output_names)
        return outs[0] if len(outs) == 1 else outs
