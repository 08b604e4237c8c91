"""Output folders: what ``--force`` may replace, building in a staging folder, the atomic swap, disk space.

edgecomp never deletes what it did not write. ``--force`` replaces a folder only when that folder's own
record (``manifest.json`` of an export, ``compression.json`` of ``edgecomp compress``) says edgecomp wrote
it and the folder holds nothing else; the model being read, the current folder and its parents, the home
folder and files are refused whatever they hold. The new folder is built beside OUT and swapped in with
one ``renameat2(RENAME_EXCHANGE)`` where the kernel has it, so at any instant OUT is the old export or the
new one, never a mix.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

from .errors import EdgecompError

# The files by which a folder says edgecomp wrote it, and what it lists as its own: an export, a
# compressed model, a comparison report of several exports (`edgecomp report A B -o DIR`).
COMPARISON_RECORD = "comparison.json"
RECORDS = ("manifest.json", "compression.json", COMPARISON_RECORD, "adapter.json")  # adapter.json: `edgecomp adapt`
STAGING_PREFIX = ".edgecomp-"
FULL_DISK_BYTES = 16 << 20  # below this, a failed write is taken for a full disk


def _record(folder: Path) -> dict | None:
    for name in RECORDS:
        p = folder / name
        if p.is_file():
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                return None
            if isinstance(data, dict) and data.get("edgecomp_version"):
                return {**data, "_record": name}
    return None


def written_files(folder: Path) -> list[str]:
    """Every file under ``folder`` (relative, sorted): what an output folder records as its own."""
    folder = Path(folder)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


# What exports written before manifests listed their files hold besides their artifacts.
LEGACY_EXPORT_FILES = {"report.md", "report.html", "size_breakdown.png", "early_exit.json", "config.json", "tokenizer.json",
                       "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt",
                       "tokenizer.model", "generation_config.json"}


def _owned_files(record: dict) -> set[str] | None:
    files = record.get("files")
    if isinstance(files, list) and all(isinstance(f, str) for f in files):
        return set(files) | {record["_record"]}
    artifacts = record.get("artifacts")
    if record["_record"] == "manifest.json" and isinstance(artifacts, list):
        paths = {a["path"] for a in artifacts if isinstance(a, dict) and isinstance(a.get("path"), str)}
        configs = {f"{Path(p).stem}.required_operators.config" for p in paths}
        return paths | configs | LEGACY_EXPORT_FILES | {"manifest.json"}
    return None


def refuse_to_replace(out_dir: Path, protected: tuple[Path, ...] = ()) -> None:
    """Raise unless ``out_dir`` is an edgecomp output folder holding only what edgecomp wrote there."""
    out_dir = Path(out_dir)
    real = out_dir.resolve()
    if out_dir.is_symlink() or not out_dir.is_dir():
        raise EdgecompError(f"{out_dir} is a file, not an edgecomp export folder: --force replaces only folders edgecomp wrote",
                            "choose another -o")
    cwd = Path.cwd().resolve()
    if real == cwd or real in cwd.parents:
        raise EdgecompError(f"{out_dir} is the current folder or one of its parents: --force will not replace it",
                            "pass a new folder with -o, e.g. -o out/export")
    home = Path.home().resolve()
    if real == home or real == Path(real.anchor):
        raise EdgecompError(f"{out_dir} is the home or root folder: --force will not replace it", "choose another -o")
    for p in protected:
        p = Path(p).resolve()
        if real == p or real in p.parents:
            raise EdgecompError(f"{out_dir} holds the model being read ({p}): --force will not replace it",
                                "write the export to another folder with -o")
    record = _record(out_dir)
    if record is None:
        raise EdgecompError(f"{out_dir} exists and is not an edgecomp export (no manifest.json from edgecomp): "
                            "--force replaces only folders edgecomp wrote", "choose another -o, or move that folder away yourself")
    owned = _owned_files(record)
    if owned is None:
        raise EdgecompError(f"{out_dir} is an edgecomp folder that does not list its files, so --force cannot tell "
                            "them from yours", "delete it yourself, or choose another -o")
    foreign = [f for f in written_files(out_dir) if f not in owned]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise EdgecompError(f"{out_dir} holds files edgecomp did not write ({shown}): --force will not delete them",
                            "move them out of the folder, or choose another -o")


# --- disk space ---------------------------------------------------------------------------------------
def device_of(path: Path) -> str:
    """The block device (or mount point) holding ``path``, as a person would name it."""
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    mount = path
    while not os.path.ismount(mount):
        mount = mount.parent
    device = None
    try:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            dev, point = line.split()[:2]
            if point == str(mount):
                device = dev  # the last entry for a mount point is the one in use
    except (OSError, ValueError):
        pass
    return f"{device} (mounted at {mount})" if device else str(mount)


def free_bytes(path: Path) -> int:
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def no_space(path: Path, need_bytes: int | None) -> EdgecompError:
    need = f"need about {max(1, round(need_bytes / 1e6))} MB, " if need_bytes else ""
    return EdgecompError(f"no space left on {device_of(path)} ({need}{free_bytes(path) / 1e6:.0f} MB free)",
                         "free some space there or choose another -o")


def require_space(path: Path, need_bytes: int) -> None:
    if free_bytes(path) < need_bytes:
        raise no_space(path, need_bytes)


# --- the swap -----------------------------------------------------------------------------------------
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the kernel or filesystem cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    if ctypes.get_errno() in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(b))


def _publish_permissions(folder: Path) -> None:
    """mkdtemp makes 0700 folders; an export is meant to be read by sync tools and other users (umask applies)."""
    mask = os.umask(0)
    os.umask(mask)
    for d in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        os.chmod(d, 0o777 & ~mask)
    for f in folder.rglob("*"):
        if f.is_file() and not f.is_symlink():
            os.chmod(f, (f.stat().st_mode | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH) & ~mask & 0o777)


def _clean_stale_staging(parent: Path, name: str) -> None:
    """Staging folders of runs that died (their pid is gone) are edgecomp's own leftovers: remove them."""
    for d in parent.glob(f"{STAGING_PREFIX}{name}.*"):
        try:
            pid = int(d.name.rsplit(".", 2)[-2])
        except (ValueError, IndexError):
            continue
        if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)


