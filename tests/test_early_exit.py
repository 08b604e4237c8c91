"""Early exits on a tiny random BERT classifier: stage graphs vs PyTorch, the exit rule at τ = 1 and τ = 0,
batching, and refusal of missing or foreign stage files. Seconds each; the real model is in the benchmark."""

from __future__ import annotations

import random
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecomp.errors import EdgecompError
from edgecomp.models import LoadedModel, ModelSpec
from edgecomp.targets import load_target

WORDS = ("the film movie plot actor story scene music script director cast ending pace tone it was is "
         "really very quite rather somewhat a an and but with of to in on this that").split()
GOOD, BAD = ("good great lovely superb fine".split(), "bad awful dull poor weak".split())
TARGET = """
name = "tiny-test"
opset = 17
[tolerance]
cos_mean = 0.99
cos_min = 0.95
[[artifacts]]
name = "model-fp32"
format = "onnx"
precision = "fp32"
[[artifacts]]
name = "model"
format = "onnx"
precision = "int8"
quantization = "dynamic-per-channel"
primary = true
"""


def _sentence(rng: random.Random) -> tuple[str, int]:
    label = rng.randrange(2)
    words = [rng.choice(WORDS) for _ in range(rng.randrange(9, 18))]
    words.insert(rng.randrange(len(words)), rng.choice(GOOD if label else BAD))
    return " ".join(words), label


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    root = tmp_path_factory.mktemp("tiny-ee")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *GOOD, *BAD]) + "\n")
    tok = BertTokenizerFast(vocab_file=str(vocab))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                     intermediate_size=128, num_labels=2, id2label={0: "negative", 1: "positive"},
                     label2id={"negative": 0, "positive": 1})
    model = BertForSequenceClassification(cfg).eval()
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    rng = random.Random(0)
    rows = [_sentence(rng) for _ in range(2400)]
    data = root / "train.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    target_path = root / "tiny-test.toml"
    target_path.write_text(TARGET)
    spec = ModelSpec(name="tiny", task="text-classification", source={"kind": "local", "path": str(model_dir)})
    return {"root": root, "loaded": LoadedModel(spec, model_dir, model, tok), "data": data,
            "target": load_target(str(target_path)), "texts": [t for t, _ in rows[:40]],
            "model_dir": model_dir, "target_path": target_path}


def _export(tiny, kind: str, name: str, monkeypatch_env=None):
    from edgecomp.early_exit.export import EarlyExitConfig, export_early_exit
    from edgecomp.early_exit.heads import HeadsConfig

    out = tiny["root"] / name
    if (out / "early_exit.json").exists():
        return out, None
    cfg = EarlyExitConfig(max_accuracy_drop=1.0, heads=HeadsConfig(kind=kind, epochs=3, ensemble_epochs=3),
                          data=str(tiny["data"]), head_rows=800, verify_texts=16)
    result = export_early_exit(tiny["loaded"], tiny["target"], out, config=cfg, threads=1, log=lambda m: None)
    tiny["loaded"].tokenizer.save_pretrained(out)  # the pipeline copies the tokenizer into OUT
    return out, result


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGECOMP_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module", params=["plain", "ztw"])
def exported(request, tiny):
    out, result = _export(tiny, request.param, f"export-{request.param}")
    return request.param, out, result


def test_stage_files_match_pytorch_stages(exported):
    kind, out, result = exported
    stages = [a for a in result["artifacts"] if a["role"] == "early-exit-stage"]
    assert {a["stage"] for a in stages} == {0, 1, 2}
    for a in stages:
        f = a["metrics"]["fidelity"]
        if a["precision"] == "fp32":
            assert f["max_abs_diff"] < 1e-4 and f["agree"] == 1.0
            assert f.get("hidden_max_abs_diff", 0.0) < 1e-4
        else:
            assert f["cos_mean"] > 0.99
    # each stage holds only its own layer: the sum of the fp32 stage files is about one full model
    fp32 = [a for a in stages if a["stage_set"] == "model-fp32"]
    sizes = [a["size_bytes"] for a in fp32]
    assert sizes[0] > sizes[1] and abs(sizes[1] - sizes[2]) < 0.3 * sizes[1]
    block = result["early_exit"]
    assert block["heads"]["kind"] == kind
    # τ is a calibrated grid point, and the accuracy budget holds there and at every larger τ
    at_or_above = [r for r in block["tau_grid"] if r["tau"] >= block["tau"] - 1e-5]
    assert at_or_above and abs(at_or_above[0]["tau"] - block["tau"]) < 1e-5
    assert all(r["accuracy_drop_points"] <= block["max_accuracy_drop_points"] + 1e-3 for r in at_or_above)
    assert block["accuracy"]["drop_points"] <= block["max_accuracy_drop_points"] + 1e-3
    assert abs(sum(block["exit_distribution"]) - 1.0) < 1e-3


