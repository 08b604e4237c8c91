"""Recipes as data: named compression settings that apply to any model whose task they name.

A recipe is a TOML table (a file in edgecomp/data/recipes/, a user's file, or ``[recipes.NAME]`` in a
model file, which takes precedence over the package's recipe of that name)::

    description = "int4 weights with int4-aware layer-wise distillation"
    tasks = ["feature-extraction", "text-classification"]   # default: every task
    precision = "int4"
    steps = [{method = "distill", fake_quant = "int4", block_size = 32}]

Recipes are strict: a key nothing reads (at the top level, or in a step against its method's config
dataclass in edgecomp.compress.METHODS), or a fact stated twice with different values, is refused with
one line naming the key and the file; nothing is dropped silently.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import EdgecompError
from .paths import recipes_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


# Top-level keys and who reads them; the Recipe fields (name, description, tasks, steps) aside, each lands in
# Recipe.options. A key missing here is refused, so a new option is declared where it is documented.
RECIPE_OPTIONS: dict[str, tuple[type | tuple[type, ...], str]] = {
    # edgecomp.pipeline: which artifacts ship and in which precision
    "precision": (str, "weights precision of the target's quantized artifacts: int8 (the targets' default) or int4"),
    "table_precision": (str, '"int4": only the embedding tables go 4-bit, MatMuls stay as the target says'),
    "block_size": (int, "int4 block along the input axis, for the export and every step that trains for it"),
    "int4_grid": (str, "4-bit values of the ONNX int4 weights: ort (default) or litert"),
    "formats": (list, "the only artifact formats this recipe ships (the others are recorded as skipped)"),
    "formats_reason": (str, "why the other formats are skipped (recorded in the manifest)"),
    "keep_factorized": (bool, "keep factorized layers factorized in the ONNX graph"),
    # edgecomp.llm.export: the causal-LM quantization scheme (see LlmQuantConfig)
    "llm_layers": (str, "decoder layers' weight scheme"),
    "llm_ffn_layers": (str, "feed-forward layers' weight scheme"),
    "llm_table": (str, "token table scheme"),
    "llm_block_size": (int, "decoder layers' block size"),
    "llm_table_block_size": (int, "token table block size"),
    "llm_accuracy_level": (int, "MatMulNBits accuracy_level of the layers"),
    "llm_head_accuracy_level": (int, "MatMulNBits accuracy_level of the LM head"),
    "llm_tflite_quantization": (str, "litert-torch quantization recipe of the .tflite"),
    "llm_prefill_buckets": (list, "prefill lengths of the .tflite signatures"),
}
RECIPE_FIELDS = ("name", "description", "tasks", "steps")

# Facts a recipe may state at its top level that steps also read: stated in one place, they reach the other;
# stated in both with different values, the recipe is refused (e.g. distill at block 64, export at 32).
SHARED_FACTS = ("block_size",)


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

    def to_json(self) -> dict:
        return {"name": self.name, "description": self.description, "steps": list(self.steps), **self.options,
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
    unknown = sorted(set(raw) - set(RECIPE_FIELDS) - set(RECIPE_OPTIONS))
    if unknown:
        raise _refuse(where, f"unknown recipe key {unknown[0]!r}",
                      f"use only: {', '.join((*RECIPE_FIELDS, *RECIPE_OPTIONS))} (see `edgecomp recipes`)")
    for k, (t, _) in RECIPE_OPTIONS.items():
        if k in raw and (not isinstance(raw[k], t) or (t is int and isinstance(raw[k], bool))):
            raise _refuse(where, f"{k} = {raw[k]!r} has the wrong type", f"give {k} as {_type_name(t)}")
    steps = raw.get("steps", [])
    tasks = raw.get("tasks", [])
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise _refuse(where, "steps is not a list of tables", 'write steps = [{method = "distill", ...}]')
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise _refuse(where, "tasks is not a list of task names", 'write e.g. tasks = ["feature-extraction"]')
    options = {k: v for k, v in raw.items() if k in RECIPE_OPTIONS}
    _one_value_per_fact(steps, options, where)
    return Recipe(name=str(raw.get("name", name)), description=str(raw.get("description", "")),
                  steps=tuple(steps), options=options, tasks=tuple(tasks), path=path)


def _one_value_per_fact(steps: list[dict], options: dict, where: str) -> None:
    """Each SHARED_FACTS key once: two different values are refused; a value stated only in a step becomes
    the recipe's (so the export uses what the step trained for)."""
    for fact in SHARED_FACTS:
        stated = [(f"recipe-level {fact}", options[fact])] if fact in options else []
        stated += [(f"step {i + 1} ({s.get('method')}) {fact}", s[fact]) for i, s in enumerate(steps) if fact in s]
        if len({repr(v) for _, v in stated}) > 1:
            raise _refuse(where, f"{fact} is stated twice with different values ("
                          + ", ".join(f"{who} = {v!r}" for who, v in stated) + ")",
                          f"state {fact} once, at the recipe's top level")
        if stated:
            options[fact] = stated[0][1]


def with_shared_facts(recipe: Recipe) -> Recipe:
    """The recipe-level value of each SHARED_FACTS key reaches every step whose method config reads it."""
    from .compress import METHODS  # the method configs say which steps read the fact (imports torch: not at listing)

    steps = []
    for s in recipe.steps:
        cfg = METHODS.get(s["method"])[0] if s.get("method") in METHODS else None
        reads = {f.name for f in dataclasses.fields(cfg)} if cfg else set()
        steps.append({**s, **{k: recipe.options[k] for k in SHARED_FACTS if k in recipe.options and k in reads and k not in s}})
    return dataclasses.replace(recipe, steps=tuple(steps))


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
    recipe = with_shared_facts(recipe)
    check_steps(recipe)
    return recipe