def check_output(out_dir: Path, force: bool, protected: tuple[Path, ...] = ()) -> None:
    """May ``out_dir`` become an output folder? Cheap: called before any work and again before writing."""
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() or out_dir.is_symlink():
        if not force:
            raise EdgecompError(f"output folder {out_dir} already exists",
                                "pass --force to replace an earlier edgecomp export, or choose another -o")
        refuse_to_replace(out_dir, protected)
    real = out_dir.resolve()
    for p in protected:
        if real == Path(p).resolve():
            raise EdgecompError(f"{out_dir} is the model being read", "write the export to another folder with -o")


@contextlib.contextmanager
def staged_output_dir(out_dir: Path, force: bool, protected: tuple[Path, ...] = (), need_bytes: int = 0):
    """Build in a staging folder beside OUT; on success it becomes OUT (replacing an earlier export only
    when ``force`` and ``refuse_to_replace`` allow it). Any failure, Ctrl-C included, leaves OUT as it was."""
    out_dir = Path(out_dir).absolute()
    check_output(out_dir, force, protected)
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgecompError(f"cannot write to {parent} ({e.strerror})", "choose a writable output folder with -o") from None
    if not os.access(parent, os.W_OK):
        raise EdgecompError(f"cannot write to {parent} (permission denied)", "choose a writable output folder with -o")
    if need_bytes:
        require_space(parent, need_bytes)
    _clean_stale_staging(parent, out_dir.name)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{out_dir.name}.{os.getpid()}.", dir=parent))
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise no_space(parent, need_bytes) from None
        raise EdgecompError(f"cannot write to {parent} ({e.strerror})", "choose a writable output folder with -o") from None
    try:
        yield tmp
        _publish_permissions(tmp)
        if out_dir.exists():
            if _exchange(tmp, out_dir):  # OUT is the new export now; tmp holds the old one
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                old = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{out_dir.name}.{os.getpid()}.old", dir=parent))
                os.replace(out_dir, old / "x")
                os.replace(tmp, out_dir)
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException as e:
        # A full disk often surfaces as another library's error (a truncated file read back, a failed
        # export): with (almost) nothing left free while the staging folder still exists, it is the cause.
        full = isinstance(e, Exception) and free_bytes(parent) < FULL_DISK_BYTES
        written = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        shutil.rmtree(tmp, ignore_errors=True)
        if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or full:
            raise no_space(parent, max(need_bytes, 2 * written)) from None  # it stopped part way: at least twice that
        raise
