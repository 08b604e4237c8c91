"""A tiny BERT carrying every compression method converts with litert-torch and the .tflite (run by
ai-edge-litert) equals the compressed PyTorch model (tolerance 1e-4; observed ~1e-6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgecomp.compress import compress_model
from edgecomp.compress.onnx_check import _HiddenOnly

from test_compress_methods import tiny_bert

STEPS = [{"method": "ae-embedding", "latent_dim": 16, "steps": 5},
         {"method": "lowrank", "modules": "*attention.self*", "rank": 8},
         {"method": "kronecker", "modules": "*intermediate*", "a_shape": [4, 8], "terms": 2},
         {"method": "ae-weights", "modules": "*output.dense", "latent_dim": 8, "steps": 5}]


def test_compressed_bert_converts_to_tflite(tmp_path):
    litert_torch = pytest.importorskip("litert_torch")
    interp = pytest.importorskip("ai_edge_litert.interpreter")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = tiny_bert()
        compress_model(model, STEPS, None)
        ids = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(0))
        mask = torch.ones_like(ids)
        mask[0, 12:] = 0
        feeds = (ids, mask, torch.zeros_like(ids))
        litert_torch.convert(_HiddenOnly(model).eval(), feeds).export(str(tmp_path / "m.tflite"))
        runner = interp.Interpreter(model_path=str(tmp_path / "m.tflite")).get_signature_runner()
        names = sorted(runner.get_input_details())  # args_0, args_1, args_2 in forward order
        got = list(runner(**{k: v.numpy().astype(np.int32) for k, v in zip(names, feeds)}).values())[0]
        with torch.no_grad():
            want = model(input_ids=ids, attention_mask=mask, token_type_ids=feeds[2]).last_hidden_state.numpy()
        assert np.abs(got - want).max() <= 1e-4
    finally:
        torch.set_num_threads(n)
