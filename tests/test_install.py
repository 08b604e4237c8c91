"""A non-editable install ships the package data: build the wheel, install it into a fresh venv (torch and the
other dependencies come from the system site-packages, `--no-deps`) and list targets, recipes and models
from an empty folder with that venv's `edgecomp`. About 10 s; marked `install` (needs pip + setuptools)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tiny import ROOT

pytestmark = pytest.mark.install

DATA = ROOT / "edgecomp" / "data"


def _run(cmd: list, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (cmd, out.stdout[-2000:], out.stderr[-2000:])
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict, Path]:
    """(venv, env, wheel): the wheel built from a copy of the tree (an in-tree build would leave build/ and
    *.egg-info in the checkout), installed into a new venv; env has no PYTHONPATH, so nothing leaks in."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    src.mkdir()
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    shutil.copytree(ROOT / "edgecomp", src / "edgecomp", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EDGECOMP_TARGETS", "EDGECOMP_MODELS",
                                                           "EDGECOMP_RECIPES", "VIRTUAL_ENV")}
    # an absolute path: a bare name would be looked up on the package index
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", src.resolve(),
          "-w", tmp / "wheels"], tmp, env)
    (wheel,) = (tmp / "wheels").glob("edgecomp-*.whl")
    venv = tmp / "venv"
    # --without-pip: the system's pip (visible through --system-site-packages) installs into the venv
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], tmp, env)
    _run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", wheel], tmp, env)
    return venv, env, wheel


def test_wheel_contains_targets_models_recipes_and_arm64_files(installed):
    _, _, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for kind in ("targets", "models", "recipes"):
        files = sorted((DATA / kind).glob("*.toml"))
        assert files, kind
        for f in files:
            assert f"edgecomp/data/{kind}/{f.name}" in names, f
    # the aarch64 guest runner runs by its installed path; the qemu plugin's source is what setup_arm64.sh builds
    assert {"edgecomp/bench/arm64_guest.py", "edgecomp/bench/insn_count.c"} <= names


def test_installed_cli_lists_its_data_from_an_empty_folder(installed, tmp_path):
    venv, env, _ = installed
    empty = tmp_path / "empty"
    empty.mkdir()
    where = _run([venv / "bin" / "python", "-c", "import edgecomp; print(edgecomp.__file__)"], empty, env).stdout
    assert Path(where.strip()).is_relative_to(venv), where  # the wheel's copy, not the checkout
    exe = venv / "bin" / "edgecomp"
    env = {**env, "COLUMNS": "200"}  # rich: one table row per line
    targets = _run([exe, "targets"], empty, env).stdout
    for f in (DATA / "targets").glob("*.toml"):
        assert f"│ {f.stem} " in targets, f.stem
    recipes = _run([exe, "recipes"], empty, env).stdout
    for f in (DATA / "recipes").glob("*.toml"):
        assert f"│ {f.stem} " in recipes, f.stem
    models = _run([exe, "models"], empty, env).stdout
    for f in (DATA / "models").glob("*.toml"):
        assert f"│ {f.stem} " in models, f.stem
    assert "small-tflite" in models  # generic recipes listed with the model that accepts them
    assert not any(empty.iterdir())  # listing writes nothing where it runs
