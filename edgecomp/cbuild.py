"""Compiling edgecomp's C sources (the native probe, the custom-op library) for this host or for aarch64,
once per source and flags, into a cache folder; written to a temporary name and renamed, so a failed or
interrupted build leaves nothing behind. A missing compiler is one line naming the Debian package."""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path

from .errors import EdgecompError

COMPILERS = {"x86_64": "cc", "aarch64": "aarch64-linux-gnu-gcc"}
COMPILER_PACKAGES = {"cc": "gcc libc6-dev", "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu"}


def host_machine() -> str:
    m = platform.machine()
    return "aarch64" if m in ("arm64", "aarch64") else m


def compile_cached(source: Path, name: str, machine: str | None, args: list[str], cache: Path, what: str,
                   force: bool = False) -> Path:
    """``cache/<digest>-<machine>/<name>`` built from ``source`` with ``args`` (flags and libraries) by the
    machine's compiler; ``what`` names the product in messages ("the native probe")."""
    machine = machine or host_machine()
    if machine != host_machine() and machine not in COMPILERS:
        raise EdgecompError(f"no compiler known to build {what} for {machine!r}",
                            f"build on a {machine} host, or for one of {sorted(COMPILERS)}")
    compiler = "cc" if machine == host_machine() else COMPILERS[machine]
    if shutil.which(compiler) is None:
        raise EdgecompError(f"no C compiler `{compiler}` to build {what} for {machine}",
                            f"install it (Debian/Ubuntu: `apt-get install {COMPILER_PACKAGES.get(compiler, compiler)}`)")
    digest = hashlib.sha256(Path(source).read_bytes() + " ".join(args).encode()).hexdigest()[:16]
    out = Path(cache) / f"{digest}-{machine}" / name
    if out.is_file() and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{name}.{os.getpid()}")
    proc = subprocess.run([compiler, "-o", str(tmp), str(source), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgecompError(f"building {what} with {compiler} failed ({tail[:200]})",
                            f"check that `{compiler}` can build C code for {machine} (and that libc headers are installed)")
    os.replace(tmp, out)
    return out
