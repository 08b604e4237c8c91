"""Recipes as data: named compression settings that apply to any model whose task they name.

A recipe is a TOML table (a file in edgecomp/data/recipes/, a user's file, or ``[recipes.NAME]`` in a
model file, which takes precedence over the package's recipe of that name)::

    description = "int4 weights with int4-aware layer-wise distillation"
    tasks = ["feature-extraction", "text-classification"]   # default: every task
    steps = [{method = "distill", quant_aware = true}]
    [quantization]                                           # edgecomp.quant: the one scheme
    weights = {bits = 4, block = 32}

Recipes are strict: a key nothing reads (at the top level, in [quantization], or in a step against its
method's config dataclass in edgecomp.compress.METHODS) is refused with one line naming the key and the
file, and so is a key of earlier recipes (with the key that states the fact now); nothing is dropped
silently. Quantization is stated once, in [quantization] (edgecomp.quant), and read by every format and by
a distill step with ``quant_aware = true``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import EdgecompError
from .paths import recipes_dir
from .quant import parse_stated, stated_to_json

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


# Top-level keys and who reads them; the Recipe fields (name, description, tasks, steps) aside, each lands in
# Recipe.options. A key missing here is refused, so a new option is declared where it is documented.
RECIPE_OPTIONS: dict[str, tuple[type | tuple[type, ...], str]] = {
    # edgecomp.quant: what the target's quantized artifacts store (weights, table, activations; per runtime);
    # the format adapters and a distill step with quant_aware = true read it
    "quantization": (dict, "the quantization scheme of the quantized artifacts (see edgecomp.quant)"),
    # edgecomp.pipeline: which artifacts ship
    "formats": (list, "the only artifact formats this recipe ships (the others are recorded as skipped)"),
    "formats_reason": (str, "why the other formats are skipped (recorded in the manifest)"),
    "keep_factorized": (bool, "keep factorized layers factorized in the ONNX graph"),
    # edgecomp.pipeline.require_tolerance: a recipe whose quality floor is a task metric (measured by edgecomp fit
    # or a study) states the fidelity its artifacts must still reach, over the target's [tolerance], and why
    "tolerance": (dict, "the fidelity floor of this recipe's artifacts, over the target's [tolerance] (cos_mean, cos_min, nll_ratio_max)"),
    "tolerance_reason": (str, "why the recipe's floor differs from the target's (recorded in the manifest)"),
    # edgecomp.pipeline: torch's thread count changes the float sums of calibration and refits, hence the bytes;
    # a recipe that must reproduce a measured export byte for byte (edgecomp fit writes it) states the count
    "compress_threads": (int, "torch threads while the steps run (the compressed weights depend on it)"),
    # edgecomp.llm.export
    "prefill_buckets": (list, "causal LMs: prefill lengths of the .tflite signatures"),
}
RECIPE_FIELDS = ("name", "description", "tasks", "steps")
TOLERANCE_KEYS = ("cos_mean", "cos_min", "nll_ratio_max")  # edgecomp.targets.Tolerance

# Keys of earlier recipes, refused with the key that states the fact now (a user's old recipe gets a fix).
RENAMED = {
    "precision": "[quantization] weights = {bits = 4, block = 32}",
    "table_precision": "[quantization] table = {bits = 4, block = 32}",
    "block_size": "[quantization] weights = {bits = 4, block = N}",
    "int4_grid": '[quantization] weights = {bits = 4, block = 32, grid = "litert"}',
    "llm_layers": '[quantization] weights = {bits = 4, block = 32, grid = "q4_1"}',
    "llm_ffn_layers": "[quantization] ffn = {bits = 2, block = 32, symmetric = false}",
    "llm_table": "[quantization] table = {bits = 4, block = 32}",
    "llm_block_size": "[quantization] weights = {..., block = N}",
    "llm_table_block_size": "[quantization] table = {..., block = N}",
    "llm_accuracy_level": '[quantization] activations = "dynamic-per-row" (accuracy level 4) or "none"',
    "llm_head_accuracy_level": '[quantization] head_activations = "dynamic-per-row" or "none"',
    "llm_tflite_quantization": "[quantization.litert] weights = {bits = 4, block = 32}",
    "llm_prefill_buckets": "prefill_buckets",
}
# ... and in steps (the distill step reads the recipe's scheme)
RENAMED_STEP_KEYS = {"fake_quant": "quant_aware = true (the step trains for the recipe's [quantization])",
                     "int4_tables": "quant_aware = true with [quantization] table = {bits = 4, block = 32}",
                     "block_size": "quant_aware = true with the block in [quantization] weights"}


@dataclass(frozen=True)
class Recipe:
    """Named compression settings: an ordered list of method steps (see edgecomp.compress) + export options."""

    name: str
    description: str = ""
    steps: tuple[dict, ...] = ()
    options: dict = field(default_factory=dict)
    tasks: tuple[str, ...] = ()  # empty: every task
    path: Path | None = None  # the file it was read from (a recipe file or a model file)

    def applies_to(self, task: str) -> bool:
        return not self.tasks or task in self.tasks

    @property
    def formats(self) -> list[str] | None:
        return self.options.get("formats")

    @property
    def quantization(self) -> dict:
        """The scheme facts the recipe states (edgecomp.quant.parse_stated); empty: the target's schemes."""
        return self.options.get("quantization", {})

    def to_json(self) -> dict:
        options = {**self.options, **({"quantization": stated_to_json(self.quantization)} if self.quantization else {})}
        return {"name": self.name, "description": self.description, "steps": list(self.steps), **options,
                **({"file": str(self.path)} if self.path else {})}


