"""Run one artifact inside the aarch64 guest (python3.11 under qemu-aarch64) and report what it cost.

Started by edgecomp.bench.arm64 as
    qemu-aarch64 -cpu cortex-a76 -L ROOT -plugin insn_count.so,out=COUNTS ROOT/usr/bin/python3 -P .../arm64_guest.py ...
by its host path (qemu -L falls through to the host for paths the rootfs lacks, so the installed package's
copy is read as is). Only the guest's own numpy, onnxruntime and ai_edge_litert are importable there (not
edgecomp), so this module imports nothing from the package; -P keeps its folder off sys.path, so no
sibling module shadows a library. The host imports it only for the marker labels. Feeds come in and
outputs go out as .npz files; a small JSON says what ran.

Sequence (each step leaves a marker for the instruction-count plugin, see insn_count.c):
    [.tflite: parse check] -> mark "start" -> load -> mark "loaded" -> [checkpoint loaded] -> first run
    (its outputs are the parity outputs) -> [checkpoint first-run] -> mark 0 -> run, mark 1 -> ... -> run,
    mark RUNS -> [checkpoint runs]
A checkpoint (with --checkpoints) writes the guest's view of /proc/self/maps (qemu shows only guest
mappings there) and stops the whole qemu process with SIGSTOP; the host then reads the host smaps of the
qemu process, keeps the guest's mappings and sends SIGCONT. Checkpoints sit outside the marked runs, so
their syscalls are not counted as inference. A .tflite's xnnpack_partitions are counted after all of it.
"""

import argparse
import ctypes
import json
import os
import platform
import signal
import sys
import traceback
from importlib.metadata import PackageNotFoundError, version

import numpy as np

AARCH64_SYS_GETPID = 172
MARK_MAGIC = 0x45444745434F4D  # must match insn_count.c
LABEL_START, LABEL_LOADED = 1_000_001, 1_000_002  # numeric labels 0..RUNS are the per-run marks
# XNNPACK's reserved weight-cache path for a memfd-backed cache, as in edgecomp/runtime/litert.py
IN_MEMORY_WEIGHT_CACHE = ":memory"

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


def apply_ort_options(so, options: dict) -> dict:
    """edgecomp.runtime.options.apply_ort_options for the guest (it has no edgecomp): the session options the
    artifact's manifest records, so the guest measures the artifact the way the x86 runner and probe load it.
    Returns what the session options hold afterwards (config entries read back from ORT)."""
    applied = {}
    for key, value in options.items():
        if key == "custom_ops":  # a custom-op library built for aarch64 (edgecomp's own: edgecomp/kernels)
            so.register_custom_ops_library(value)
            applied[key] = value
        elif key == "arena":
            so.enable_cpu_mem_arena = value != "0"
            applied[key] = "1" if so.enable_cpu_mem_arena else "0"
        elif key == "mem_pattern":
            so.enable_mem_pattern = value != "0"
            applied[key] = "1" if so.enable_mem_pattern else "0"
        elif "." in key:
            so.add_session_config_entry(key, value)
            applied[key] = so.get_session_config_entry(key)
    return applied


