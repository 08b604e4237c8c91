"""Where the package data lives (edgecomp/data/targets, models, recipes) and where caches go."""

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# Target profiles, reference model files and generic recipes ship inside the package (package data), so a
# non-editable install finds them; each folder can be replaced by an environment variable.
DATA_DIR = PACKAGE_DIR / "data"
# The checkout (scripts/, results/, ../shared): development data only, absent from an installed wheel.
PROJECT_DIR = PACKAGE_DIR.parent


def _data_dir(env: str, name: str) -> Path:
    # resolve(): the folder is recorded in manifests, which must stay valid from any working directory
    return Path(os.environ.get(env) or DATA_DIR / name).expanduser().resolve()


def targets_dir() -> Path:
    return _data_dir("EDGECOMP_TARGETS", "targets")


def models_dir() -> Path:
    return _data_dir("EDGECOMP_MODELS", "models")


def recipes_dir() -> Path:
    return _data_dir("EDGECOMP_RECIPES", "recipes")


def cache_dir() -> Path:
    """Converted models (e.g. SmolLM2 fp32 from GGUF), fine-tuned task models, the aarch64 rootfs."""
    d = Path(os.environ.get("EDGECOMP_CACHE", Path.home() / ".cache" / "edgecomp"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def shared_data_dir() -> Path:
    """The development data sets (WikiText-2, SST-2) beside the checkout; tests and scripts only."""
    return Path(os.environ.get("EDGECOMP_SHARED_DATA", PROJECT_DIR.parent / "shared" / "data"))