NO_RECIPE = Recipe("none", "no compression")


def _refuse(where: str, problem: str, fix: str) -> EdgecompError:
    return EdgecompError(f"{where}: {problem}", fix)


def _type_name(t) -> str:
    return " or ".join(x.__name__ for x in (t if isinstance(t, tuple) else (t,)))


def parse_recipe(raw: dict, name: str, path: Path | None, where: str | None = None) -> Recipe:
    """A recipe table -> Recipe; unknown or mistyped top-level keys and contradictory facts are refused.

    ``where`` names the place in error messages (default: the file)."""
    where = where or f"recipe file {path}"
    if not isinstance(raw, dict):
        raise _refuse(where, f"recipe {name!r} is not a table", f"write it as [recipes.{name}] with keys")
    old = next((k for k in raw if k in RENAMED), None)
    if old:
        raise _refuse(where, f"recipe key {old!r} is gone", f"state it as {RENAMED[old]}")
    unknown = sorted(set(raw) - set(RECIPE_FIELDS) - set(RECIPE_OPTIONS))
    if unknown:
        raise _refuse(where, f"unknown recipe key {unknown[0]!r}",
                      f"use only: {', '.join((*RECIPE_FIELDS, *RECIPE_OPTIONS))} (see `edgecomp recipes`)")
    for k, (t, _) in RECIPE_OPTIONS.items():
        if k in raw and (not isinstance(raw[k], t) or (t is int and isinstance(raw[k], bool))):
            raise _refuse(where, f"{k} = {raw[k]!r} has the wrong type", f"give {k} as {_type_name(t)}")
    if raw.get("compress_threads", 1) < 1:
        raise _refuse(where, f"compress_threads = {raw['compress_threads']} is not a thread count", "give a count >= 1")
    steps = raw.get("steps", [])
    tasks = raw.get("tasks", [])
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise _refuse(where, "steps is not a list of tables", 'write steps = [{method = "distill", ...}]')
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise _refuse(where, "tasks is not a list of task names", 'write e.g. tasks = ["feature-extraction"]')
    for i, s in enumerate(steps):
        old = next((k for k in s if k in RENAMED_STEP_KEYS), None)
        if old:
            raise _refuse(where, f"step {i + 1} ({s.get('method')}) key {old!r} is gone", f"state {RENAMED_STEP_KEYS[old]}")
    if path is not None:
        steps = [_anchored_step(s, path.parent) for s in steps]
    options = {k: v for k, v in raw.items() if k in RECIPE_OPTIONS}
    if "tolerance" in options:
        tol = options["tolerance"]
        bad = sorted(set(tol) - set(TOLERANCE_KEYS))
        if bad:
            raise _refuse(where, f"unknown tolerance key {bad[0]!r}", f"use only: {', '.join(TOLERANCE_KEYS)}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in tol.values()) or not all(
                -1 <= v <= 1 for k, v in tol.items() if k != "nll_ratio_max") or tol.get("nll_ratio_max", 1) < 1:
            raise _refuse(where, f"tolerance = {tol!r} holds a value that is not a cosine in [-1, 1] (or an nll_ratio_max below 1)",
                          "write e.g. {cos_mean = 0.97}")
        if "tolerance_reason" not in options:
            raise _refuse(where, "tolerance is stated without tolerance_reason", "say why the floor differs (it is recorded)")
    if "quantization" in options:
        options["quantization"] = parse_stated(options["quantization"], where, runtimes=True)
    return Recipe(name=str(raw.get("name", name)), description=str(raw.get("description", "")),
                  steps=tuple(steps), options=options, tasks=tuple(tasks), path=path)