class OrtModel:
    def __init__(self, path: str, options: dict | None = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        self.session_options = apply_ort_options(so, options or {})
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
    """A .tflite loaded and run the way edgecomp's x86 runner (edgecomp/runtime/litert.py) does, so the
    guest measures the runtime path edgecomp ships: LiteRT's CompiledModel on XNNPACK with the in-memory
    weight cache (":memory"), which files each packed weight under the model buffer it came from, so the
    seq buckets share one packed copy. Measured on MiniLM int8 (4 buckets, seq128 feeds), guest peak RSS:
    Interpreter 104.6 MB, CompiledModel without the cache 112.6 MB, with it 82.0 MB; XNNPACK now packs at
    load (instructions_load 28 M -> 252 M), instructions per inference unchanged (197.7 M, +0.02%).
    The signature is chosen by name or by the feeds' shapes.
    """

    def __init__(self, path: str, signature: str | None, feeds):
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.environment import Environment
        from ai_edge_litert.options import CpuOptions, Options

        self.path = path
        # No vendor NPU plugins: point LiteRT at a folder with no plugin library (this one), as on x86.
        here = os.path.dirname(os.path.abspath(__file__))
        environment = Environment.create(compiler_plugin_path=here, dispatch_library_path=here)
        cpu = CpuOptions(num_threads=1, xnnpack_weight_cache_path=IN_MEMORY_WEIGHT_CACHE)
        self.model = CompiledModel.from_file(path, environment=environment, options=Options(cpu_options=cpu))
        signatures = self.model.get_signature_list()
        if signature is None and signatures:
            signature = self._by_shape(signatures, feeds)
        if signature is None:
            raise SystemExit("the .tflite has no signatures; edgecomp's exporter writes one per sequence bucket")
        if signature not in signatures:
            raise SystemExit(f"signature {signature!r} not in {sorted(signatures)}")
        self.signature = signature
        self.input_details = self.model.get_input_tensor_details(signature)
        self.output_details = self.model.get_output_tensor_details(signature)
        self.inputs = {k: self.model.create_input_buffer_by_name(signature, k) for k in self.input_details}
        self.outputs = {k: self.model.create_output_buffer_by_name(signature, k) for k in self.output_details}

    def _by_shape(self, signatures, feeds):
        if len(signatures) == 1:
            return next(iter(signatures))
        for name in sorted(signatures):
            details = self.model.get_input_tensor_details(name)
            if all(k in feeds and tuple(d["shape"]) == feeds[k].shape for k, d in details.items()):
                return name
        shapes = {k: v.shape for k, v in feeds.items()}
        raise SystemExit(f"no signature of {sorted(signatures)} takes feeds of shapes {shapes}")

    def prepare(self, feeds):
        return {k: np.ascontiguousarray(feeds[k], dtype=d["dtype"]) for k, d in self.input_details.items()}

    def run(self, feeds):
        # write, run, read: the same per-inference work as LiteRTRunner.run on x86
        for k, buf in self.inputs.items():
            buf.write(feeds[k])
        self.model.run_by_name(self.signature, self.inputs, self.outputs)
        out = {}
        for k, buf in self.outputs.items():
            shape, dtype = self.output_details[k]["shape"], np.dtype(self.output_details[k]["dtype"])
            out[k] = buf.read(int(np.prod(shape)), dtype).reshape(shape)
        return out

    def xnnpack_partitions(self) -> int:
        """DELEGATE nodes in subgraph 0 of an Interpreter with the default XNNPACK delegate: one per
        partition XNNPACK took (0: it took nothing), counted as edgecomp/bench/mobile.py counts them.

        CompiledModel lists no nodes, so this loads the file a second time; call it only after the last
        checkpoint, where its memory and instructions are outside everything measured (run before the
        load, it left 8.7 MB of freed heap resident: MiniLM int8 guest peak 90.6 MB instead of 81.9 MB).
        """
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=self.path, num_threads=1)
        interpreter.allocate_tensors()  # applies the default delegate
        return sum(op["op_name"] == "DELEGATE" for op in interpreter._get_ops_details())


def check_tflite_loads(path: str) -> None:
    """Exit with a message if LiteRT cannot parse the file, as edgecomp's x86 runner checks before loading.

    CompiledModel.from_file does not verify the flatbuffer (a truncated file segfaults the process); the
    Interpreter's loader does, without delegating or allocating anything. Run before the "start" mark: the
    check is edgecomp's guard, not part of what a device app spends loading the model.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    try:
        Interpreter(model_path=path, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    except Exception as e:
        raise SystemExit(f"LiteRT cannot load {os.path.basename(path)}: {_first_line(e)}") from None


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifact", required=True)
    ap.add_argument("--feeds", required=True)
    ap.add_argument("--outputs", required=True)
    ap.add_argument("--result", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--signature")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="an ONNX Runtime session option (edgecomp.runtime.options), repeatable")
    ap.add_argument("--checkpoints", help="directory for /proc/self/maps snapshots; the host must be watching")
    a = ap.parse_args()

    with np.load(a.feeds) as z:
        feeds = {k: z[k] for k in z.files}
    is_tflite = a.artifact.endswith(".tflite")
    if is_tflite:
        check_tflite_loads(a.artifact)
    mark(LABEL_START)
    if is_tflite:
        model = LiteRtModel(a.artifact, a.signature, feeds)
    else:
        model = OrtModel(a.artifact, dict(o.split("=", 1) for o in a.option))
    feeds = model.prepare(feeds)
    mark(LABEL_LOADED)
    checkpoint(a.checkpoints, 0, "loaded")
    outputs = model.run(feeds)  # first run: lazy init (ORT arena growth, LiteRT tensor buffers) lands here
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
        "session_options": getattr(model, "session_options", None),
        "output_names": list(outputs),
        # after the last checkpoint and mark: a second load that nothing measured may include
        "xnnpack_partitions": model.xnnpack_partitions() if is_tflite else None,
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


def run_main() -> None:
    """main(); on an error, print it and leave at once, so it stays the log's last line (the host quotes
    that line). Leaving normally would first free the error's frames, and LiteRT logs INFO lines from the
    destructors of the objects they hold."""
    try:
        main()
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            raise  # argparse (usage already printed) or a plain exit status
        print(e.code, file=sys.stderr)
        _leave(1)
    except BaseException:
        traceback.print_exc()
        _leave(1)


def _leave(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run_main()
