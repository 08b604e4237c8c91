"""The recipe search space as data (edgecomp/data/fit/space.toml): typed axes of choices, each a recipe
fragment; a candidate is one choice per axis, merged into a recipe table that `edgecomp export --recipe`
reads. New schemes or methods are new choices in the data file (or a user's --space file)."""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EdgecompError
from ..paths import DATA_DIR

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_SPACE = DATA_DIR / "fit" / "space.toml"
FRAGMENT_KEYS = ("quantization", "steps", "formats", "formats_reason")


@dataclass(frozen=True)
class Choice:
    label: str
    fragment: dict = field(default_factory=dict)  # quantization / steps / formats (+ formats_reason)
    cost: float = 1.0


@dataclass(frozen=True)
class Axis:
    name: str
    choices: tuple[Choice, ...]


@dataclass(frozen=True)
class Candidate:
    name: str
    choices: dict  # axis name -> Choice label
    recipe: dict  # a recipe table (edgecomp.recipes) without name/description
    cost: float

    def recipe_table(self) -> dict:
        return {"name": self.name, "description": f"chosen by edgecomp fit: {self.name}", **self.recipe}

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.recipe, sort_keys=True).encode()).hexdigest()[:16]


def read_space(path: Path | None = None) -> list[Axis]:
    path = Path(path or DEFAULT_SPACE)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise EdgecompError(f"search space {path} cannot be read ({e})", "fix the path or the TOML syntax") from None
    axes = []
    for i, a in enumerate(raw.get("axes", [])):
        if not isinstance(a, dict) or not isinstance(a.get("name"), str) or not a.get("choices"):
            raise EdgecompError(f"{path}: axis {i + 1} needs a name and choices", 'write [[axes]] name = "..." choices = [...]')
        choices = []
        for c in a["choices"]:
            unknown = sorted(set(c) - {"label", "cost", *FRAGMENT_KEYS})
            if unknown or not isinstance(c.get("label"), str):
                raise EdgecompError(f"{path}: axis {a['name']!r} choice {c!r} has "
                                    + (f"unknown key {unknown[0]!r}" if unknown else "no label"),
                                    f"use label, cost and {', '.join(FRAGMENT_KEYS)}")
            choices.append(Choice(c["label"], {k: c[k] for k in FRAGMENT_KEYS if k in c}, float(c.get("cost", 1.0))))
        axes.append(Axis(a["name"], tuple(choices)))
    if not axes:
        raise EdgecompError(f"search space {path} has no axes", "add [[axes]] tables")
    return axes


def _merge(into: dict, frag: dict) -> None:
    for k, v in frag.items():
        if k == "quantization":
            q = into.setdefault("quantization", {})
            q.update(json.loads(json.dumps(v)))
        elif k == "steps":
            into.setdefault("steps", []).extend(json.loads(json.dumps(v)))
        else:
            into[k] = v


def candidates(axes: list[Axis]) -> list[Candidate]:
    """Every combination of one choice per axis (the first choice of an axis is left out of the name)."""
    out = []
    for combo in itertools.product(*(a.choices for a in axes)):
        recipe: dict = {"steps": []}
        for c in combo:
            _merge(recipe, c.fragment)
        labels = [c.label for c in combo if c.fragment]  # a choice that changes nothing is the default: unnamed
        cost = sum(c.cost for c in combo) - len(combo) + 1
        out.append(Candidate("-".join(labels) or "target-default", {a.name: c.label for a, c in zip(axes, combo)},
                             recipe, cost))
    return out


# --- TOML out: the subset recipes use (strings, numbers, booleans, lists, inline tables) ---------------
def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"no TOML for {type(v).__name__}")


def recipe_toml(table: dict, header: str = "") -> str:
    lines = [f"# {ln}" for ln in header.splitlines()] if header else []
    for k, v in table.items():
        if k != "quantization":
            lines.append(f"{k} = {_value(v)}")
    if table.get("quantization"):
        lines += ["", "[quantization]"] + [f"{k} = {_value(v)}" for k, v in table["quantization"].items()]
    return "\n".join(lines) + "\n"