def test_chained_stages_equal_the_pytorch_model(exported, tiny):
    """Exported fp32 stages chained at τ = 1 give the full PyTorch model's logits and labels."""
    from edgecomp.early_exit.runtime import EarlyExitRunner
    from edgecomp.texts import tokenize

    _, out, _ = exported
    runner = EarlyExitRunner(out, "model-fp32.onnx", tau=1.0, tokenizer=tiny["loaded"].tokenizer)
    texts = tiny["texts"]
    got = runner.classify(texts, batch_size=8)
    feeds = tokenize(tiny["loaded"].tokenizer, texts)
    with torch.inference_mode():
        ref = torch.softmax(tiny["loaded"].model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits, -1).numpy()
    assert [r["exit_layer"] for r in got] == [3] * len(texts)
    assert [r["label"] for r in got] == [["negative", "positive"][i] for i in ref.argmax(-1)]
    assert np.abs(np.array([r["probs"] for r in got]) - ref).max() < 1e-4


def test_tau_one_reproduces_full_model_int8(exported, tiny):
    """τ = 1 never exits early: the int8 stage chain predicts what the int8 full chain predicts, exactly."""
    from edgecomp.early_exit.runtime import EarlyExitRunner

    _, out, _ = exported
    runner = EarlyExitRunner(out, "model.onnx", tau=1.0, tokenizer=tiny["loaded"].tokenizer)
    one = runner.classify(tiny["texts"], batch_size=1)
    batched = runner.classify(tiny["texts"], batch_size=16)
    assert all(r["exit_layer"] == 3 for r in one)
    assert [r["label"] for r in one] == [r["label"] for r in batched]


def test_tau_zero_exits_at_first_head(exported, tiny):
    from edgecomp.early_exit.runtime import EarlyExitRunner

    _, out, _ = exported
    runner = EarlyExitRunner(out, "model-fp32.onnx", tau=0.0, tokenizer=tiny["loaded"].tokenizer)
    recs = runner.classify(tiny["texts"], batch_size=8)
    assert {r["exit_layer"] for r in recs} == {1}
    assert all(set(r) == {"label", "probs", "exit_layer", "latency_ms"} for r in recs)


def test_batch_runs_only_needed_stages_and_matches_batch_one(exported, tiny):
    from edgecomp.early_exit.runtime import EarlyExitRunner

    _, out, _ = exported
    runner = EarlyExitRunner(out, "model-fp32.onnx", tokenizer=tiny["loaded"].tokenizer)
    # a τ between the confidences seen, so some texts leave early and some do not
    conf = [max(r["probs"]) for r in EarlyExitRunner(out, "model-fp32.onnx", tau=0.0,
                                                     tokenizer=tiny["loaded"].tokenizer).classify(tiny["texts"])]
    runner.tau = float(np.median(conf))
    calls = []
    for r in runner.runners:
        orig = r.run
        r.run = (lambda f, _o=orig: (calls.append(len(f["attention_mask"])), _o(f))[1])
    batched = runner.classify(tiny["texts"], batch_size=len(tiny["texts"]))
    assert calls[0] == len(tiny["texts"]) and calls[1] < calls[0]  # exited rows are not run again
    single = runner.classify(tiny["texts"], batch_size=1)
    assert [r["exit_layer"] for r in batched] == [r["exit_layer"] for r in single]
    assert [r["label"] for r in batched] == [r["label"] for r in single]
    assert {r["exit_layer"] for r in batched} >= {1}


def test_missing_stage_is_refused(exported, tmp_path):
    from edgecomp.early_exit.runtime import EarlyExitRunner

    _, out, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "stages" / "model.stage1.onnx").unlink()
    with pytest.raises(EdgecompError, match="stage 1 .* is missing"):
        EarlyExitRunner(copy, "model.onnx")


def test_stage_from_another_export_is_refused(tiny, tmp_path):
    from edgecomp.early_exit.runtime import EarlyExitRunner

    a, _ = _export(tiny, "plain", "export-plain")
    b, _ = _export(tiny, "ztw", "export-ztw")  # same model, another export (its last stage has the same inputs)
    copy = tmp_path / "mixed"
    shutil.copytree(a, copy)
    shutil.copy(b / "stages" / "model.stage2.onnx", copy / "stages" / "model.stage2.onnx")
    with pytest.raises(EdgecompError, match="does not belong to this export|another export"):
        EarlyExitRunner(copy, "model.onnx")


