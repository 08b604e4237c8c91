"""Where the project's data folders live (targets/, models/) and where caches go."""

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# targets/ and models/ sit next to the package in the checkout (`pip install -e .`).
PROJECT_DIR = PACKAGE_DIR.parent


def targets_dir() -> Path:
    return Path(os.environ.get("EDGECOMP_TARGETS", PROJECT_DIR / "targets"))


def models_dir() -> Path:
    return Path(os.environ.get("EDGECOMP_MODELS", PROJECT_DIR / "models"))


def cache_dir() -> Path:
    """Converted models (e.g. SmolLM2 fp32 from GGUF), fine-tuned task models, the aarch64 rootfs."""
    d = Path(os.environ.get("EDGECOMP_CACHE", Path.home() / ".cache" / "edgecomp"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def shared_data_dir() -> Path:
    """The development data sets (WikiText-2, SST-2) beside the checkout; tests and scripts only."""
    return Path(os.environ.get("EDGECOMP_SHARED_DATA", PROJECT_DIR.parent / "shared" / "data"))
