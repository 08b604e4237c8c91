"""Recipes as their own data: generic recipes from the package on any model (a local directory included), a
user's recipe file, strict keys, one value per fact; and manifests that `bench`/`report` read from any folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgecomp.cli import app
from edgecomp.quant import WeightQuant

runner = CliRunner()

GENERIC = ("none", "int8", "int4", "small", "small-tflite", "fast", "tiny")


def _refused(args: list[str], *needles: str) -> str:
    """The command exits 2 with one `error:` line (no traceback) that contains every needle."""
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())  # rich wraps long lines at the terminal width
    assert "Traceback" not in res.output and text.startswith("error:"), res.output
    for n in needles:
        assert n in text, (n, res.output)
    return text


def _int4_block_sizes(path: Path) -> set[int]:
    """The block_size attribute of every 4-bit node in the graph (MatMulNBits, GatherBlockQuantized)."""
    import onnx

    return {a.i for n in onnx.load(str(path)).graph.node if n.op_type in ("MatMulNBits", "GatherBlockQuantized")
            for a in n.attribute if a.name == "block_size"}


@pytest.fixture(scope="module")
def loose_target(fast_target, tmp_path_factory) -> Path:
    """cpu-x86-fast with a tolerance a random-init tiny model holds at int4 (the figures are asserted here)."""
    src = fast_target.read_text().replace("cos_mean = 0.99", "cos_mean = 0.5").replace("cos_min = 0.95", "cos_min = 0.3")
    p = tmp_path_factory.mktemp("loose") / "cpu-x86-loose.toml"
    p.write_text(src.replace('name = "cpu-x86-fast"', 'name = "cpu-x86-loose"'))
    return p


@pytest.fixture
def wide_console(monkeypatch):
    """Tables at 200 columns, so rows are not wrapped across lines."""
    from edgecomp import cli

    monkeypatch.setattr(cli.out, "width", 200)


def test_recipes_command_lists_the_generic_recipes(wide_console):
    res = runner.invoke(app, ["recipes"])
    assert res.exit_code == 0, res.output
    for name in GENERIC:
        assert f"│ {name} " in res.output, name
    fast = next(ln for ln in res.output.splitlines() if ln.startswith("│ fast "))
    assert "prune-ffn → smooth → distill" in fast and "onnx, ort" in fast
    tflite = next(ln for ln in res.output.splitlines() if ln.startswith("│ small-tflite "))
    assert "tflite" in tflite and "distill" in tflite


def test_models_list_generic_recipes_per_task():
    from edgecomp.models import resolve_model

    assert set(GENERIC) <= set(resolve_model("all-minilm-l6-v2").recipe_names())
    llm = resolve_model("smollm2-135m")
    # the encoder distillation does not apply to a decoder; its own `small` (GGUF Q4_1 blocks) overrides
    assert "fast" not in llm.recipe_names() and "small" in llm.recipe_names()
    assert llm.recipe("small").quantization["weights"].grid == "q4_1"


def test_reference_model_file_keeps_its_recipes_identical():
    """MiniLM's recipes now come from the package: same steps and options as the model file held."""
    from edgecomp.models import resolve_model

    spec = resolve_model("all-minilm-l6-v2")
    assert not spec.recipes  # the model file states nothing generic
    small = spec.recipe("small")
    assert small.steps == ({"method": "distill", "quant_aware": True, "steps": 100, "lr": 1e-4},)
    assert small.quantization == {"weights": WeightQuant(4, 32)} and small.options["formats"] == ["onnx", "ort"]
    fast = spec.recipe("fast")
    assert [s["method"] for s in fast.steps] == ["prune-ffn", "smooth", "distill"]
    assert fast.steps[1] == {"method": "smooth", "alpha": 0.85, "exclude": ["attention-output"]}  # a role: any family
    assert fast.quantization == {"table": WeightQuant(4, 32)} and fast.steps[2]["quant_aware"]
    assert spec.recipe("small-tflite").options["formats"] == ["tflite"]
    assert spec.recipe("small").path.parent.name == "recipes"


