"""A tiny BERT carrying every compression method converts with the pipeline's LiteRT converter
(edgecomp.lower.tflite, as the android target's .tflite is built) and the .tflite, run by the runner
`edgecomp run` uses, equals the compressed PyTorch model (tolerance 1e-4; observed ~1e-6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgecomp.compress import compress_model
from edgecomp.lower.tflite import export_tflite

from shipped import hidden_states
from test_compress_methods import tiny_bert
from tiny import IO_NAMES, encoder_module

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = [{"method": "ae-embedding", "latent_dim": 16, "steps": 5},
         {"method": "lowrank", "modules": "*attention.self*", "rank": 8},
         {"method": "kronecker", "modules": "*intermediate*", "a_shape": [4, 8], "terms": 2},
         {"method": "ae-weights", "modules": "*output.dense", "latent_dim": 8, "steps": 5}]


def test_compressed_bert_converts_to_tflite(tmp_path):
    model = tiny_bert()
    compress_model(model, STEPS, None)
    info = export_tflite(encoder_module(model), IO_NAMES, ["last_hidden_state"], tmp_path / "m.tflite", [16], None)
    assert info["signatures"] == ["seq16"]
    ids = torch.randint(0, 1000, (2, 13), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, 9:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    got = hidden_states(tmp_path / "m.tflite", feeds)  # padded to the bucket and cropped back by the runner
    with torch.no_grad():
        want = model(**feeds).last_hidden_state.numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4
