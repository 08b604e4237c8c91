"""Run an artifact on the aarch64 builds of its runtime under qemu-aarch64, and measure what stays true there.

No ARM device exists here, but the aarch64 wheels of onnxruntime and ai-edge-litert (the builds a phone
or board runs) do run under qemu's user-mode emulation of a real core (Cortex-A76, never `max`: with
`max` qemu enables SVE and int8 ORT gave wrong results). Three figures survive emulation:

- parity: the aarch64 kernels' outputs against the x86 run on the same feeds (``max_abs_diff``);
- ``instructions_per_inference``: aarch64 instructions the guest retires per inference, counted by a TCG
  plugin (edgecomp/bench/insn_count.c, built by setup_arm64.sh). Deterministic and a property of the program, unlike wall time:
  emulation slows kernels by 130x-720x depending on the kernel, which reorders rankings, so emulated
  milliseconds are never reported as device latency;
- ``guest_peak_rss_mb``: resident memory of the guest's own mappings (see ``guest_rss_kb``).

The environment (rootfs, wheels, plugin) is built by ``scripts/setup_arm64.sh`` into ``ARM64_ENV``.
One call is one qemu process: load, one warm-up run (its outputs are the parity outputs), then ``runs``
marked runs; memory is read at three checkpoints in the same process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import EdgecompError
from ..runtime.options import options_for_machine, session_options
from .arm64_guest import LABEL_LOADED, LABEL_START

ARM64_ENV = Path(
    os.environ.get("EDGECOMP_ARM64_ENV")
    or Path(os.environ.get("EDGECOMP_CACHE", Path.home() / ".cache" / "edgecomp")) / "arm64"
)
SETUP_HINT = "run `bash scripts/setup_arm64.sh` (about 70 s, needs apt and PyPI)"
# Run by path inside the guest, which has no edgecomp: the module stands alone (see its docstring).
GUEST_RUNNER = Path(__file__).with_name("arm64_guest.py")
GUEST_SITE = "/opt/edgecomp/site"  # inside the rootfs; where setup_arm64.sh pip-installs the wheels
# The rootfs carries one fake /proc/cpuinfo (a Cortex-A76, written by setup_arm64.sh) because qemu passes
# the host's through; the runtimes pick kernels from it, so the emulated core must have those features.
# Neoverse-N1 is the A76's server twin (same ISA, armv8.2 + dotprod). Measured: with cortex-a72 (no
# dotprod) int8 ORT died with SIGILL; `max` adds SVE.
EMULATED_CPUS = ("cortex-a76", "neoverse-n1")

_MAP_LINE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) \S+ ([0-9a-f]+) \S+ \d+\s*(.*)$")


def env_present() -> bool:
    return (ARM64_ENV / "COMPLETE").is_file() and shutil.which("qemu-aarch64") is not None


def _require_env() -> None:
    if not env_present():
        raise EdgecompError(f"the aarch64 emulation environment is not set up (no {ARM64_ENV}/COMPLETE)", SETUP_HINT)


def arm64_block(
    artifact: Path,
    feeds: dict[str, np.ndarray],
    x86_outputs: dict[str, np.ndarray],
    cpu: str = "cortex-a76",
    signature: str | None = None,
    runs: int = 2,
    timeout_s: float = 3600,
    reference_outputs: dict[str, np.ndarray] | None = None,
) -> dict:
    """The manifest's ``arm64`` block for one artifact (.onnx/.ort on onnxruntime, .tflite on LiteRT+XNNPACK).

    ``feeds`` are the inputs exactly as the artifact takes them; for a .tflite with one signature per
    sequence bucket (``seq16``, ``seq32``...), pass them padded to the bucket and either name the
    ``signature`` or let the guest pick the one whose input shapes equal the feeds' shapes.
    ``x86_outputs`` are the x86 outputs on the same feeds; outputs are paired by name, else by equal shape,
    and a guest output longer than its x86 counterpart (bucket padding) is cropped to the x86 shape.
    ``reference_outputs`` (PyTorch fp32 on the same feeds, optional) add each side's worst cosine against it.
    """
    if cpu not in EMULATED_CPUS:
        raise EdgecompError(f"emulated cpu {cpu!r} is not supported (the rootfs describes a Cortex-A76 to the runtimes)",
                            "use cortex-a76 (a phone big core) or neoverse-n1 (its server twin)")
    if runs < 1:
        raise EdgecompError(f"runs={runs}: need at least one counted run", "pass runs >= 1")
    _require_env()
    artifact = Path(artifact).resolve()
    if artifact.suffix not in (".onnx", ".ort", ".tflite"):
        raise EdgecompError(f"{artifact.name}: no aarch64 runtime for {artifact.suffix!r}", "pass an .onnx, .ort or .tflite file")
    if not artifact.is_file():
        raise EdgecompError(f"artifact {artifact} does not exist", "export it first with `edgecomp export`")
    root = ARM64_ENV / "rootfs"

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edgecomp-arm64-") as tmp_name:
        tmp = Path(tmp_name)
        # qemu -L looks every absolute path up in the rootfs first; /tmp/edgecomp-arm64-* exists only on
        # the host, so the guest reads and writes these files on the host.
        np.savez(tmp / "feeds.npz", **{k: np.asarray(v) for k, v in feeds.items()})
        (tmp / "maps").mkdir()
        cmd = [
            "qemu-aarch64", "-cpu", cpu, "-L", str(root),
            "-plugin", f"{ARM64_ENV / 'insn_count.so'},out={tmp / 'counts.txt'}",
            str(root / "usr/bin/python3"), "-P", str(GUEST_RUNNER),
            "--artifact", str(artifact), "--feeds", str(tmp / "feeds.npz"),
            "--outputs", str(tmp / "outputs.npz"), "--result", str(tmp / "result.json"),
            "--runs", str(runs), "--checkpoints", str(tmp / "maps"),
        ]
        if signature:
            cmd += ["--signature", signature]
        # the options the runners and the native probe load this format with (.ort: mapped model bytes; a
        # graph with edgecomp's own op: its custom-op library, here the aarch64 build)
        options = session_options(artifact)
        if artifact.suffix != ".tflite":  # LiteRT's weight cache is the guest runner's own default
            cmd += [f"--option={k}={v}" for k, v in options_for_machine(options, "aarch64").items()]
        env = {
            "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(tmp), "PYTHONPATH": GUEST_SITE,
            # one thread everywhere: counts are per core, and the plugin's counter is not atomic
            "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
        }
        rss = _run_with_checkpoints(cmd, env, tmp, timeout_s, artifact.name)
        with np.load(tmp / "outputs.npz") as z:
            arm_outputs = {k: z[k] for k in z.files}
        result = json.loads((tmp / "result.json").read_text())
        counts = _read_counts(tmp / "counts.txt")

    max_abs_diff, cos_min, _ = _compare(arm_outputs, x86_outputs, artifact.name)
    vs_reference = {}
    if reference_outputs is not None:  # both sides against the same fp32 outputs: which one is off
        arm_ref = _compare(arm_outputs, reference_outputs, artifact.name)
        x86_ref = _compare(x86_outputs, reference_outputs, artifact.name)
        vs_reference = {"cos_min_vs_reference": {"arm64": round(arm_ref[1], 6), "x86": round(x86_ref[1], 6)},
                        "cos_mean_vs_reference": {"arm64": round(arm_ref[2], 6), "x86": round(x86_ref[2], 6)}}
    per_run = [counts[i + 1] - counts[i] for i in range(runs)]
    peak_stage = max(rss, key=lambda s: rss[s][0])
    return {
        "max_abs_diff": max_abs_diff,
        "cos_min_vs_x86": round(cos_min, 6),
        **vs_reference,
        "instructions_per_inference": int(statistics.median(per_run)),
        "instructions_per_run": per_run,
        "instructions_load": counts[LABEL_LOADED] - counts[LABEL_START],
        "guest_peak_rss_mb": round(rss[peak_stage][0] / 1024, 1),
        "guest_rss_mb": {stage: round(g / 1024, 1) for stage, (g, _) in rss.items()},
        "qemu_process_rss_mb": round(rss[peak_stage][1] / 1024, 1),
        "emulated_cpu": cpu,
        "runtime": "litert" if artifact.suffix == ".tflite" else "onnxruntime",
        "signature": result["signature"],
        # what the guest's ONNX Runtime session was given (read back there); None for a .tflite
        "session_options": result.get("session_options"),
        **({"xnnpack_partitions": result["xnnpack_partitions"]} if artifact.suffix == ".tflite" else {}),
        "runtime_versions": {k: result["runtime_versions"][k] for k in ("onnxruntime", "ai_edge_litert", "python")},
        "emulated": True,
        "emulation_wall_s": round(time.monotonic() - started, 1),  # cost of this check, NOT device latency
    }


def _run_with_checkpoints(cmd, env, tmp: Path, timeout_s: float, name: str, measure=None) -> dict[str, tuple[int, int]]:
    """Run qemu; at each guest checkpoint (a SIGSTOP) measure guest and whole-process RSS, then SIGCONT.

    Returns {stage: (guest_rss_kb, qemu_process_rss_kb)}, or {stage: measure(pid, guest_maps_text)}.
    """
    log_path = tmp / "guest.log"
    rss: dict[str, tuple[int, int]] = {}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    # We reap the child ourselves (waitpid with WUNTRACED sees the stops), so Popen.wait is not used.
    while True:
        pid, status = os.waitpid(proc.pid, os.WUNTRACED | os.WNOHANG)
        if pid == 0:
            if time.monotonic() > deadline:
                proc.kill()
                os.waitpid(proc.pid, 0)
                proc.returncode = -9
                raise EdgecompError(f"{name} took over {timeout_s:.0f} s under qemu-aarch64", "use a smaller input or raise timeout_s")
            time.sleep(0.02)
            continue
        if os.WIFSTOPPED(status):
            for maps in sorted((tmp / "maps").glob("*.maps")):
                stage = maps.stem.split("-", 1)[1]
                if stage not in rss and measure is not None:
                    rss[stage] = measure(proc.pid, maps.read_text())
                elif stage not in rss:
                    smaps = Path(f"/proc/{proc.pid}/smaps").read_text()
                    rss[stage] = (guest_rss_kb(maps.read_text(), smaps), _total_rss_kb(proc.pid))
            os.kill(proc.pid, signal.SIGCONT)
            continue
        proc.returncode = os.waitstatus_to_exitcode(status)
        break
    if proc.returncode != 0 or len(rss) < 3:
        tail = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()][-1:] or ["no output"]
        raise EdgecompError(
            f"{name} failed under qemu-aarch64 (exit {proc.returncode}: {tail[0][:200]})",
            "check that the artifact runs on x86 first; if the environment is broken, re-run `bash scripts/setup_arm64.sh --force`",
        )
    return rss


def _parse_maps(text: str) -> list[tuple[int, int, int, str, dict]]:
    """(start, end, offset, path, fields) per mapping of a /proc maps or smaps text."""
    out: list[tuple[int, int, int, str, dict]] = []
    for line in text.splitlines():
        m = _MAP_LINE.match(line)
        if m:
            out.append((int(m[1], 16), int(m[2], 16), int(m[3], 16), m[4].strip(), {}))
        elif out and ":" in line:
            key, _, value = line.partition(":")
            out[-1][4][key] = value.strip()
    return out


def guest_rss_kb(guest_maps: str, host_smaps: str, field: str = "Rss") -> int:
    """Resident kB of the guest's own memory: host smaps Rss over the ranges the guest has mapped
    (``field="Anonymous"``: the anonymous part of it).

    Why this separates guest from emulator: qemu-user answers the guest's /proc/self/maps from its own
    table of guest pages, so it lists exactly the guest's mappings (its binary, libraries, heap, stack,
    mmaps) and none of qemu's: the TCG code cache (a large rwx anonymous mapping), qemu's host heap,
    and the host qemu binary and libraries (libc, glib, capstone), although all live in one host process.
    The guest sees the same mappings at ``host address - guest_base``; guest_base is 0 for this
    64-bit-on-64-bit setup, and is recovered anyway from file mappings that appear on both sides.
    Permissions are not compared: guest code is mapped r-- on the host (qemu runs translations of it).
    A host mapping only partly inside guest ranges (not observed) counts in proportion to the overlap.
    """
    guest = _parse_maps(guest_maps)
    host = _parse_maps(host_smaps)
    host_files = {(path, off): start for start, _, off, path, _ in host if path.startswith("/")}
    bases = Counter(
        host_files[(path, off)] - start for start, _, off, path, _ in guest if (path, off) in host_files
    )
    base = bases.most_common(1)[0][0] if bases else 0
    ranges = sorted((s + base, e + base) for s, e, _, _, _ in guest)
    total = 0.0
    for start, end, _, _, fields in host:
        kb = int(fields.get(field, "0 kB").split()[0])
        if not kb:
            continue
        overlap = sum(max(0, min(end, e) - max(start, s)) for s, e in ranges if s < end and e > start)
        total += kb * overlap / (end - start)
    return int(round(total))


def _total_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _read_counts(path: Path) -> dict[int, int]:
    if not path.is_file():
        raise EdgecompError("the qemu instruction-count plugin wrote no counts", "re-run `bash scripts/setup_arm64.sh --force`")
    counts = {}
    for line in path.read_text().split("\n"):
        label, _, value = line.partition(" ")
        if label.isdigit():
            counts[int(label)] = int(value)
    return counts


def _compare(arm: dict[str, np.ndarray], x86: dict[str, np.ndarray], name: str) -> tuple[float, float, float]:
    """(max abs diff, min cosine, mean cosine over output rows) between the aarch64 and x86 outputs.

    Both, because fp32 agrees to ~1e-6 but int8 does not agree elementwise: the fp32 kernels before a
    DynamicQuantizeLinear differ in the last bit between x86 and aarch64 (measured on MiniLM: LayerNorm
    by 2e-6), which moves the dynamic scale and flips single uint8 codes; the exact integer matmuls then
    carry the flip through the layers (max abs diff 0.27, per-token cosine >= 0.986, while both are equally
    close to fp32). Rows are vectors along the last axis (one per token for last_hidden_state).
    """
    pairs = [(arm[k], v) for k, v in x86.items() if k in arm]
    rest_arm = [v for k, v in arm.items() if k not in x86]
    for k, v in x86.items():
        if k in arm:
            continue
        same_shape = [a for a in rest_arm if a.shape == np.shape(v)]
        if len(same_shape) != 1:
            raise EdgecompError(f"{name}: cannot pair x86 output {k!r} with an aarch64 output ({sorted(arm)})",
                                "pass x86_outputs keyed by the artifact's output names")
        pairs.append((same_shape[0], v))
    if not pairs:
        raise EdgecompError(f"{name}: no x86 outputs to compare with", "pass the x86 outputs on the same feeds")
    diff, cos_min, cosines = 0.0, 1.0, []
    for a, x in pairs:
        x = np.asarray(x)
        if a.shape != x.shape and a.ndim == x.ndim and all(p >= q for p, q in zip(a.shape, x.shape)):
            a = a[tuple(slice(0, n) for n in x.shape)]  # bucket padding on the guest side
        if a.shape != x.shape:
            raise EdgecompError(f"{name}: aarch64 output shape {a.shape} differs from x86 {x.shape}",
                                "pass the x86 outputs computed on the same feeds")
        if not a.size:
            continue
        a64, x64 = a.astype(np.float64), x.astype(np.float64)
        diff = max(diff, float(np.max(np.abs(a64 - x64))))
        rows_a, rows_x = a64.reshape(-1, a.shape[-1] if a.ndim else 1), x64.reshape(-1, x.shape[-1] if x.ndim else 1)
        norms = np.linalg.norm(rows_a, axis=1) * np.linalg.norm(rows_x, axis=1)
        cos = np.where(norms > 0, (rows_a * rows_x).sum(1) / np.where(norms > 0, norms, 1), 1.0)
        cos_min = min(cos_min, float(cos.min()))
        cosines.append(cos)
    return diff, cos_min, float(np.concatenate(cosines).mean()) if cosines else 1.0
