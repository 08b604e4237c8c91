"""Architecture adapters: each family's adapter finds the right modules in a tiny random-init model, the
compression methods reach them through it (or refuse in one line), and `small` / `fast` export and verify
against PyTorch on several families through the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from edgecomp.archs import ADAPTERS, ATTENTION_ROLES, FFN_ROLES, families, layout_of
from edgecomp.bench.size import torch_size_breakdown
from edgecomp.cli import app
from edgecomp.compress import Calibration, compress_model
from edgecomp.compress.distill import fake_quant_int4_litert
from edgecomp.quant import TrainView, WeightQuant
from edgecomp.errors import EdgecompError
from tiny import TINY_ENCODERS, recipe_file, save_tiny_encoder, tiny_encoder, write_tiny_tokenizer

runner = CliRunner()
HIDDEN, FFN, LAYERS, VOCAB = 64, 128, 2, 1000
# block Linears per family: q, k, v (or one fused qkv), attention output, FFN up (+gate), down
LINEARS_PER_BLOCK = {"modernbert": 4}


def test_every_encoder_family_has_an_adapter_and_a_tiny_model():
    assert set(TINY_ENCODERS) == set(families(decoder=False))


@pytest.mark.parametrize("family", sorted(TINY_ENCODERS))
@pytest.mark.parametrize("classifier", [False, True], ids=["base", "classifier"])
def test_adapter_finds_blocks_linears_ffn_and_table(family, classifier):
    model = tiny_encoder(family, classifier)
    layout = layout_of(model)
    assert layout is not None and layout.family == family
    shared = ADAPTERS.get(family).shared_blocks  # ALBERT: one block applied at every depth
    assert len(layout.blocks) == (1 if shared else LAYERS)
    linears = layout.linears()
    assert all(isinstance(m, nn.Linear) for _, m in linears)
    assert len(linears) == len(layout.blocks) * LINEARS_PER_BLOCK.get(family, 6)
    a = layout.adapter
    for _, up in layout.linears(a.ffn_up_roles):
        assert (up.in_features, up.out_features) == (HIDDEN, a.ffn_halves * FFN)
    for _, down in layout.linears(["ffn-down"]):
        assert (down.in_features, down.out_features) == (FFN, HIDDEN)
    table = model.get_submodule(layout.token_table_path)
    assert isinstance(table, nn.Embedding) and table.num_embeddings == VOCAB
    assert table is model.get_input_embeddings()
    # the size breakdown groups every block Linear under attention / feed-forward, the table under tokens
    sb = torch_size_breakdown(model)
    def nbytes(roles):
        return sum(p.numel() * 4 for _, m in layout.linears(roles) for p in m.parameters())
    assert sb["feed_forward"] == nbytes(FFN_ROLES)
    # + a relative-position bias table outside the blocks (MPNet)
    assert nbytes(ATTENTION_ROLES) <= sb["attention"] <= nbytes(ATTENTION_ROLES) + 1024
    assert sb["token_embeddings"] == table.weight.numel() * 4


def _decoder(family: str, tied: bool):
    import transformers

    base = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
                intermediate_size=FFN, max_position_embeddings=128, tie_word_embeddings=tied)
    if family == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_inner=FFN,
                                      n_positions=128, tie_word_embeddings=tied)
    else:
        name = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "mistral": "MistralConfig", "phi3": "Phi3Config",
                "gemma": "GemmaConfig"}[family]
        special = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)  # inside the tiny vocabulary
        cfg = getattr(transformers, name)(**base, **special, **({"head_dim": 16} if family == "gemma" else {}))
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize("family", sorted(families(decoder=True)))
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_decoder_adapter_finds_blocks_and_head(family, tied):
    model = _decoder(family, tied)
    layout = layout_of(model)
    assert layout is not None and layout.family == family and len(layout.blocks) == LAYERS
    assert layout.tied_head == tied
    a = layout.adapter
    assert len(layout.linears()) == LAYERS * len(a.roles)
    assert all(isinstance(m, a.linear_types) for _, m in layout.linears())
    for _, down in layout.linears(["ffn-down"]):
        # GPT-2's Conv1D stores [in, out]
        assert tuple(down.weight.shape) in ((HIDDEN, FFN), (FFN, HIDDEN))
    sb = torch_size_breakdown(model)
    table = model.get_input_embeddings().weight.numel() * 4
    assert sb["token_embeddings"] == table * (1 if tied else 2)


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    from transformers import AutoTokenizer

    from edgecomp.texts import default_texts

    d = tmp_path_factory.mktemp("tok")
    write_tiny_tokenizer(d)
    return Calibration(AutoTokenizer.from_pretrained(d), default_texts()[:16])


def test_prune_ffn_keeps_both_halves_of_a_fused_up_projection(calibration, one_torch_thread):
    model = tiny_encoder("modernbert")
    ref = model.get_submodule("layers.0.mlp.Wi").weight.detach().clone()
    rep = compress_model(model, [{"method": "prune-ffn", "keep": 0.75, "score": "energy"}], calibration)
    wi, wo = model.get_submodule("layers.0.mlp.Wi"), model.get_submodule("layers.0.mlp.Wo")
    assert (wi.out_features, wo.in_features) == (2 * 96, 96)
    # every kept input row j comes with its gate row FFN + j
    rows = [int((ref[:FFN] == r).all(1).nonzero()) for r in wi.weight[:96]]
    gates = [int((ref[FFN:] == r).all(1).nonzero()) for r in wi.weight[96:]]
    assert rows == gates
    assert rep["steps"][0]["fidelity"]["calibration"]["cos_mean"] > 0.9


@pytest.mark.parametrize("family, steps, supported", [
    ("gpt2", [{"method": "prune-ffn"}], "llama"),  # Conv1D, not nn.Linear
    ("gpt2", [{"method": "smooth"}], "llama"),
    ("gpt2", [{"method": "distill", "steps": 1}], "llama"),
    ("albert", [{"method": "distill", "steps": 1}], "bert"),  # one block at every depth
])
def test_a_method_refuses_a_family_it_does_not_support(family, steps, supported, calibration):
    model = _decoder(family, True) if family == "gpt2" else tiny_encoder(family)
    with pytest.raises(EdgecompError) as e:
        compress_model(model, steps, calibration)
    assert family in e.value.problem and supported in e.value.fix


def test_a_family_without_adapter_refuses_default_modules_but_takes_globs(calibration):
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))

    with pytest.raises(EdgecompError) as e:
        compress_model(Plain(), [{"method": "lowrank", "rank": 2}], None)
    assert "bert" in e.value.fix and "distilbert" in e.value.fix
    rep = compress_model(Plain(), [{"method": "lowrank", "rank": 2, "modules": "body.*"}], None)
    assert rep["steps"][0]["modules"] == ["body.0", "body.1"]


def test_role_names_select_and_exclude_modules(calibration):
    model = tiny_encoder("distilbert")
    rep = compress_model(model, [{"method": "smooth", "exclude": ["attention-output", "ffn-down"]}], calibration)
    mods = rep["steps"][0]["modules"]
    assert len(mods) == LAYERS * 4 and not any(m.endswith(("out_lin", "lin2")) for m in mods)
    # query, key and value share one scale module (one input quantization in ORT)
    blk = model.get_submodule("transformer.layer.0.attention")
    assert blk.q_lin.input_scale is blk.k_lin.input_scale is blk.v_lin.input_scale


def test_litert_int4_grid_stores_an_all_zero_block_exactly():
    # a fresh BERT's padding row is all zeros: its float16 scale underflowed to 0 and 0/0 made the
    # int4-tflite distillation NaN (LiteRT then failed to allocate the converted model's tensors)
    w = torch.zeros(64, 4)
    w[:32, 1] = torch.linspace(-1, 1, 32)
    q = fake_quant_int4_litert(w, 32)
    assert torch.isfinite(q).all() and (q[:, 0] == 0).all() and (q[32:] == 0).all()


def test_int4_tflite_distillation_stays_finite_on_a_fresh_bert(calibration, one_torch_thread):
    model = tiny_encoder("bert")
    assert (model.embeddings.word_embeddings.weight[0] == 0).all()  # padding row
    litert4 = WeightQuant(4, 32, grid="litert", symmetric=True)  # the .tflite's int4, on LayerNorm-folded weights
    compress_model(model, [{"method": "distill", "quant_aware": True, "steps": 2}], calibration,
                   quant=TrainView(litert4, litert4, "dynamic-per-row", fold_layernorm=True))
    assert all(torch.isfinite(p).all() for p in model.parameters())


# --- compression through export: the shipped recipes' steps, few distillation steps -----------------------
QUICK = {
    "small": 'steps = [{method = "distill", quant_aware = true, steps = 5}]\n'
             '[quantization]\nweights = {bits = 4, block = 32}\n',
    "fast": 'steps = [{method = "prune-ffn", keep = 0.9},\n'
            '  {method = "smooth", alpha = 0.85, exclude = ["attention-output"]},\n'
            '  {method = "distill", quant_aware = true, steps = 5}]\n'
            '[quantization]\ntable = {bits = 4, block = 32}\n',
}


@pytest.mark.parametrize("family, classifier, recipe", [
    ("bert", False, "fast"), ("distilbert", False, "small"), ("distilbert", False, "fast"),
    ("modernbert", False, "small"), ("modernbert", False, "fast"), ("roberta", False, "small"),
    ("bert", True, "fast"),
])
def test_recipe_exports_and_verifies(family, classifier, recipe, fast_target, tmp_path, one_torch_thread):
    model_dir = save_tiny_encoder(family, tmp_path / family, classifier)
    rfile = recipe_file(tmp_path / f"quick-{recipe}.toml", QUICK[recipe])
    texts = tmp_path / "texts.txt"
    from edgecomp.texts import default_texts

    texts.write_text("\n".join(default_texts()[:48]) + "\n")
    out = tmp_path / "out"
    res = runner.invoke(app, ["export", str(model_dir), "--target", str(fast_target), "--recipe", str(rfile),
                              "-o", str(out), "--texts", str(texts), "--no-bench"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "manifest.json").read_text())
    steps = {s["method"]: s for s in m["compression"]["steps"]}
    layout = layout_of(tiny_encoder(family, classifier))
    if recipe == "fast":
        ffn = len(layout.adapter.ffn_up_roles) + 1
        assert len(steps["prune-ffn"]["modules"]) == LAYERS * ffn
        assert m["compression"]["params_after"] < m["compression"]["params_before"]
        assert len(steps["smooth"]["modules"]) == LAYERS * (LINEARS_PER_BLOCK.get(family, 6) - 1)
    assert steps["distill"]["modules"][-1] == f"{layout.blocks_path}.{LAYERS - 1}"
    onnx = [a for a in m["artifacts"] if a["format"] == "onnx"]
    assert onnx and all(a["metrics"]["fidelity"] for a in onnx)
    # the export verified every artifact against the uncompressed PyTorch model; the table is grouped
    assert m["size_breakdown"]["pytorch-fp32"]["token_embeddings"] == VOCAB * HIDDEN * 4
