"""What a device process pays for one artifact: the native probe (edgecomp/bench/native/probe.c).

The Python memory probe (edgecomp.bench.memory) measures a fresh interpreter, which with onnxruntime
imported already peaks at ~47 MB before a model is loaded. An app runs the runtime from C++/Java, so
``native_block`` runs the artifact through the runtime's own C API in a small C program (built here with
the system C compiler, once per source version) and records:

    peak_rss_mb, rss_mb {start, loaded, first_run, runs}, anon_mb / file_mb / shmem_mb (at the peak stage),
    load_ms, first_run_ms, latency_ms {p50, p90}, threads, seq_len, session_options, runtime

``arm64_native_block`` runs the aarch64 build of the same probe under qemu-aarch64 on the aarch64
runtime libraries of the emulation environment (edgecomp.bench.arm64): guest memory only (the
emulator's own is excluded, as in arm64.py), and guest instructions per inference instead of latency.

Both also return the outputs (not for the manifest): the probe is checked against PyTorch like the Python
runners are. The session options per format live in edgecomp/runtime/options.py (the runners apply the
same; the manifest records them per artifact).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from ..cbuild import COMPILERS, compile_cached, host_machine
from ..errors import EdgecompError
from ..runtime.options import session_options

SOURCE = Path(__file__).with_name("native") / "probe.c"
CACHE = Path(os.environ.get("EDGECOMP_CACHE", Path.home() / ".cache" / "edgecomp")) / "probe"
# compiler per target machine; the host's own is the system `cc`
RUNS = 10
WARMUP = 2
_DTYPES = {np.dtype(np.float32): "float32", np.dtype(np.int32): "int32", np.dtype(np.int64): "int64"}


def build_probe(machine: str | None = None, force: bool = False) -> Path:
    """The probe binary for ``machine`` (default: this host), compiled once per source version into
    ``~/.cache/edgecomp/probe``. A missing compiler is one line saying which package provides it."""
    return compile_cached(SOURCE, "edgecomp-probe", machine, ["-O2", "-std=gnu11", "-Wall", "-ldl"], CACHE,
                          "the native probe", force)


def runtime_library(suffix: str, site: Path | None = None) -> Path:
    """libonnxruntime.so (.onnx/.ort) or libLiteRt.so (.tflite) from the installed wheels, or from the
    wheels installed under ``site`` (the aarch64 guest's site-packages)."""
    if suffix in (".onnx", ".ort"):
        pkg, pattern, dist = "onnxruntime", "capi/libonnxruntime.so*", "onnxruntime"
    elif suffix == ".tflite":
        pkg, pattern, dist = "ai_edge_litert", "libLiteRt.so", "ai-edge-litert"
    else:
        raise EdgecompError(f"no native runtime for {suffix!r}", "pass an .onnx, .ort or .tflite file")
    if site is None:
        import importlib.util

        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise EdgecompError(f"{dist} is not installed, so the native probe has no runtime for {suffix}",
                                f"run `pip install {dist}`" + (' (or `pip install -e ".[android]"`)' if suffix == ".tflite" else ""))
        root = Path(list(spec.submodule_search_locations)[0])
    else:
        root = Path(site) / pkg
    found = sorted(p for p in root.glob(pattern) if p.is_file())
    if not found:
        raise EdgecompError(f"{root} has no {pattern} (a {dist} wheel without its shared library?)",
                            f"reinstall {dist}")
    return found[0]


def write_tensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """The probe's tensor file: a text header (name dtype rank dims), DATA, then the raw bytes."""
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    head = [f"EDGEPROBE 1\n{len(arrays)}\n"]
    for name, a in arrays.items():
        if a.dtype not in _DTYPES:
            raise EdgecompError(f"input {name} is {a.dtype}", "feed float32, int32 or int64 arrays")
        head.append(f"{name} {_DTYPES[a.dtype]} {a.ndim}{''.join(f' {d}' for d in a.shape)}\n")
    with open(path, "wb") as f:
        f.write("".join(head).encode() + b"DATA\n")
        for a in arrays.values():
            f.write(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())


def read_tensors(path: Path) -> dict[str, np.ndarray]:
    data = Path(path).read_bytes()
    lines = data.split(b"\n", 2)
    if lines[0] != b"EDGEPROBE 1":
        raise EdgecompError(f"{path} is not a probe tensor file", "re-run the probe")
    n = int(lines[1])
    rest = lines[2]
    header, pos = [], 0
    for _ in range(n):
        end = rest.index(b"\n", pos)
        name, dtype, rank, *dims = rest[pos:end].decode().split()
        header.append((name, np.dtype(dtype).newbyteorder("<"), tuple(int(d) for d in dims[: int(rank)])))
        pos = end + 1
    if rest[pos:pos + 5] != b"DATA\n":
        raise EdgecompError(f"{path} has no DATA marker", "re-run the probe")
    pos += 5
    out = {}
    for name, dtype, shape in header:
        size = int(np.prod(shape)) * dtype.itemsize
        out[name] = np.frombuffer(rest, dtype=dtype, count=int(np.prod(shape)), offset=pos).reshape(shape).astype(dtype.newbyteorder("="))
        pos += size
    return out


def _feeds_for(path: Path, feeds: dict[str, np.ndarray], signature: str | None = None) -> dict[str, np.ndarray]:
    # LiteRT signatures take int32 token inputs (the exporter's choice); ORT graphs take int64
    if path.suffix == ".tflite":
        return tflite_feeds(path, feeds, signature)
    return {k: np.asarray(v) for k, v in feeds.items()}


def tflite_feeds(path: Path, feeds: dict[str, np.ndarray], signature: str | None = None) -> dict[str, np.ndarray]:
    """Token feeds as a .tflite's signature takes them (int32), plus zeros for its adapter slot inputs (the base
    model, as edgecomp's LiteRT runner feeds with no adapter active); tokens first."""
    from ..adapt.litert import zero_slot_feeds

    tokens = {k: np.asarray(v).astype(np.int32) for k, v in feeds.items()}
    return {**tokens, **{k: v for k, v in zero_slot_feeds(path, signature).items() if k not in tokens}}


def _command(probe: Path, lib: Path, artifact: Path, tmp: Path, threads: int, runs: int, warmup: int,
             options: dict[str, str], signature: str | None, machine: str | None = None) -> list[str]:
    from ..runtime.options import options_for_machine

    options = options_for_machine(options, machine)  # custom_ops=edgecomp: the library built for the probe's machine
    cmd = [str(probe), "--lib", str(lib), "--model", str(artifact), "--inputs", str(tmp / "feeds.bin"),
           "--outputs", str(tmp / "outputs.bin"), "--threads", str(threads), "--runs", str(runs),
           "--warmup", str(warmup)]
    for k, v in options.items():
        cmd += ["--option", f"{k}={v}"]
    if signature:
        cmd += ["--signature", signature]
    return cmd


def _mb(kb: float) -> float:
    return round(kb / 1024, 1)


def _block(result: dict, seq_len: int, options: dict[str, str]) -> dict:
    rss = result["rss_kb"]
    peak_stage = max(rss, key=rss.get)
    block = {
        "peak_rss_mb": _mb(result["peak_rss_kb"]),
        "rss_mb": {k: _mb(v) for k, v in rss.items()},
        "anon_mb": _mb(result["anon_kb"][peak_stage]),
        "file_mb": _mb(result["file_kb"][peak_stage]),
        "shmem_mb": _mb(result["shmem_kb"][peak_stage]),
        # after the timed runs: which mappings hold the resident memory (see probe.c read_where)
        "smaps_mb": {k: _mb(v) for k, v in result["smaps_kb"].items()},
        "load_ms": round(result["load_ms"], 1),
        "first_run_ms": round(result["first_run_ms"], 2),
        "latency_ms": {"p50": round(result["latency_ms"]["p50"], 2), "p90": round(result["latency_ms"]["p90"], 2)},
        "threads": result["threads"],
        "runs": result["runs"],
        "seq_len": seq_len,
        "session_options": dict(options),
        "runtime": result["runtime"],
    }
    if result.get("signature"):
        block["signature"] = result["signature"]
    return block


def default_options(path: Path) -> dict[str, str]:
    return session_options(path)


def native_block(artifact: Path, feeds: dict[str, np.ndarray], threads: int = 1, runs: int = RUNS,
                 warmup: int = WARMUP, options: dict[str, str] | None = None, signature: str | None = None,
                 timeout_s: float = 600) -> tuple[dict, dict[str, np.ndarray]]:
    """(the manifest's ``metrics.native`` block, the probe's outputs) for one artifact on this host."""
    from .memory import _drop_from_page_cache

    artifact = Path(artifact).resolve()
    if not artifact.is_file():
        raise EdgecompError(f"artifact {artifact} does not exist", "export it first with `edgecomp export`")
    options = default_options(artifact) if options is None else dict(options)
    lib = runtime_library(artifact.suffix)
    probe = build_probe()
    feeds = _feeds_for(artifact, feeds, signature)
    _drop_from_page_cache(artifact)  # measured as after install, not as just written (see memory.py)
    with tempfile.TemporaryDirectory(prefix="edgecomp-native-") as tmp_name:
        tmp = Path(tmp_name)
        write_tensors(tmp / "feeds.bin", feeds)
        cmd = _command(probe, lib, artifact, tmp, threads, runs, warmup, options, signature)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise EdgecompError(f"the native probe took over {timeout_s:.0f} s on {artifact.name}", "use fewer runs") from None
        if proc.returncode != 0:
            raise EdgecompError(f"the native probe failed on {artifact.name} ({_failure(proc.returncode, proc.stderr)})",
                                "check that the artifact runs with `edgecomp run`")
        result = _last_json(proc.stdout)
        outputs = read_tensors(tmp / "outputs.bin")
    seq_len = int(np.shape(next(iter(feeds.values())))[-1])
    return _block(result, seq_len, options), outputs


def _last_json(text: str) -> dict:
    # the runtimes may log to the same stream before the probe prints its one JSON line
    lines = [ln for ln in text.splitlines() if ln.startswith("{")]
    if not lines:
        raise EdgecompError("the native probe printed no result", "re-run it; if it persists, report it")
    return json.loads(lines[-1])


def _failure(returncode: int, stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    said = [ln for ln in lines if ln.startswith("edgecomp-probe:")]
    if said:
        return said[-1].removeprefix("edgecomp-probe:").strip()[:300]
    if returncode < 0:
        return f"killed by signal {-returncode}"
    return (lines[-1] if lines else f"exit {returncode}")[:300]


def arm64_native_block(artifact: Path, feeds: dict[str, np.ndarray], cpu: str = "cortex-a76", runs: int = 2,
                       options: dict[str, str] | None = None, signature: str | None = None,
                       timeout_s: float = 3600) -> tuple[dict, dict[str, np.ndarray]]:
    """(the manifest's ``arm64.native`` block, the outputs): the aarch64 probe under qemu-aarch64 on the
    guest's runtime libraries. Memory is the guest's own (host smaps over the guest's mappings at each
    checkpoint); ``instructions_per_inference`` comes from the insn_count plugin; no latency (emulated
    milliseconds are not ARM milliseconds)."""
    from . import arm64
    from .memory import _drop_from_page_cache

    if cpu not in arm64.EMULATED_CPUS:
        raise EdgecompError(f"emulated cpu {cpu!r} is not supported", "use cortex-a76 or neoverse-n1")
    arm64._require_env()
    artifact = Path(artifact).resolve()
    if not artifact.is_file():
        raise EdgecompError(f"artifact {artifact} does not exist", "export it first with `edgecomp export`")
    options = default_options(artifact) if options is None else dict(options)
    root = arm64.ARM64_ENV / "rootfs"
    lib_host = runtime_library(artifact.suffix, site=root / arm64.GUEST_SITE.lstrip("/"))
    lib_guest = "/" + str(lib_host.relative_to(root))  # qemu -L resolves it inside the rootfs
    probe = build_probe("aarch64")
    feeds = _feeds_for(artifact, feeds, signature)
    _drop_from_page_cache(artifact)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edgecomp-native-arm64-") as tmp_name:
        tmp = Path(tmp_name)
        write_tensors(tmp / "feeds.bin", feeds)
        (tmp / "maps").mkdir()
        cmd = ["qemu-aarch64", "-cpu", cpu, "-L", str(root),
               "-plugin", f"{arm64.ARM64_ENV / 'insn_count.so'},out={tmp / 'counts.txt'}",
               *_command(probe, Path(lib_guest), artifact, tmp, 1, runs, 1, options, signature, machine="aarch64"),
               "--checkpoints", str(tmp / "maps")]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(tmp)}
        stages = arm64._run_with_checkpoints(cmd, env, tmp, timeout_s, artifact.name,
                                             measure=_guest_split(lib_host.name, artifact.name))
        result = _last_json((tmp / "guest.log").read_text(errors="replace"))
        outputs = read_tensors(tmp / "outputs.bin")
        counts = arm64._read_counts(tmp / "counts.txt")
    rss = {stage.replace("-", "_"): v for stage, v in stages.items()}
    peak_stage = max(rss, key=lambda s: rss[s]["rss"])
    per_run = [counts[i + 1] - counts[i] for i in range(runs)]
    peak = rss[peak_stage]
    block = {
        "peak_rss_mb": _mb(peak["rss"]),
        "rss_mb": {k: _mb(v["rss"]) for k, v in rss.items()},
        "anon_mb": _mb(peak["anon"]),
        "file_mb": _mb(peak["rss"] - peak["anon"] - peak["shmem"]),
        "shmem_mb": _mb(peak["shmem"]),
        # at the peak checkpoint, in guest mappings (probe.c's split of the host smaps, same classes)
        "smaps_mb": {k: _mb(peak[k]) for k in ("runtime_library", "model_file", "other_files", "anon", "shmem")},
        "instructions_per_inference": int(statistics.median(per_run)),
        "instructions_load": counts[arm64.LABEL_LOADED] - counts[arm64.LABEL_START],
        "threads": 1,
        "seq_len": int(np.shape(next(iter(feeds.values())))[-1]),
        "session_options": dict(options),
        "runtime": result["runtime"],
        "emulated_cpu": cpu,
        "emulated": True,
        "emulation_wall_s": round(time.monotonic() - started, 1),  # cost of this check, NOT device latency
    }
    if result.get("signature"):
        block["signature"] = result["signature"]
    return block, outputs


def _guest_split(lib_name: str, model_name: str):
    """measure(pid, guest_maps) for arm64._run_with_checkpoints: {rss, anon, runtime_library, model_file,
    other_files, shmem} kB of the guest's own mappings (see arm64.guest_rss_kb), split as probe.c splits
    the host's smaps: file pages by which file, anonymous pages over all mappings."""
    from .arm64 import guest_rss_kb

    def kind(line: str) -> str:
        path = line.split(None, 5)[5].strip() if len(line.split(None, 5)) > 5 else ""
        if not path or path.startswith("["):
            return "anonymous"
        if path.startswith("/memfd:") or path.endswith("(deleted)") or path.startswith("/dev/zero"):
            return "shmem"
        name = path.rsplit("/", 1)[-1]
        return "runtime_library" if name == lib_name else "model_file" if name == model_name else "other_files"

    def measure(pid: int, guest_maps: str) -> dict[str, int]:
        smaps = Path(f"/proc/{pid}/smaps").read_text()
        lines = guest_maps.splitlines()
        split = {"rss": guest_rss_kb(guest_maps, smaps), "anon": guest_rss_kb(guest_maps, smaps, field="Anonymous")}
        for k in ("runtime_library", "model_file", "other_files", "shmem"):
            part = "\n".join(ln for ln in lines if kind(ln) == k)
            split[k] = (guest_rss_kb(part, smaps) - guest_rss_kb(part, smaps, field="Anonymous")) if part else 0
        return split

    return measure


# A probe that runs an artifact differently from its runner measures something else: same runtime, same
# kernels, same inputs, so the outputs must agree to float rounding (measured: <= 1e-6 on tiny models).
PARITY_COS_MIN = 0.9999
# Reasons a measurement cannot be made on this machine (no compiler, no runtime wheel): recorded, not fatal
UNAVAILABLE = ("no C compiler", "is not installed", "no native runtime", "has no ")


def tflite_signature_feeds(feeds: dict[str, np.ndarray], buckets) -> tuple[dict[str, np.ndarray], str | None]:
    """Feeds right-padded (with 0: pad id, masked out) to the smallest ``seq<N>`` bucket that holds them,
    and that signature's name, as edgecomp's LiteRT runner does; unchanged without buckets."""
    if not buckets:
        return feeds, None
    length = int(np.shape(next(iter(feeds.values())))[1])
    fits = sorted(n for n in buckets if n >= length)
    if not fits:
        raise EdgecompError(f"feeds of {length} tokens exceed the largest bucket {max(buckets)}", "use shorter feeds")
    n = fits[0]
    padded = {}
    for k, v in feeds.items():
        v = np.asarray(v)
        out = np.zeros((v.shape[0], n), dtype=v.dtype)
        out[:, :length] = v
        padded[k] = out
    return padded, f"seq{n}"


def compare_outputs(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> dict:
    """{max_abs_diff, cos_min} over the outputs both have (by name; a longer bucket output is cropped)."""
    diff, cos_min = 0.0, 1.0
    for name, w in want.items():
        if name not in got:
            continue
        g, w = np.asarray(got[name], np.float64), np.asarray(w, np.float64)
        if g.shape != w.shape and g.ndim == w.ndim:
            g = g[tuple(slice(0, n) for n in w.shape)]
        if g.shape != w.shape:
            raise EdgecompError(f"native output {name} has shape {g.shape}, the runner's {w.shape}",
                                "report this artifact")
        diff = max(diff, float(np.max(np.abs(g - w))) if g.size else 0.0)
        rows_g, rows_w = g.reshape(-1, g.shape[-1]), w.reshape(-1, w.shape[-1])
        norms = np.linalg.norm(rows_g, axis=1) * np.linalg.norm(rows_w, axis=1)
        cos = np.where(norms > 0, (rows_g * rows_w).sum(1) / np.where(norms > 0, norms, 1), 1.0)
        cos_min = min(cos_min, float(cos.min()))
    return {"max_abs_diff": float(f"{diff:.3g}"), "cos_min": round(cos_min, 6)}


def _skipped_or_raise(e: EdgecompError) -> dict:
    """A missing compiler or runtime library is recorded in the block; any other probe failure is raised."""
    if any(s in e.problem for s in UNAVAILABLE):
        return {"skipped": str(e)}
    raise e


def _record_feeds(path: Path, record: dict, feeds: dict[str, np.ndarray]):
    """The bench feeds the artifact takes (its signature's, for a bucketed .tflite) and their length."""
    feeds = {k: v for k, v in feeds.items() if k in record.get("inputs", feeds)}
    seq_len = int(np.shape(next(iter(feeds.values())))[1])
    fed, signature = tflite_signature_feeds(feeds, record.get("seq_buckets")) if Path(path).suffix == ".tflite" else (feeds, None)
    return fed, signature, seq_len


def measure_native(path: Path, record: dict, feeds: dict[str, np.ndarray], python_outputs: dict[str, np.ndarray],
                   threads: int = 1) -> dict:
    """``metrics.native`` for an artifact record: the probe on the bench feeds with the record's
    session options, checked against the Python runner's outputs on the same feeds. Without a compiler
    or runtime library the block says what is missing instead of failing the export."""
    fed, signature, seq_len = _record_feeds(path, record, feeds)
    try:
        block, outputs = native_block(path, fed, threads=threads, options=record.get("session_options"), signature=signature)
    except EdgecompError as e:
        return _skipped_or_raise(e)
    block["seq_len"] = seq_len
    block["parity_vs_python"] = compare_outputs(outputs, python_outputs)
    if block["parity_vs_python"]["cos_min"] < PARITY_COS_MIN:
        raise EdgecompError(f"the native probe's outputs for {Path(path).name} differ from the Python runner's "
                            f"(worst cosine {block['parity_vs_python']['cos_min']:.6f})", "report this artifact")
    return block


def measure_arm64_native(path: Path, record: dict, feeds: dict[str, np.ndarray], x86_outputs: dict[str, np.ndarray],
                         cpu: str) -> dict:
    """``arm64.native``: the aarch64 probe under qemu on the guest's runtime libraries, compared with the
    x86 outputs like the Python guest run (``parity`` uses edgecomp.bench.checks' rule)."""
    from .arm64 import _compare

    fed, signature, seq_len = _record_feeds(path, record, feeds)
    try:
        block, outputs = arm64_native_block(path, fed, cpu=cpu, options=record.get("session_options"), signature=signature)
    except EdgecompError as e:
        return _skipped_or_raise(e)
    block["seq_len"] = seq_len
    diff, cos_min, _ = _compare(outputs, x86_outputs, Path(path).name)
    block["max_abs_diff_vs_x86"] = float(f"{diff:.3g}")
    block["cos_min_vs_x86"] = round(cos_min, 6)
    return block


def synthetic_feeds(record: dict, seq_len: int) -> dict[str, np.ndarray]:
    """Token feeds of ``seq_len`` for a quick measurement from the command line (memory and instruction
    counts depend on the shapes, not on which tokens): ids cycling over a small range, all attended."""
    ids = (100 + np.arange(seq_len) % 900).astype(np.int64)[None, :]
    all_feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    names = record.get("inputs") or list(all_feeds)
    return {k: all_feeds[k] for k in names if k in all_feeds}


def main() -> None:
    """``python -m edgecomp.bench.native [--machine aarch64] [--force]``: build the probe, print its path.
    ``python -m edgecomp.bench.native ARTIFACT [--option K=V ...] [--arm64] [--seq-len N]``: measure one
    artifact of an export with those session options (default: the manifest's) and print the block."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m edgecomp.bench.native", description=main.__doc__)
    ap.add_argument("artifact", nargs="?", help="an .onnx/.ort/.tflite of an edgecomp export (omit to only build)")
    ap.add_argument("--machine", default=None, help=f"build for this machine ({', '.join(sorted(COMPILERS))}; default: this host)")
    ap.add_argument("--force", action="store_true", help="rebuild even if the cached binary is current")
    ap.add_argument("--option", action="append", default=None, metavar="KEY=VALUE", help="a session option (repeatable)")
    ap.add_argument("--arm64", action="store_true", help="run the aarch64 probe under qemu-aarch64")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--runs", type=int, default=None)
    a = ap.parse_args()
    try:
        if not a.artifact:
            print(build_probe(a.machine, force=a.force))
            return
        path = Path(a.artifact)
        manifest = path.parent / "manifest.json"
        record = next((r for r in json.loads(manifest.read_text())["artifacts"] if r["path"] == path.name), {}) \
            if manifest.is_file() else {}
        options = dict(o.split("=", 1) for o in a.option) if a.option is not None else record.get("session_options")
        feeds = synthetic_feeds(record, a.seq_len)
        fed, signature = tflite_signature_feeds(feeds, record.get("seq_buckets")) if path.suffix == ".tflite" else (feeds, None)
        if a.arm64:
            block, _ = arm64_native_block(path, fed, options=options, signature=signature, runs=a.runs or 2)
        else:
            block, _ = native_block(path, fed, options=options, signature=signature, runs=a.runs or RUNS)
        print(json.dumps(block))
    except EdgecompError as e:
        raise SystemExit(f"error: {e}")


if __name__ == "__main__":
    main()