def test_local_directory_takes_a_generic_recipe(tiny_bert_dir, loose_target, tmp_path, unseen_texts):
    """`--recipe int4` on a `save_pretrained` folder: the int8 artifact becomes block-int4, verified, and
    `edgecomp run` on it matches PyTorch."""
    from test_pipeline import torch_embeddings

    out = tmp_path / "o"
    res = runner.invoke(app, ["export", str(tiny_bert_dir), "--target", str(loose_target), "--recipe", "int4",
                              "-o", str(out), "--no-bench"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["recipe"]["name"] == "int4" and m["recipe"]["file"].endswith("recipes/int4.toml")
    art = {a["path"]: a for a in m["artifacts"]}["model.onnx"]
    assert art["precision"] == "int4" and art["quantization"] == "block-int4"
    assert _int4_block_sizes(out / "model.onnx") == {32}
    (tmp_path / "in.txt").write_text("\n".join(unseen_texts[:16]) + "\n")
    res = runner.invoke(app, ["run", str(out / "model.onnx"), "--input", str(tmp_path / "in.txt"),
                              "--output", str(tmp_path / "emb.jsonl")])
    assert res.exit_code == 0, res.output
    got = np.array([json.loads(ln)["embedding"] for ln in (tmp_path / "emb.jsonl").read_text().splitlines()])
    ref = torch_embeddings(tiny_bert_dir, unseen_texts[:16])
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.mean() > 0.9 and cos.mean() < 0.99999  # 4-bit: close, and not the fp32 graph


def test_user_recipe_file_states_block_size_once(tiny_bert_dir, loose_target, tmp_path):
    """`--recipe path.toml`: the block of [quantization] reaches the distill step AND the int4 export."""
    r = tmp_path / "mine.toml"
    r.write_text('description = "mine"\nsteps = [{method = "distill", quant_aware = true, steps = 2, lr = 1e-4}]\n'
                 '[quantization]\nweights = {bits = 4, block = 16}\n')
    out = tmp_path / "o"
    res = runner.invoke(app, ["export", str(tiny_bert_dir), "--target", str(loose_target), "--recipe", str(r),
                              "-o", str(out), "--no-bench"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["recipe"]["name"] == "mine" and m["recipe"]["file"] == str(r.resolve())
    (step,) = m["compression"]["steps"]
    assert step["method"] == "distill" and step["config"]["quantization"]["weights"]["block"] == 16
    art = {a["path"]: a for a in m["artifacts"]}["model.onnx"]
    assert art["precision"] == "int4" and _int4_block_sizes(out / "model.onnx") == {16}


@pytest.mark.parametrize("body, needles", [
    ('description = "x"\nsteps = []\nprecison = "int4"\n', ["unknown recipe key 'precison'"]),
    ('steps = [{method = "distill", quant_aware = true, stepz = 3}]\n', ["unknown key(s) 'stepz'", "distill"]),
    ('steps = []\nquantization = 4\n', ["quantization = 4 has the wrong type"]),
    ('steps = [{method = "prune-everything"}]\n', ["unknown compression method 'prune-everything'"]),
    ('tasks = ["text-generation"]\nsteps = []\n', ["applies to text-generation", "feature-extraction"]),
    ('steps = [\n', ["cannot be read"]),
])
def test_bad_recipe_file_is_refused_in_one_line(tiny_bert_dir, tmp_path, body, needles):
    r = tmp_path / "bad.toml"
    r.write_text(body)
    out = tmp_path / "o"
    text = _refused(["export", str(tiny_bert_dir), "--recipe", str(r), "-o", str(out)], *needles)
    if "applies to" not in needles[0]:  # a recipe that does not fit the model names the model instead
        assert "bad.toml" in text
    assert not out.exists()


def test_bad_step_key_is_refused_by_compress_too(tiny_bert_dir, tmp_path):
    r = tmp_path / "bad.toml"
    r.write_text('steps = [{method = "prune-ffn", kepp = 0.9}]\n')
    _refused(["compress", str(tiny_bert_dir), "--recipe", str(r), "-o", str(tmp_path / "o")], "'kepp'", str(r))


def test_model_file_recipe_overrides_and_is_strict(tiny_bert_dir, tmp_path, monkeypatch):
    """A model file's [recipes.X] wins over the package's X; a stray key in it names the model file. Its
    relative `path` is relative to the file, so it resolves from any working directory."""
    from edgecomp.models import model_dir, resolve_model

    (tmp_path / "models").mkdir()
    toml = tmp_path / "models" / "tiny.toml"
    rel = os.path.relpath(tiny_bert_dir, toml.parent)
    toml.write_text(f'name = "tiny"\ntask = "feature-extraction"\npooling = "mean"\n[source]\nkind = "local"\n'
                    f'path = "{rel}"\n[recipes.int4]\ndescription = "my int4"\nquantization = {{weights = {{bits = 4, block = 16}}}}\n')
    monkeypatch.chdir(tmp_path)
    spec = resolve_model("models/tiny.toml")
    assert spec.recipe("int4").description == "my int4" and spec.recipe("int4").quantization["weights"].block == 16
    assert spec.recipe("fast").path.parent.name == "recipes"  # the rest from the package
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert model_dir(resolve_model(str(toml))) == tiny_bert_dir.resolve()
    toml.write_text(toml.read_text() + "int4_tables = true\n")
    _refused(["export", str(toml), "--recipe", "int4", "-o", "o"], "unknown recipe key 'int4_tables'",
             str(toml), "[recipes.int4]")


def test_unknown_recipe_name_lists_the_generic_ones(tiny_bert_dir, tmp_path):
    text = _refused(["export", str(tiny_bert_dir), "--recipe", "tiniest", "-o", str(tmp_path / "o")], "no recipe 'tiniest'")
    for name in GENERIC:
        assert name in text
    _refused(["export", str(tiny_bert_dir), "--recipe", "nowhere/r.toml", "-o", str(tmp_path / "o")], "does not exist")


def test_recipes_folder_override(tmp_path, monkeypatch, wide_console):
    (tmp_path / "only.toml").write_text('description = "the only one"\nsteps = [{method = "prune-ffn", keep = 0.5}]\n')
    monkeypatch.setenv("EDGECOMP_RECIPES", str(tmp_path))
    res = runner.invoke(app, ["recipes"])
    assert res.exit_code == 0, res.output
    assert "the only one" in res.output and "│ small " not in res.output
    (tmp_path / "broken.toml").write_text('steps = []\nwhat = 1\n')
    _refused(["recipes"], "unknown recipe key 'what'", "broken.toml")


def test_bench_and_report_from_another_folder(tiny_bert_dir, fast_target, tmp_path, monkeypatch):
    """Export with a relative model path, target path and output from one folder; bench and report from
    another: the manifest holds the model directory and the target file absolute."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "fast.toml").write_text(fast_target.read_text())
    monkeypatch.chdir(a)
    rel_model = os.path.relpath(tiny_bert_dir, a)
    res = runner.invoke(app, ["export", rel_model, "--target", "fast.toml", "-o", "out/x", "--no-bench"])
    assert res.exit_code == 0, res.output
    m = json.loads((a / "out" / "x" / "manifest.json").read_text())
    assert Path(m["model"]["location"]).is_absolute() and Path(m["model"]["location"]) == tiny_bert_dir.resolve()
    assert m["target"]["file"] == str((a / "fast.toml").resolve())
    assert "latency_ms" not in m["artifacts"][0]["metrics"] or not m["artifacts"][0]["metrics"]["latency_ms"]

    monkeypatch.chdir(b)
    res = runner.invoke(app, ["bench", "../a/out/x"])
    assert res.exit_code == 0, res.output
    after = json.loads((a / "out" / "x" / "manifest.json").read_text())
    assert after["artifacts"][0]["metrics"]["latency_ms"]["p50"] > 0  # measured now, from folder b
    assert after["artifacts"][0]["metrics"]["fidelity"]["cos_mean"] == pytest.approx(
        m["artifacts"][0]["metrics"]["fidelity"]["cos_mean"], abs=1e-5)
    (a / "out" / "x" / "report.md").unlink()
    res = runner.invoke(app, ["report", str(a / "out" / "x")])
    assert res.exit_code == 0, res.output
    assert (a / "out" / "x" / "report.md").exists() and "cpu-x86-fast" in res.output


def test_block_of_the_scheme_is_the_export_block_and_a_fixed_block_format_refuses_it(tmp_path):
    """The scheme's block 64 reaches the ONNX artifacts (no longer silently 32), and a format whose converter
    writes only blocks of 32 refuses it before any work."""
    from edgecomp.errors import EdgecompError
    from edgecomp.pipeline import recipe_scheme
    from edgecomp.recipes import find_recipe
    from edgecomp.targets import load_target

    r = tmp_path / "b64.toml"
    r.write_text('steps = [{method = "distill", quant_aware = true}]\n[quantization]\nweights = {bits = 4, block = 64}\n')
    recipe = find_recipe(str(r), {}, "m", "feature-extraction")
    arts = {a.format: a for a in load_target("android").artifacts}
    onnx = recipe_scheme(arts["onnx"], recipe)
    assert onnx.quantization == "block-int4" and onnx.scheme.weights.block == 64 and onnx.scheme.table.block == 64
    with pytest.raises(EdgecompError, match="TFLite artifact cannot store.*int4 blocks of 32"):
        recipe_scheme(arts["tflite"], recipe)


@pytest.mark.parametrize("name", GENERIC)
def test_every_generic_recipe_resolves_for_a_local_directory(tiny_bert_dir, name):
    """Resolution + step validation (against the methods' configs) for each shipped recipe on a plain folder."""
    from edgecomp.compress import parse_steps
    from edgecomp.models import resolve_model

    spec = resolve_model(str(tiny_bert_dir))
    recipe = spec.recipe(name)
    assert recipe.name == name and recipe.path.name == f"{name}.toml"
    assert [m for m, _ in parse_steps(recipe.steps)] == [s["method"] for s in recipe.steps]


def test_compress_threads_must_be_a_count():
    from edgecomp.errors import EdgecompError
    from edgecomp.recipes import parse_recipe

    assert parse_recipe({"name": "r", "compress_threads": 1}, "r", None).options["compress_threads"] == 1
    with pytest.raises(EdgecompError, match="compress_threads = 0"):
        parse_recipe({"name": "r", "compress_threads": 0}, "r", None)
