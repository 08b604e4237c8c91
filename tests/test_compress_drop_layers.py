"""drop-layers (depth reduction) on tiny random models, through compress_model and `edgecomp export`.

- the greedy "output" score removes the block whose removal keeps the last hidden state closest to the
  full model (checked against trying every block by hand);
- the config and the stack shrink together, so the lowered graph has fewer blocks and equals PyTorch;
- a decoder's attention modules get consecutive KV-cache indices again (cached decoding = full forward);
- a following distill step maps each kept block onto the teacher's next kept block and gets closer to
  the uncompressed model than dropping alone.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from edgecomp.cli import app
from edgecomp.compress import compress_model
from edgecomp.compress.drop_layers import KEPT_ATTR

from shipped import export_cli, hidden_states, lower_encoder, open_target
from test_compress_distill import _tiny_llama
from test_compress_methods import V, calibration
from tiny import recipe_file, tiny_bert

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _feeds(batch=2, seq=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def _out_cos(ref, model, cal) -> float:
    num, den = 0.0, 0
    with torch.no_grad():
        for b in cal.batches():
            a, c = ref(**b).last_hidden_state, model(**b).last_hidden_state
            m = b["attention_mask"].bool()
            cos = torch.nn.functional.cosine_similarity(a[m], c[m], dim=-1)
            num, den = num + float(cos.sum()), den + int(cos.numel())
    return num / den


def test_output_score_removes_the_cheapest_block_and_the_graph_follows(tmp_path):
    cal = calibration()
    ref = tiny_bert(num_hidden_layers=4)
    by_hand = {}
    for i in range(4):
        trial = tiny_bert(num_hidden_layers=4)
        trial.encoder.layer = torch.nn.ModuleList([b for j, b in enumerate(trial.encoder.layer) if j != i])
        by_hand[i] = _out_cos(ref, trial, cal)
    model = tiny_bert(num_hidden_layers=4)
    step = compress_model(model, [{"method": "drop-layers", "count": 1}], cal)["steps"][0]
    best = max(by_hand, key=by_hand.get)
    assert step["details"]["removed"] == [best] and getattr(model, KEPT_ATTR) == [i for i in range(4) if i != best]
    assert len(model.encoder.layer) == 3 and model.config.num_hidden_layers == 3
    assert step["params_before"] - step["params_after"] == step["params_before"] // 4
    assert abs(_out_cos(ref, model, cal) - by_hand[best]) < 1e-6
    path = lower_encoder(model, tmp_path / "d.onnx")
    feeds = _feeds()
    with torch.no_grad():
        want = model(**feeds).last_hidden_state.numpy()
    assert np.abs(hidden_states(path, feeds) - want).max() < 1e-4
    # three blocks' worth of attention MatMuls (Q, K, V, output per block) remain in the graph
    names = [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "MatMul"]
    assert {n.split("/layer.")[1].split("/")[0] for n in names if "/layer." in n} == {"0", "1", "2"}


def test_influence_score_and_explicit_layers():
    cal = calibration()
    m = tiny_bert(num_hidden_layers=4)
    rep = compress_model(m, [{"method": "drop-layers", "count": 2, "score": "influence"}], cal)["steps"][0]
    scores = rep["details"]["removal_cost"]
    assert len(scores) == 4 and rep["details"]["removed"] == sorted(sorted(range(4), key=lambda i: scores[str(i)])[:2])
    # a second step names blocks in the original numbering
    kept = getattr(m, KEPT_ATTR)
    rep2 = compress_model(m, [{"method": "drop-layers", "layers": [kept[0]]}], cal)["steps"][0]
    assert getattr(m, KEPT_ATTR) == kept[1:] and rep2["details"]["score"] == "given" and len(m.encoder.layer) == 1


def test_refusals_are_one_line():
    from edgecomp.errors import EdgecompError

    cal = calibration()
    for step, words in (({"count": 2}, "leaves none"), ({"layers": [7]}, "not all are blocks"),
                        ({"count": 1, "layers": [0]}, "not both"), ({"score": "best"}, "unknown")):
        with pytest.raises(EdgecompError, match=words):
            compress_model(tiny_bert(), [{"method": "drop-layers", **step}], cal)


def test_decoder_cache_indices_follow_the_shorter_stack():
    cal = calibration()
    model = _tiny_llama()
    model.model.layers.append(type(model.model.layers[0])(model.config, 2))
    model.config.num_hidden_layers = 3
    compress_model(model, [{"method": "drop-layers", "layers": [0]}], cal)
    assert [b.self_attn.layer_idx for b in model.model.layers] == [0, 1]
    ids = torch.randint(5, 1000, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids).logits[:, -1]
        past = model(ids[:, :-1], use_cache=True).past_key_values
        step = model(ids[:, -1:], past_key_values=past, use_cache=True).logits[:, -1]
    assert torch.allclose(full, step, atol=1e-4)


def test_distill_after_drop_recovers_toward_the_teacher():
    cal = calibration()
    ref = tiny_bert(num_hidden_layers=4)
    dropped = tiny_bert(num_hidden_layers=4)
    compress_model(dropped, [{"method": "drop-layers", "layers": [1]}], cal)
    recovered = tiny_bert(num_hidden_layers=4)
    rep = compress_model(recovered, [{"method": "drop-layers", "layers": [1]},
                                     {"method": "distill", "steps": 30, "lr": 1e-3}], cal)
    mse = rep["steps"][1]["fidelity"]["block_mse"]
    assert set(mse) == {"encoder.layer.0", "encoder.layer.1", "encoder.layer.2"}
    assert all(v["after"] < v["before"] for v in mse.values())
    assert _out_cos(ref, recovered, cal) > _out_cos(ref, dropped, cal)


def test_export_with_drop_layers_through_the_cli(tiny_bert_dir, few_texts, tmp_path):
    recipe = recipe_file(tmp_path / "shallow.toml", 'steps = [{method = "drop-layers", count = 1}]\n'
                                                    'tolerance = {cos_mean = 0.0, cos_min = -1.0}\n'
                                                    'tolerance_reason = "a random tiny model with one of two blocks"\n')
    target = open_target(tmp_path / "t.toml", [{"name": "model", "format": "onnx", "precision": "fp32", "primary": True}])
    plain = export_cli(tiny_bert_dir, target, tmp_path / "plain", recipe_file(tmp_path / "p.toml", "steps = []\n"), few_texts)
    m = export_cli(tiny_bert_dir, target, tmp_path / "o", recipe, few_texts)
    (art,) = m["artifacts"]
    (step,) = m["compression"]["steps"]
    assert step["method"] == "drop-layers" and len(step["details"]["kept"]) == 1
    assert art["size_bytes"] < plain["artifacts"][0]["size_bytes"] * 0.85
    # on the same texts, the artifact is as far from the full model as the shortened PyTorch model was
    fid, cal = art["metrics"]["fidelity"], step["fidelity"]["calibration"]
    assert fid["n_texts"] == cal["n_texts"] and abs(fid["cos_mean"] - cal["cos_mean"]) < 1e-4 and fid["cos_mean"] < 0.99995
    out = CliRunner().invoke(app, ["run", str(tmp_path / "o"), "--input", str(few_texts)])
    assert out.exit_code == 0 and len([json.loads(x) for x in out.output.splitlines() if x.startswith("{")]) == 16