def test_foreign_stage_with_forged_checksum_is_refused_by_export_id(tiny, tmp_path):
    """Even if someone edits early_exit.json's checksums, the export id inside the stage file differs."""
    import json

    from edgecomp.early_exit.runtime import EarlyExitRunner
    from edgecomp.manifest import sha256

    a, _ = _export(tiny, "plain", "export-plain")
    b, _ = _export(tiny, "ztw", "export-ztw")
    copy = tmp_path / "forged"
    shutil.copytree(a, copy)
    shutil.copy(b / "stages" / "model.stage2.onnx", copy / "stages" / "model.stage2.onnx")
    desc = json.loads((copy / "early_exit.json").read_text())
    desc["stage_sets"]["model.onnx"]["stages"][2]["sha256"] = sha256(copy / "stages" / "model.stage2.onnx")
    (copy / "early_exit.json").write_text(json.dumps(desc))
    runner = EarlyExitRunner(copy, "model.onnx", tau=1.0, tokenizer=tiny["loaded"].tokenizer)
    with pytest.raises(EdgecompError, match="another export"):  # when the stage opens: the first text reaching it
        runner.classify(tiny["texts"][:1])
    with pytest.raises(EdgecompError, match="another export"):
        EarlyExitRunner(copy, "model.onnx", lazy=False)


def test_stages_open_when_a_text_first_reaches_them(exported, tiny):
    """A text that exits at stage 1 opens stage 1 only; later stages open when a text gets there, and
    what a text gets does not depend on which stages were open before."""
    from edgecomp.early_exit.runtime import EarlyExitRunner

    _, out, _ = exported
    tok = tiny["loaded"].tokenizer
    runner = EarlyExitRunner(out, "model.onnx", tau=0.0, tokenizer=tok)
    assert runner.opened_stages == []
    first = runner.classify(tiny["texts"], batch_size=1)
    assert {r["exit_layer"] for r in first} == {1} and runner.opened_stages == [0]
    runner.tau = 1.0
    full = runner.classify(tiny["texts"][:3], batch_size=1)
    assert [r["exit_layer"] for r in full] == [3] * 3 and runner.opened_stages == [0, 1, 2]
    eager = EarlyExitRunner(out, "model.onnx", tau=1.0, tokenizer=tok, lazy=False)
    assert eager.opened_stages == [0, 1, 2]
    assert [r["probs"] for r in eager.classify(tiny["texts"][:3], batch_size=1)] == [r["probs"] for r in full]


@pytest.fixture(scope="module")
def cli_export(tiny):
    """`edgecomp export DIR --early-exit` on the tiny classifier, as a user runs it."""
    from typer.testing import CliRunner

    from edgecomp.cli import app

    out = tiny["root"] / "cli-export"
    r = CliRunner().invoke(app, ["export", str(tiny["model_dir"]), "--target", str(tiny["target_path"]), "--early-exit",
                                 "--exit-data", str(tiny["data"]), "--no-bench", "-o", str(out)])
    assert r.exit_code == 0, r.output
    return out


def test_run_gives_what_the_stage_runner_gives(cli_export, tiny, tmp_path):
    """`edgecomp run OUT --batch-size 1` (tokenizers, stages opened as reached) gives, text by text, the
    records of the stage runner on the model's own transformers tokenizer with every stage open."""
    import json

    from typer.testing import CliRunner

    from edgecomp.cli import app
    from edgecomp.early_exit.runtime import EarlyExitRunner

    long_text = " ".join(WORDS * 6)  # > 128 tokens: cut at the export's max_length
    texts = tiny["texts"] + [long_text]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    r = CliRunner().invoke(app, ["run", str(cli_export), "--input", str(tmp_path / "in.txt"), "--output",
                                 str(tmp_path / "out.jsonl"), "--batch-size", "1"])
    assert r.exit_code == 0, r.output
    got = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    ref = EarlyExitRunner(cli_export, tokenizer=tiny["loaded"].tokenizer, lazy=False).classify(texts, batch_size=1)
    assert [g["index"] for g in got] == list(range(len(texts)))
    assert [(g["label"], g["probs"], g["exit_layer"]) for g in got] == [(e["label"], e["probs"], e["exit_layer"]) for e in ref]
    assert [g["truncated"] for g in got] == [False] * len(tiny["texts"]) + [True]
    assert all(1 <= g["exit_layer"] <= 3 for g in got)
    # the manifest lists the stage set run uses (the target's primary, int8) first, so run checks that file
    first = json.loads((cli_export / "manifest.json").read_text())["artifacts"][0]
    assert (first["path"], first["primary"]) == ("stages/model.stage0.onnx", True)


