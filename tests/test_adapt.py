"""Task adapters (edgecomp/adapt) on a tiny random BERT: training, the ONNX base + .onnx_adapter files against
the adapted PyTorch model, one session serving two tasks, adapter bytes, run --adapter, one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgecomp.cli import app

runner = CliRunner()
RANK = 4


@pytest.fixture(scope="module")
def bert_dir(tiny_bert_dir, tmp_path_factory) -> Path:
    """The tiny BERT with non-zero Linear biases (BERT's init zeroes them, and the exported graph then has no bias
    Add for the adapter slots to go behind)."""
    import shutil

    import torch
    from transformers import BertModel

    d = tmp_path_factory.mktemp("biased-bert")
    for f in tiny_bert_dir.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy(f, d / f.name)
    model = BertModel.from_pretrained(tiny_bert_dir).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear) and m.bias is not None:
                m.bias.copy_(0.05 * torch.randn(m.bias.shape, generator=g))
    model.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def data(tmp_path_factory, unseen_texts) -> dict[str, Path]:
    """A labelled TSV (label: whether the text is longer than the median) and an STS pairs TSV."""
    d = tmp_path_factory.mktemp("adapt-data")
    texts = unseen_texts[:64]
    median = sorted(len(t) for t in texts)[len(texts) // 2]
    (d / "cls.tsv").write_text("".join(f"{t}\t{'long' if len(t) > median else 'short'}\n" for t in texts))
    (d / "sts.tsv").write_text("".join(f"{a}\t{b}\t{(i % 6):.1f}\n" for i, (a, b) in enumerate(zip(texts, texts[1:] + texts[:1]))))
    (d / "few.txt").write_text("\n".join(texts[:12]) + "\n")
    return {"cls": d / "cls.tsv", "sts": d / "sts.tsv", "texts": d / "few.txt", "dir": d}


def _ok(args) -> str:
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module")
def adapters(bert_dir, data, one_torch_thread) -> dict[str, Path]:
    out = {}
    for name, task, f in (("sentiment", "classification", data["cls"]), ("similar", "sts", data["sts"])):
        out[name] = data["dir"] / name
        _ok(["adapt", bert_dir, "--data", f, "--task", task, "--rank", RANK, "--steps", 12, "--lr", 0.01,
             "--dev", f, "-o", out[name]])
    return out


@pytest.fixture(scope="module")
def export_dir(bert_dir, fast_target, adapters, data) -> Path:
    out = data["dir"] / "export"
    _ok(["export", bert_dir, "--target", fast_target, "--no-bench", "--texts", data["texts"], "-o", out,
         "--adapter", adapters["sentiment"], "--adapter", adapters["similar"]])
    return out


def test_training_lowers_the_loss(bert_dir, data, one_torch_thread):
    from transformers import AutoModel, AutoTokenizer

    from edgecomp.adapt.config import AdaptConfig
    from edgecomp.adapt.train import read_task_data, train

    model = AutoModel.from_pretrained(bert_dir).eval()
    tok = AutoTokenizer.from_pretrained(bert_dir)
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = AdaptConfig(method="lora-xs", rank=RANK, steps=30, lr=0.01, batch=16)
    _, res = train(model, tok, cfg, read_task_data(data["cls"], "classification"))
    first, last = np.mean(res.losses[:5]), np.mean(res.losses[-5:])
    assert last < first, res.losses
    assert res.trainable_params == len(res.modules) * RANK * RANK + 64 * 2 + 2  # R per module + the head
    # the backbone stayed frozen: every base weight is as it was
    for k, v in model.state_dict().items():
        base_key = k.replace(".base.", ".")
        if base_key in frozen:
            assert np.array_equal(v.numpy(), frozen[base_key].numpy()), k


def _torch_adapted(bert_dir, adapter_dir, texts):
    import torch
    from transformers import AutoModel, AutoTokenizer

    from edgecomp.adapt.config import AdaptConfig
    from edgecomp.adapt.modules import attach, load_module_state
    from edgecomp.adapt.store import read_adapter
    from edgecomp.adapt.train import mean_pool

    s = read_adapter(adapter_dir)
    model = AutoModel.from_pretrained(bert_dir).eval()
    tok = AutoTokenizer.from_pretrained(bert_dir)
    attach(model, AdaptConfig(method="lora-xs", rank=s.rank, roles=s.roles))
    load_module_state(model, s.module_state())
    enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
        head = s.head()
        logits = head(mean_pool(hidden, enc["attention_mask"])).numpy() if head is not None else None
    return {k: v.numpy() for k, v in enc.items()}, hidden.numpy(), logits


def _session(export_dir, name="model-fp32.onnx"):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(export_dir / name), so, providers=["CPUExecutionProvider"])


def _run(sess, feeds, adapter: Path | None = None):
    import onnxruntime as ort

    ro = None
    if adapter is not None:
        a = ort.LoraAdapter()
        a.Load(str(adapter))
        ro = ort.RunOptions()
        ro.add_active_adapter(a)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}}, ro)))


def test_onnx_base_plus_adapter_equals_the_adapted_torch_model(export_dir, bert_dir, adapters, unseen_texts):
    m = json.loads((export_dir / "manifest.json").read_text())
    entries = {a["name"]: a for a in m["adapters"]["adapters"]}
    assert set(entries) == {"sentiment", "similar"}
    texts = unseen_texts[40:48]
    sess = _session(export_dir)
    for name in entries:
        feeds, hidden, logits = _torch_adapted(bert_dir, adapters[name], texts)
        got = _run(sess, feeds, export_dir / entries[name]["path"])
        np.testing.assert_allclose(got["last_hidden_state"], hidden, atol=1e-4)
        if logits is not None:
            np.testing.assert_allclose(got["adapter_logits"], logits, atol=1e-4)
        assert entries[name]["fidelity"]["model-fp32.onnx"]["cos_min"] > 0.9999
        assert entries[name]["fidelity"]["model.onnx"]["cos_mean"] > 0.99  # int8 W, float adapter path
    assert entries["sentiment"]["labels"] == ["long", "short"] and entries["sentiment"]["quality"]["metric"] == "accuracy"


def test_one_session_two_tasks_and_zero_adapter_is_the_base(export_dir, bert_dir, unseen_texts, tmp_path):
    import onnxruntime as ort
    import torch
    from transformers import AutoModel, AutoTokenizer

    from edgecomp.adapt.onnx import write_onnx_adapter

    m = json.loads((export_dir / "manifest.json").read_text())
    files = {a["name"]: export_dir / a["path"] for a in m["adapters"]["adapters"]}
    tok = AutoTokenizer.from_pretrained(bert_dir)
    feeds = {k: v.numpy() for k, v in tok(unseen_texts[:6], padding=True, return_tensors="pt").items()}
    with torch.no_grad():
        base = AutoModel.from_pretrained(bert_dir).eval()(**{k: torch.tensor(v) for k, v in feeds.items()}).last_hidden_state.numpy()
    sess = _session(export_dir)
    plain = _run(sess, feeds)["last_hidden_state"]
    a = _run(sess, feeds, files["sentiment"])["last_hidden_state"]
    b = _run(sess, feeds, files["similar"])["last_hidden_state"]
    np.testing.assert_allclose(plain, base, atol=1e-4)  # no adapter active: the base model
    assert np.abs(a - b).max() > 1e-3 and np.abs(a - plain).max() > 1e-3
    zero = {k: np.zeros(v.numpy().shape, np.float32)
            for k, v in ort.AdapterFormat.read_adapter(str(files["similar"])).get_parameters().items()}
    write_onnx_adapter(tmp_path / "zero.onnx_adapter", zero)
    np.testing.assert_allclose(_run(sess, feeds, tmp_path / "zero.onnx_adapter")["last_hidden_state"], plain, atol=1e-6)
    assert np.array_equal(_run(sess, feeds)["last_hidden_state"], plain)  # the adapter was per run, not sticky


def test_adapter_file_holds_r_and_the_head_only(export_dir):
    m = json.loads((export_dir / "manifest.json").read_text())
    slots = m["adapters"]["slots"]
    modules, hidden = slots["modules"], 64
    assert modules == 2 * 6 and slots["rank"] == RANK
    for a in m["adapters"]["adapters"]:
        raw = 4 * (modules * RANK * RANK + (hidden * 2 + 2 if a["task"] == "classification" else 0))
        n_tensors = modules + (2 if a["task"] == "classification" else 0)
        assert raw <= a["size_bytes"] <= raw + 150 * n_tensors, (a["size_bytes"], raw)  # names + headers only
        assert a["bytes_if_factors_per_adapter"] > 10 * a["size_bytes"]  # A, B shared in the base instead
        assert (export_dir / a["path"]).stat().st_size == a["size_bytes"]
    assert set(m["files"]) >= {a["path"] for a in m["adapters"]["adapters"]}  # --force may replace them


def test_run_with_an_adapter(export_dir, data):
    res = runner.invoke(app, ["run", str(export_dir), "--adapter", "sentiment", "-i", str(data["texts"])])
    assert res.exit_code == 0, res.output
    recs = [json.loads(ln) for ln in res.stdout.splitlines() if ln.startswith("{")]
    assert len(recs) == 12 and all(r["adapter"] == "sentiment" and r["label"] in ("long", "short") for r in recs)
    assert all(abs(sum(r["probabilities"]) - 1) < 1e-4 for r in recs)


def _fails(args, *needles) -> str:
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Fix:" in errors[0] and "Traceback" not in res.output, res.output
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def test_bad_input_is_one_line(bert_dir, data, adapters, export_dir, tmp_path):
    base = ["adapt", bert_dir, "--data", data["cls"], "-o", tmp_path / "new"]
    _fails(["adapt", bert_dir, "--data", tmp_path / "missing.tsv", "-o", tmp_path / "x"], "does not exist")
    _fails([*base, "--rank", 100], "rank 100 exceeds", "64")
    _fails([*base, "--method", "dora"], "unknown adapter method")
    _fails([*base, "--roles", "query,gate"], "unknown Linear role")
    _fails([*base, "--task", "sts"], "columns")  # a labelled file is not STS pairs
    _fails(["adapt", bert_dir, "--data", data["cls"], "-o", adapters["sentiment"]], "already exists")
    _fails(["export", bert_dir, "--adapter", data["dir"], "-o", tmp_path / "e"], "not an adapter folder")
    _fails(["export", bert_dir, "--adapter", adapters["sentiment"], "--adapter-rank", 8, "-o", tmp_path / "e"],
           "rank 4")
    _fails(["run", export_dir, "--adapter", "nope", "-i", data["texts"]], "no adapter 'nope'", "sentiment")
    assert not (tmp_path / "new").exists() and not (tmp_path / "e").exists()


def test_force_replaces_an_adapter_folder(bert_dir, data, tmp_path):
    out = tmp_path / "again"
    for extra in ([], ["--force"]):
        _ok(["adapt", bert_dir, "--data", data["cls"], "--method", "head-only", "--steps", 2, "-o", out, *extra])
    rec = json.loads((out / "adapter.json").read_text())
    assert rec["config"]["method"] == "head-only" and rec["files"] == ["adapter.safetensors"]


def test_slots_sit_behind_the_bias_add(export_dir):
    """The delta joins after each Linear's bias Add, so ORT still fuses the (quantized) MatMul with its bias."""
    import onnx

    for name in ("model-fp32.onnx", "model.onnx"):
        g = onnx.load(str(export_dir / name)).graph
        producer = {o: n for n in g.node for o in n.output}
        joins = [n for n in g.node if n.name.startswith("/adapter/") and n.name.endswith("/Add") and "/head/" not in n.name]
        assert len(joins) == 12
        assert all(producer[n.input[0]].op_type == "Add" for n in joins), name


def test_bench_markdown_summarizes_the_seeds():
    """The adapter bench trains a row once per seed; its table gives each run and the mean / spread per method."""
    from edgecomp.adapt.bench import markdown

    rows = [{"task": "sst2", "method": "lora-xs", "rank": 16, "seed": s, "trainable_params": 9986, "bytes_per_task": 44_000,
             "quality": {"metric": "accuracy", "value": v}, "seconds": 1.0} for s, v in ((0, 85.0), (1, 86.0), (2, 84.0))]
    text = markdown({"model": "m", "steps": 400, "batch": 16, "dev_rows": 2000, "roles": ["query"], "rows": rows,
                     "seeds": [0, 1, 2]})
    assert "| sst2 | lora-xs | 16 | 2 | 9,986 |" in text
    assert "| sst2 | lora-xs | 16 | 85.00 | 84.00 | 86.00 |" in text