def _anchored_step(step: dict, folder: Path) -> dict:
    """A step's relative ``corpus`` file is read from the recipe file's folder, so a recipe and its domain
    text travel together (``wordfreq:LANG`` and absolute paths stay as written)."""
    corpus = step.get("corpus")
    if not isinstance(corpus, str) or corpus.startswith("wordfreq:") or Path(corpus).expanduser().is_absolute():
        return step
    return {**step, "corpus": str(folder / corpus)}


def check_steps(recipe: Recipe) -> None:
    """Validate the steps against the methods' config dataclasses (unknown keys, types, values) up front."""
    from .compress import parse_steps

    try:
        parse_steps(recipe.steps)
    except EdgecompError as e:
        where = f"recipe {recipe.name!r}" + (f" in {recipe.path}" if recipe.path else "")
        raise EdgecompError(f"{where}: {e.problem}", e.fix) from None


def read_recipe_file(path: Path) -> Recipe:
    path = Path(path).expanduser().resolve()
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise EdgecompError(f"recipe file {path} cannot be read ({e})", "fix the path or the TOML syntax") from None
    return parse_recipe(raw, path.stem, path)


def list_recipes() -> list[Recipe]:
    """The package's generic recipes (or $EDGECOMP_RECIPES), by name."""
    return sorted((read_recipe_file(p) for p in recipes_dir().glob("*.toml")), key=lambda r: r.name)


def is_recipe_path(name: str) -> bool:
    return name.endswith(".toml") or "/" in name or name.startswith(".")


def find_recipe(name: str, own: dict[str, Recipe], model: str, task: str) -> Recipe:
    """``--recipe NAME``: the model file's recipe, else the package's; ``--recipe path/to/r.toml``: that file.
    The recipe's steps are validated here, before any model is loaded."""
    if is_recipe_path(name):
        if not Path(name).expanduser().is_file():
            raise EdgecompError(f"recipe file {name!r} does not exist", "check the path, or use a name from `edgecomp recipes`")
        recipe = read_recipe_file(Path(name))
    elif name in own:
        recipe = own[name]
    elif (recipes_dir() / f"{name}.toml").is_file():
        recipe = read_recipe_file(recipes_dir() / f"{name}.toml")
    elif name == "none":
        recipe = NO_RECIPE
    else:
        known = sorted({*own, *(r.name for r in list_recipes() if r.applies_to(task))})
        raise EdgecompError(f"model {model!r} has no recipe {name!r}",
                            f"use one of: {', '.join(known) or 'none'} (see `edgecomp recipes`), or a path to a recipe .toml")
    if not recipe.applies_to(task):
        raise EdgecompError(f"recipe {recipe.name!r} applies to {', '.join(recipe.tasks)} models, and {model!r} is {task}",
                            f"use a recipe listed for {task} in `edgecomp recipes`, or `--recipe none`")
    check_steps(recipe)
    return recipe
