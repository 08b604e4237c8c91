"""What edgecomp refuses, through the command a user runs (``python -m edgecomp`` in a subprocess): the exit
code, the one line it prints, and the file tree before and after.

- ``--force`` replaces only an edgecomp export that holds nothing but its own files; everything else a user
  can point ``-o`` at is refused and left as it was;
- every bad input is one line (problem + fix), exit 2, nothing written;
- ``run`` gives one record per input line (index, blank lines, truncation) and a text's output does not depend
  on the texts batched with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tiny import write_tiny_tokenizer


def edgecomp(*args, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgecomp", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def tree(root: Path) -> dict[str, str]:
    """Every file under root (hidden ones too) with its sha256: what 'nothing changed' compares."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def refused(res: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2 and exactly one line on stderr, naming the problem and the fix."""
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.lstrip()[:1].isdigit()]
    assert len(lines) == 1, res.stderr  # progress lines ("  0.0s load: ...") may precede it
    line = lines[0]
    assert line.startswith("error:") and "Fix:" in line and "Traceback" not in res.stderr, res.stderr
    for n in needles:
        assert n in line, line
    return line


@pytest.fixture(scope="module")
def export_dir(tiny_bert_dir, fast_target, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("safety") / "export"
    res = edgecomp("export", tiny_bert_dir, "--target", fast_target, "-o", out, "--no-bench")
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def copy_export(export_dir: Path, dst: Path) -> Path:
    shutil.copytree(export_dir, dst)
    return dst


# --- --force ------------------------------------------------------------------------------------------
def test_force_refuses_a_folder_that_is_not_an_export(tiny_bert_dir, fast_target, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "thesis.txt").write_text("years of work")
    before = tree(tmp_path)
    refused(edgecomp("export", tiny_bert_dir, "-t", fast_target, "-o", d, "--force"), "not an edgecomp export")
    assert tree(tmp_path) == before


def test_force_refuses_an_export_holding_a_users_file(export_dir, tiny_bert_dir, fast_target, tmp_path):
    d = copy_export(export_dir, tmp_path / "old")
    (d / "notes.txt").write_text("mine")
    before = tree(tmp_path)
    refused(edgecomp("export", tiny_bert_dir, "-t", fast_target, "-o", d, "--force"), "notes.txt", "did not write")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("where", ["model", "cwd", "parent", "home", "file"])
def test_force_refuses_what_is_not_an_output_folder(where, tiny_bert_dir, fast_target, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, model)
    work = tmp_path / "work" / "sub"
    work.mkdir(parents=True)
    (tmp_path / "a-file").write_text("x")
    home = tmp_path / "home"
    home.mkdir()
    out, needle = {"model": (model, "model being read"), "cwd": (".", "current folder"),
                   "parent": ("..", "current folder or one of its parents"), "home": (home, "home"),
                   "file": (tmp_path / "a-file", "is a file")}[where]
    before = tree(tmp_path)
    res = edgecomp("export", model, "-t", fast_target, "-o", out, "--force", cwd=work, env={"HOME": str(home)})
    refused(res, needle)
    assert tree(tmp_path) == before  # no .NAME.old, no staging folder, the model untouched


def test_force_replaces_an_earlier_export_atomically(export_dir, tiny_bert_dir, fast_target, tmp_path):
    d = copy_export(export_dir, tmp_path / "x")
    old_created = json.loads((d / "manifest.json").read_text())["created"]
    time.sleep(1.1)  # `created` has one-second resolution
    res = edgecomp("export", tiny_bert_dir, "-t", fast_target, "-o", d, "--force", "--no-bench")
    assert res.returncode == 0, res.stderr[-2000:]
    m = json.loads((d / "manifest.json").read_text())
    assert m["created"] != old_created
    assert sorted(os.listdir(tmp_path)) == ["x"]  # nothing beside it: no .old, no staging folder
    assert set(m["files"]) | {"manifest.json"} == set(tree(d))
    assert oct(d.stat().st_mode & 0o777) == oct(0o777 & ~_umask())  # readable by sync tools and other users


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_interrupted_export_leaves_the_old_one(export_dir, tiny_bert_dir, fast_target, tmp_path):
    """SIGTERM mid-build (after loading, before the swap): the earlier export stays whole, nothing beside it."""
    d = copy_export(export_dir, tmp_path / "x")
    before = tree(d)
    proc = subprocess.Popen([sys.executable, "-m", "edgecomp", "export", str(tiny_bert_dir), "-t", str(fast_target),
                             "-o", str(d), "--force"], stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # wait until the build is under way
        if "reference:" in line or "lower:" in line:
            break
    proc.send_signal(signal.SIGTERM)
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert tree(d) == before
    assert sorted(os.listdir(tmp_path)) == ["x"]


def test_staging_folder_of_a_killed_run_is_removed_by_the_next(export_dir, tiny_bert_dir, fast_target, tmp_path):
    stale = tmp_path / ".edgecomp-x.999999999.abcd"  # a pid that cannot exist: that run is gone
    stale.mkdir()
    (stale / "model.onnx").write_text("half")
    res = edgecomp("export", tiny_bert_dir, "-t", fast_target, "-o", tmp_path / "x", "--no-bench")
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(os.listdir(tmp_path)) == ["x"]


# --- bad model folders ----------------------------------------------------------------------------------
def test_invalid_config_json(tiny_bert_dir, fast_target, tmp_path):
    model = shutil.copytree(tiny_bert_dir, tmp_path / "m")
    (model / "config.json").write_text('{"model_type": "bert", ')
    before = tree(tmp_path)
    refused(edgecomp("export", model, "-t", fast_target, "-o", tmp_path / "o"), "config.json is not valid JSON")
    assert tree(tmp_path) == before


def test_config_without_weights(tiny_bert_dir, fast_target, tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(tiny_bert_dir / f, model / f)
    before = tree(tmp_path)
    refused(edgecomp("export", model, "-t", fast_target, "-o", tmp_path / "o"), "no weights", "model.safetensors")
    assert tree(tmp_path) == before


def test_tokenizer_inputs_the_model_does_not_take(fast_target, tmp_path):
    """A DistilBERT saved with a BERT tokenizer config emits token_type_ids; the export and `run` drop it."""
    import torch
    from transformers import AutoModel, AutoTokenizer, DistilBertConfig, DistilBertModel

    torch.manual_seed(0)
    model_dir = tmp_path / "distil"
    write_tiny_tokenizer(model_dir)
    DistilBertModel(DistilBertConfig(vocab_size=1000, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                                     max_position_embeddings=128)).eval().save_pretrained(model_dir)
    assert "token_type_ids" in AutoTokenizer.from_pretrained(model_dir)("a b")
    out = tmp_path / "o"
    res = edgecomp("export", model_dir, "-t", fast_target, "-o", out, "--no-bench")
    assert res.returncode == 0, res.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    assert all(a["inputs"] == ["input_ids", "attention_mask"] for a in m["artifacts"])
    texts = ["the cat sat on the mat", "a much longer sentence about the weather and the sea today"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    res = edgecomp("run", out / "model-fp32.onnx", "-i", tmp_path / "in.txt", "-o", tmp_path / "o.jsonl")
    assert res.returncode == 0, res.stderr
    got = np.array([json.loads(ln)["embedding"] for ln in (tmp_path / "o.jsonl").read_text().splitlines()])
    tok, ref_model = AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()
    for i, t in enumerate(texts):
        enc = tok(t, return_tensors="pt", return_token_type_ids=False)
        with torch.no_grad():
            e = ref_model(**enc).last_hidden_state.mean(1)[0]
        assert np.allclose(got[i], torch.nn.functional.normalize(e, dim=-1).numpy(), atol=1e-4)


# --- bad manifests and run options ------------------------------------------------------------------------
@pytest.mark.parametrize("drop,needle", [(("artifacts", 0, "sha256"), "artifacts[0].sha256"),
                                         (("model", "task"), "model.task"), (("artifacts",), "artifacts")])
@pytest.mark.parametrize("command", ["run", "bench", "report"])
def test_manifest_missing_a_key(command, drop, needle, export_dir, tmp_path):
    d = copy_export(export_dir, tmp_path / "x")
    m = json.loads((d / "manifest.json").read_text())
    obj = m
    for k in drop[:-1]:
        obj = obj[k]
    del obj[drop[-1]]
    (d / "manifest.json").write_text(json.dumps(m))
    (tmp_path / "in.txt").write_text("hello\n")
    before = tree(tmp_path)
    args = {"run": ("run", d, "-i", tmp_path / "in.txt"), "bench": ("bench", d), "report": ("report", d)}[command]
    refused(edgecomp(*args), "not a complete edgecomp manifest", needle)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("args,needle", [
    (("--batch-size", "0"), "--batch-size 0"), (("--batch-size", "-3"), "--batch-size -3"),
    (("--threads", "0"), "--threads 0"), (("--generate", "5"), "--generate is for text-generation"),
    (("--perplexity",), "--perplexity is for text-generation"), (("--max-length", "100000"), "more than"),
])
def test_bad_run_options(args, needle, export_dir, tmp_path):
    (tmp_path / "in.txt").write_text("hello\n")
    before = tree(tmp_path)
    refused(edgecomp("run", export_dir, "-i", tmp_path / "in.txt", "-o", tmp_path / "o.jsonl", *args), needle)
    assert tree(tmp_path) == before


def test_generate_count_must_be_positive(export_dir, tmp_path):
    d = copy_export(export_dir, tmp_path / "x")
    m = json.loads((d / "manifest.json").read_text())
    m["model"]["task"] = "text-generation"  # the option check reads the task before any runtime loads
    (d / "manifest.json").write_text(json.dumps(m))
    (tmp_path / "in.txt").write_text("hello\n")
    refused(edgecomp("run", d, "-i", tmp_path / "in.txt", "--generate", "-5"), "--generate -5")
    refused(edgecomp("run", d, "-i", tmp_path / "in.txt"), "needs --generate N or --perplexity")


def test_usage_errors_are_one_line(tmp_path):
    refused(edgecomp("export"), "Missing argument")
    refused(edgecomp("export", "x", "--bogus"), "No such option")


# --- full disk ------------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of a given size (root only: CI and the developers' machines run as root)."""
    mounts = []

    def make(size: str) -> Path:
        d = tmp_path / f"disk-{size}"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip()}): needs root")
        mounts.append(d)
        return d

    yield make
    for d in mounts:
        subprocess.run(["umount", str(d)], check=False)


@pytest.mark.parametrize("size", ["1m", "2300k"])  # refused up front; fails part way through the build
def test_full_disk_says_so(size, small_disk, tiny_bert_dir, fast_target):
    disk = small_disk(size)
    line = refused(edgecomp("export", tiny_bert_dir, "-t", fast_target, "-o", disk / "o", "--no-bench"),
                   "no space left on tmpfs", "need about")
    assert int(line.split("need about ")[1].split()[0]) >= 2
    assert os.listdir(disk) == []


# --- run: records line up with the input; long texts; batches -----------------------------------------------
def test_run_keeps_one_record_per_line(export_dir, tmp_path):
    lines = ["hello world", "", "the cat sat on the mat", "   ", "last line"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    res = edgecomp("run", export_dir, "-i", tmp_path / "in.txt", "-o", tmp_path / "o.jsonl")
    assert res.returncode == 0, res.stderr
    recs = [json.loads(ln) for ln in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["index"] for r in recs] == list(range(len(lines)))
    assert ["error" in r for r in recs] == [not ln.strip() for ln in lines]
    assert all(len(r["embedding"]) == 64 for r in recs if "error" not in r)
    assert "2 blank line(s)" in res.stderr


def test_long_texts_are_cut_and_said_so(tmp_path, fast_target):
    """RoBERTa numbers positions from padding_idx + 1: its limit is the table less that offset (129 of 130),
    recorded per artifact; a 5,000-word line runs, cut there, and says so."""
    import torch
    from transformers import RobertaConfig, RobertaModel

    torch.manual_seed(0)
    model_dir = tmp_path / "roberta"
    write_tiny_tokenizer(model_dir)
    RobertaModel(RobertaConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=128, max_position_embeddings=130, pad_token_id=0)).save_pretrained(model_dir)
    out = tmp_path / "o"
    res = edgecomp("export", model_dir, "-t", fast_target, "-o", out, "--no-bench")
    assert res.returncode == 0, res.stderr[-2000:]
    assert {a["max_length"] for a in json.loads((out / "manifest.json").read_text())["artifacts"]} == {129}
    (tmp_path / "in.txt").write_text("short one\n" + "word " * 5000 + "\n")
    res = edgecomp("run", out, "-i", tmp_path / "in.txt", "-o", tmp_path / "o.jsonl")
    assert res.returncode == 0, res.stderr
    recs = [json.loads(ln) for ln in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["truncated"] for r in recs] == [False, True]
    assert "1 of 2 texts were longer than 129 tokens" in res.stderr
    res = edgecomp("run", out, "-i", tmp_path / "in.txt", "--max-length", "3")
    assert [json.loads(ln)["truncated"] for ln in res.stdout.splitlines()] == [True, True]


def test_export_max_length_sets_every_artifact(tiny_bert_dir, fast_target, tmp_path):
    res = edgecomp("export", tiny_bert_dir, "-t", fast_target, "-o", tmp_path / "o", "--no-bench", "--max-length", "24")
    assert res.returncode == 0, res.stderr[-2000:]
    assert {a["max_length"] for a in json.loads((tmp_path / "o" / "manifest.json").read_text())["artifacts"]} == {24}
    refused(edgecomp("export", tiny_bert_dir, "-t", fast_target, "-o", tmp_path / "p", "--max-length", "4096"),
            "--max-length 4096 is outside")


def test_a_texts_output_does_not_depend_on_its_batch(export_dir, tmp_path):
    """int8 with per-tensor activation ranges: alone, or batched next to a long text, the same embedding."""
    short, long = "the cat sat", " ".join(["a long sentence about the sea and the weather today"] * 8)
    (tmp_path / "alone.txt").write_text(short + "\n")
    (tmp_path / "mixed.txt").write_text(f"{long}\n{short}\n{long}\n")
    outs = []
    for name in ("alone", "mixed"):
        res = edgecomp("run", export_dir / "model.onnx", "-i", tmp_path / f"{name}.txt", "--batch-size", "8")
        assert res.returncode == 0, res.stderr
        recs = [json.loads(ln) for ln in res.stdout.splitlines()]
        outs.append(np.array(next(r["embedding"] for r in recs if r["index"] == (0 if name == "alone" else 1))))
    assert np.allclose(outs[0], outs[1], atol=1e-6)


def test_benchmark_shape_stays_within_the_artifacts_limit(tiny_bert_dir, tmp_path):
    """A TFLite bucket shorter than the target's benchmark length: the benchmark runs at the export's limit."""
    from edgecomp.paths import targets_dir

    src = (targets_dir() / "android.toml").read_text()
    src = (src.replace("seq_buckets = [16, 32, 64, 128]", "seq_buckets = [16]").replace('checks = ["arm64", "ort-mobile", "xnnpack"]', "checks = []")
              .replace("warmup = 5", "warmup = 1").replace("runs = 30", "runs = 3").replace('name = "android"', 'name = "android-short"'))
    target = tmp_path / "android-short.toml"
    target.write_text(src)
    res = edgecomp("export", tiny_bert_dir, "-t", target, "-o", tmp_path / "o")
    assert res.returncode == 0, res.stderr[-2000:]
    arts = json.loads((tmp_path / "o" / "manifest.json").read_text())["artifacts"]
    assert {a["metrics"]["latency_ms"]["seq_len"] for a in arts} == {16} and {a["max_length"] for a in arts} == {16}