def test_run_imports_neither_transformers_nor_torch(cli_export, tmp_path):
    """The on-device path: loading an early-exit export costs ONNX Runtime and tokenizers, nothing more."""
    import subprocess
    import sys

    (tmp_path / "in.txt").write_text("the film was really good\n")
    code = ("import sys; from edgecomp.infer import run_file; "
            f"run_file({str(cli_export)!r}, {str(tmp_path / 'in.txt')!r}, {str(tmp_path / 'out.jsonl')!r}, batch_size=1); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    assert '"exit_layer"' in (tmp_path / "out.jsonl").read_text()


def test_run_timing_scores_what_run_printed(cli_export, tiny):
    """The through-`run` benchmark (scripts/bench_early_exit.py --through-run): accuracy is the labels
    `edgecomp run` printed against the file's labels; per-sentence time and loading come from T_N and T_1."""
    from edgecomp.early_exit.data import Labelled
    from edgecomp.early_exit.run_timing import measure_through_run
    from edgecomp.early_exit.runtime import EarlyExitRunner

    rng = random.Random(1)
    rows = [_sentence(rng) for _ in range(5)]
    data = Labelled([t for t, _ in rows], [y for _, y in rows])
    res = measure_through_run({"full": cli_export, "early-exit": cli_export}, data, repeats=1)
    recs = EarlyExitRunner(cli_export, tokenizer=tiny["loaded"].tokenizer).classify(data.texts, batch_size=1)
    acc = np.mean([int(np.argmax(r["probs"])) == y for r, y in zip(recs, data.labels)])
    for r in res["rows"].values():
        assert r["accuracy"] == pytest.approx(acc) and len(r["t_all_s"]) == len(r["t_one_s"]) == 1
        assert r["per_sentence_ms"] == pytest.approx(1000 * (r["t_all_s"][0] - r["t_one_s"][0]) / 4)
        assert r["load_s"] == pytest.approx(r["t_one_s"][0] - r["per_sentence_ms"] / 1000)
        assert r["mean_exit_layer"] == pytest.approx(np.mean([x["exit_layer"] for x in recs]))
    assert res["summary"]["drop_points"] == 0.0 and res["summary"]["agreement"] == 1.0
    assert "run OUT --input sentences.txt --output out.jsonl --batch-size 1 --threads 1" in res["command"]


@pytest.mark.parametrize("path, ok", [("model.onnx", True), ("stages/model.stage0.onnx", True), ("../model.onnx", False),
                                      ("/tmp/model.onnx", False), ("stages/../../x.onnx", False), ("./model.onnx", False),
                                      ("stages\\model.onnx", False), ("C:/model.onnx", False), ("", False)])
def test_manifest_names_files_inside_its_folder_only(path, ok):
    """Early-exit stages live in stages/: a manifest may name them, never a file outside the folder."""
    from edgecomp.manifest import missing_keys

    m = {"edgecomp_version": "x", "model": {"name": "m", "task": "text-classification"}, "target": {"name": "t"},
         "artifacts": [{"path": path, "format": "onnx", "precision": "int8", "sha256": "0", "size_bytes": 1}]}
    assert missing_keys(m) == (None if ok else "artifacts[0].path inside the folder")


def test_not_an_early_exit_export(tmp_path):
    from edgecomp.early_exit.runtime import EarlyExitRunner

    with pytest.raises(EdgecompError, match="not an early-exit export"):
        EarlyExitRunner(tmp_path)


def test_tau_choice_keeps_the_whole_tail_within_budget():
    from edgecomp.early_exit.calibrate import choose_depth, choose_tau, depth_table, evaluate_tau, exit_index

    rng = np.random.default_rng(0)
    N, L = 400, 4
    labels = rng.integers(0, 2, N)
    conf = rng.uniform(0.5, 1.0, (N, L))
    correct = rng.uniform(size=(N, L)) < np.linspace(0.7, 0.95, L)
    top = np.where(correct, labels[:, None], 1 - labels[:, None])
    probs = np.zeros((N, L, 2))
    probs[np.arange(N)[:, None], np.arange(L)[None], top] = conf
    probs[np.arange(N)[:, None], np.arange(L)[None], 1 - top] = 1 - conf
    tau, rows = choose_tau(probs, labels, 1.0)
    full = evaluate_tau(probs, labels, 1.0)["accuracy"]
    assert all(100 * (full - r["accuracy"]) <= 1.0 + 1e-9 for r in rows if r["tau"] >= tau)
    assert (exit_index(probs, 0.0) == 0).all() and (exit_index(probs, 1.0) == L - 1).all()
    assert [r["depth"] for r in depth_table(probs, labels)] == list(range(1, L + 1))


def test_static_depth_is_the_shallowest_within_budget():
    from edgecomp.early_exit.calibrate import choose_depth

    table = [{"depth": 1, "accuracy": 0.80}, {"depth": 2, "accuracy": 0.905}, {"depth": 3, "accuracy": 0.91},
             {"depth": 4, "accuracy": 0.91}]
    assert choose_depth(table, 100.0) == 1
    assert choose_depth(table, 0.6) == 2  # 0.5 points below the full model
    assert choose_depth(table, 0.4) == 3  # depth 3 equals the full model: no need for all 4 layers
    rising = [{"depth": k + 1, "accuracy": 0.7 + 0.05 * k} for k in range(4)]
    assert choose_depth(rising, 1.0) == 4  # every shallower depth is 5+ points below: keep them all


def test_missing_training_text_is_a_clear_error(tmp_path, monkeypatch):
    from edgecomp.early_exit.data import resolve_data_path

    monkeypatch.delenv("EDGECOMP_CLASSIFIER_DATA", raising=False)
    monkeypatch.setenv("EDGECOMP_SHARED_DATA", str(tmp_path))
    with pytest.raises(EdgecompError, match="does not exist.*Fix: pass"):
        resolve_data_path(None)


def test_text_classification_task_records_and_fidelity():
    from edgecomp.tasks import TASKS

    if "text-classification" not in TASKS:
        import edgecomp.tasks.text_classification  # noqa: F401  (until tasks/__init__ imports it)
    task = TASKS.get("text-classification")
    spec = replace(ModelSpec("m", "text-classification", {"kind": "local", "label_names": ["neg", "pos"]}))
    logits = np.array([[2.0, -1.0], [0.1, 0.3]], np.float32)
    recs = task.records({"logits": logits}, {}, spec)
    assert [r["label"] for r in recs] == ["neg", "pos"] and abs(sum(recs[0]["probs"]) - 1) < 1e-5
    fid = task.fidelity({"logits": logits}, {"logits": logits + np.array([[0, 0], [0.3, 0]], np.float32)}, {}, spec)
    assert fid["agree"] == [1.0, 0.0] and fid["cos"][0] == pytest.approx(1.0)


def test_finetune_source_needs_its_training_text(tmp_path, monkeypatch):
    from edgecomp.models import SOURCES

    import edgecomp.early_exit  # noqa: F401  (registers the source)

    monkeypatch.setenv("EDGECOMP_CACHE", str(tmp_path / "cache"))
    src = {"kind": "sst2-finetune", "cache_name": "nothing-cached", "data": str(tmp_path / "missing.tsv"),
           "base": {"kind": "local", "path": str(tmp_path)}}
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(EdgecompError, match="missing.tsv does not exist"):
        SOURCES.get("sst2-finetune")(src)


def test_finetune_writes_a_loadable_classifier(tiny, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from edgecomp.early_exit.finetune import FinetuneConfig, finetune_classifier

    cfg = FinetuneConfig(rows=64, batch_size=16, exit_loss_weight=1.0)
    out = finetune_classifier(tiny["loaded"].directory, tiny["data"], cfg, tmp_path / "ft")
    m = AutoModelForSequenceClassification.from_pretrained(out, local_files_only=True)
    assert m.config.id2label == {0: "negative", 1: "positive"} and (out / "finetune.json").exists()
    assert (out / "tokenizer_config.json").exists()


def test_report_draws_the_exit_curve(cli_export):
    """The export's report shows the real early-exit block: the τ table (one row per τ tried) and the
    accuracy–compute curve, which the manifest lists as the export's own file."""
    import json

    m = json.loads((cli_export / "manifest.json").read_text())
    text = (cli_export / "report.md").read_text()
    assert "## Early exit" in text and "![early-exit](charts/early-exit.png)" in text
    rows = [ln for ln in text.split("## Early exit", 1)[1].split("##", 1)[0].splitlines() if ln.startswith("| ")]
    assert len(rows) == 1 + len(m["early_exit"]["tau_grid"])  # header + one per τ
    assert "charts/early-exit.png" in m["files"] and (cli_export / "charts" / "early-exit.png").stat().st_size > 5000
