"""Run one artifact inside the aarch64 guest (python3.11 under qemu-aarch64) and report what it cost.

Started by edgecomp.bench.arm64 as
    qemu-aarch64 -cpu cortex-a76 -L ROOT -plugin insn_count.so,out=COUNTS ROOT/usr/bin/python3 guest_runner.py ...
Only the guest's own numpy, onnxruntime and ai_edge_litert are importable here (not edgecomp), so this
file stands alone. Feeds come in and outputs go out as .npz files; a small JSON says what ran.

Sequence (each step leaves a marker for the instruction-count plugin, see insn_count.c):
    mark "start" -> load -> mark "loaded" -> [checkpoint loaded] -> first run (its outputs are the parity
    outputs) -> [checkpoint first-run] -> mark 0 -> run, mark 1 -> ... -> run, mark RUNS -> [checkpoint runs]
A checkpoint (with --checkpoints) writes the guest's view of /proc/self/maps (qemu shows only guest
mappings there) and stops the whole qemu process with SIGSTOP; the host then reads the host smaps of the
qemu process, keeps the guest's mappings and sends SIGCONT. Checkpoints sit outside the marked runs, so
their syscalls are not counted as inference.
"""

import argparse
import ctypes
import json
import os
import platform
import signal
from importlib.metadata import PackageNotFoundError, version

import numpy as np

AARCH64_SYS_GETPID = 172
MARK_MAGIC = 0x45444745434F4D  # must match insn_count.c
LABEL_START, LABEL_LOADED = 1_000_001, 1_000_002  # numeric labels 0..RUNS are the per-run marks

_libc = ctypes.CDLL(None, use_errno=True)


def mark(label: int) -> None:
    """getpid(MARK_MAGIC, label): a no-op for the guest, a count snapshot for the plugin."""
    _libc.syscall(ctypes.c_long(AARCH64_SYS_GETPID), ctypes.c_long(MARK_MAGIC), ctypes.c_long(label))


def checkpoint(maps_dir: str | None, seq: int, label: str) -> None:
    if not maps_dir:
        return
    path = os.path.join(maps_dir, f"{seq:02d}-{label}.maps")
    with open("/proc/self/maps") as f:
        text = f.read()
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)
    os.kill(os.getpid(), signal.SIGSTOP)  # the host measures, then sends SIGCONT


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


class OrtModel:
    def __init__(self, path: str):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1  # one core: deterministic counts, no racing threads in the plugin
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        types = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32}
        self.inputs = {i.name: types.get(i.type, np.int64) for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.signature = None

    def prepare(self, feeds):
        return {k: np.asarray(feeds[k], dtype=t) for k, t in self.inputs.items()}

    def run(self, feeds):
        return dict(zip(self.output_names, self.session.run(None, feeds)))


class LiteRtModel:
    """LiteRT's Interpreter applies its default XNNPACK delegate; signatures are chosen by name or by shape."""

    def __init__(self, path: str, signature: str | None, feeds):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=path, num_threads=1)
        signatures = self.interpreter.get_signature_list()
        if signature is None and signatures:
            signature = self._by_shape(signatures, feeds)
        if signature is None:
            raise SystemExit("the .tflite has no signatures; edgecomp's exporter writes one per sequence bucket")
        if signature not in signatures:
            raise SystemExit(f"signature {signature!r} not in {sorted(signatures)}")
        self.signature = signature
        self.runner = self.interpreter.get_signature_runner(signature)
        self.input_details = self.runner.get_input_details()

    def _by_shape(self, signatures, feeds):
        if len(signatures) == 1:
            return next(iter(signatures))
        for name in sorted(signatures):
            details = self.interpreter.get_signature_runner(name).get_input_details()
            if all(k in feeds and tuple(d["shape"]) == feeds[k].shape for k, d in details.items()):
                return name
        shapes = {k: v.shape for k, v in feeds.items()}
        raise SystemExit(f"no signature of {sorted(signatures)} takes feeds of shapes {shapes}")

    def prepare(self, feeds):
        return {k: np.asarray(feeds[k], dtype=d["dtype"]) for k, d in self.input_details.items()}

    def run(self, feeds):
        return {k: np.array(v) for k, v in self.runner(**feeds).items()}

    def xnnpack_partitions(self) -> int:
        """DELEGATE nodes in subgraph 0: one per partition XNNPACK took (0: it took nothing)."""
        return sum(op["op_name"] == "DELEGATE" for op in self.interpreter._get_ops_details())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifact", required=True)
    ap.add_argument("--feeds", required=True)
    ap.add_argument("--outputs", required=True)
    ap.add_argument("--result", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--signature")
    ap.add_argument("--checkpoints", help="directory for /proc/self/maps snapshots; the host must be watching")
    a = ap.parse_args()

    with np.load(a.feeds) as z:
        feeds = {k: z[k] for k in z.files}
    mark(LABEL_START)
    if a.artifact.endswith(".tflite"):
        model = LiteRtModel(a.artifact, a.signature, feeds)
    else:
        model = OrtModel(a.artifact)
    feeds = model.prepare(feeds)
    mark(LABEL_LOADED)
    checkpoint(a.checkpoints, 0, "loaded")
    outputs = model.run(feeds)  # first run: lazy init (arena growth, XNNPACK weight packing) lands here
    checkpoint(a.checkpoints, 1, "first-run")
    mark(0)
    for i in range(a.runs):
        model.run(feeds)
        mark(i + 1)
    checkpoint(a.checkpoints, 2, "runs")

    tmp = a.outputs + ".tmp.npz"
    np.savez(tmp, **outputs)
    os.rename(tmp, a.outputs)
    result = {
        "machine": platform.machine(),
        "signature": model.signature,
        "output_names": list(outputs),
        "xnnpack_partitions": model.xnnpack_partitions() if isinstance(model, LiteRtModel) else None,
        "runtime_versions": {
            "onnxruntime": _version("onnxruntime"),
            "ai_edge_litert": _version("ai-edge-litert"),
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }
    with open(a.result + ".tmp", "w") as f:
        json.dump(result, f)
    os.rename(a.result + ".tmp", a.result)


if __name__ == "__main__":
    main()
