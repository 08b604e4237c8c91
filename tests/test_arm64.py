"""aarch64 checks under qemu (parity, instruction counts, guest memory) and the Android mobile checks.

Tests marked `arm64` need the environment from `bash scripts/setup_arm64.sh` and skip with that hint
without it; the rest (mobile usability, operator config, XNNPACK partitioning, guest-RSS accounting,
error messages) run everywhere. All use a tiny random-init BERT.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgecomp.bench import arm64
from edgecomp.bench.arm64 import SETUP_HINT, arm64_block, env_present, guest_rss_kb
from edgecomp.bench.mobile import ort_mobile_check, summarize_required_ops, tflite_xnnpack_partitioning
from edgecomp.errors import EdgecompError
from tiny import IO_NAMES, encoder_module, tiny_bert

NAMES = IO_NAMES
VOCAB = 1000

needs_env = pytest.mark.skipif(not env_present(), reason=f"no aarch64 environment: {SETUP_HINT}")


@pytest.fixture(scope="module")
def bert():
    return tiny_bert(vocab_size=VOCAB)


@pytest.fixture(scope="module")
def tiny_onnx(bert, tmp_path_factory):
    path = tmp_path_factory.mktemp("arm64") / "tiny.onnx"
    sample = tuple(torch.ones(1, 8, dtype=torch.long) for _ in NAMES)
    torch.onnx.export(encoder_module(bert), sample, str(path), input_names=NAMES, output_names=["last_hidden_state"],
                      dynamic_axes={n: {0: "batch", 1: "seq"} for n in NAMES}, opset_version=17, dynamo=False)
    return path


@pytest.fixture(scope="module")
def tiny_tflite(bert, tmp_path_factory):
    from edgecomp.lower.tflite import export_tflite

    path = tmp_path_factory.mktemp("arm64") / "tiny.tflite"
    export_tflite(encoder_module(bert), NAMES, ["last_hidden_state"], path, [8, 16], None)
    return path


def feeds(length: int, real: int | None = None, seed: int = 0, dtype=np.int64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.zeros((1, length), dtype)
    mask[:, : real or length] = 1
    return {"input_ids": (rng.integers(1, VOCAB, (1, length)) * mask).astype(dtype),
            "attention_mask": mask, "token_type_ids": np.zeros((1, length), dtype)}


def ort_x86(path, f):
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, f)))


# ---- under qemu ---------------------------------------------------------------------------------

@pytest.mark.arm64
@needs_env
def test_onnx_on_aarch64_matches_x86_and_counts_instructions(tiny_onnx):
    import onnxruntime

    f = feeds(16)
    block = arm64_block(tiny_onnx, f, ort_x86(tiny_onnx, f), runs=4)
    assert block["emulated"] is True and block["emulated_cpu"] == "cortex-a76"
    assert block["max_abs_diff"] < 1e-4  # fp32: the aarch64 kernels agree with x86
    assert block["runtime_versions"]["onnxruntime"] == onnxruntime.__version__
    assert block["runtime_versions"]["python"].startswith("3.11")
    per_run = block["instructions_per_run"]
    assert len(per_run) == 4 and block["instructions_per_inference"] > 0
    # N vs M runs: one run and the mean of four agree to a few percent (counts are near-deterministic)
    n1, m4 = per_run[0], sum(per_run) / 4
    assert abs(n1 - m4) / m4 < 0.05, per_run
    # guest memory is part of the qemu process, not all of it (the code cache and qemu itself are excluded)
    assert 0 < block["guest_peak_rss_mb"] < block["qemu_process_rss_mb"]
    assert block["guest_peak_rss_mb"] == max(block["guest_rss_mb"].values())


@pytest.mark.arm64
@needs_env
def test_ort_format_runs_in_the_guest_with_its_session_options(tiny_onnx, tmp_path):
    """The guest loads a .ort with the options the manifest records for it (mapped model bytes), as the x86
    runner and the native probe do, and still gives the x86 outputs."""
    from edgecomp.optimize.ort_format import to_ort_format
    from edgecomp.runtime.options import session_options

    ort_path, _ = to_ort_format(tiny_onnx, tmp_path)
    f = feeds(16)
    block = arm64_block(ort_path, f, ort_x86(tiny_onnx, f), runs=1)
    assert block["session_options"] == session_options(ort_path)
    assert block["session_options"]["session.use_ort_model_bytes_for_initializers"] == "1"
    assert block["max_abs_diff"] < 1e-4


@pytest.mark.arm64
@needs_env
def test_instructions_grow_with_sequence_length(tiny_onnx):
    short, long = feeds(8), feeds(64)
    a = arm64_block(tiny_onnx, short, ort_x86(tiny_onnx, short), runs=1)
    b = arm64_block(tiny_onnx, long, ort_x86(tiny_onnx, long), runs=1)
    assert b["instructions_per_inference"] > 2 * a["instructions_per_inference"]


@pytest.mark.arm64
@needs_env
def test_tflite_on_aarch64_with_xnnpack_picks_bucket_by_shape(tiny_tflite):
    from edgecomp.runtime import open_artifact

    f = feeds(16, real=11, dtype=np.int32)  # 11 real tokens, padded to the seq16 bucket
    x86 = open_artifact(tiny_tflite, threads=1).run({k: v[:, :11] for k, v in f.items()})  # cropped to 11
    block = arm64_block(tiny_tflite, f, x86, runs=2)
    assert block["signature"] == "seq16" and block["runtime"] == "litert"
    assert block["max_abs_diff"] < 1e-4
    assert block["xnnpack_partitions"] >= 1  # the default XNNPACK delegate ran on aarch64
    assert block["instructions_per_inference"] > 0
    assert block["runtime_versions"]["ai_edge_litert"]


# ---- everywhere ---------------------------------------------------------------------------------

def test_missing_environment_names_the_setup_script(tmp_path, tiny_onnx, monkeypatch):
    monkeypatch.setattr(arm64, "ARM64_ENV", tmp_path / "nothing")
    with pytest.raises(EdgecompError, match="setup_arm64.sh"):
        arm64_block(tiny_onnx, feeds(8), {})


def test_cpu_max_is_refused(tiny_onnx):
    with pytest.raises(EdgecompError, match="cortex-a76"):
        arm64_block(tiny_onnx, feeds(8), {}, cpu="max")


def test_routed_artifacts_are_held_to_the_mean_cosine_against_fp32():
    """An int8 artifact whose worst token differs across ISAs passes when aarch64 is no further from fp32 than
    x86 is: by the worst token for a dense graph, by the mean for one with expert routing (a gate score at the
    threshold flips a token's experts on either side, so which token is worst is chance)."""
    from edgecomp.bench.checks import parity_ok

    block = {"cos_min_vs_x86": 0.91, "cos_min_vs_reference": {"arm64": 0.905, "x86": 0.918},
             "cos_mean_vs_reference": {"arm64": 0.9857, "x86": 0.9850}}
    assert not parity_ok(block, "int8")
    assert parity_ok(block, "int8", routed=True)
    worse = {**block, "cos_mean_vs_reference": {"arm64": 0.970, "x86": 0.985}}
    assert not parity_ok(worse, "int8", routed=True)
    assert parity_ok({**worse, "cos_min_vs_x86": 0.99}, "int8", routed=True)  # close to x86: no reference needed


def test_guest_rss_counts_only_guest_mappings():
    # guest view (qemu's /proc/self/maps): binary, heap, one library; guest_base 0x1000000 on the host
    guest = "\n".join([
        "00400000-00500000 r-xp 00000000 fe:00 1   /root/rootfs/usr/bin/python3.11",
        "00600000-00700000 rw-p 00000000 00:00 0 ",
        "5500000000-5500100000 r-xp 00000000 fe:00 2   /root/rootfs/lib/libc.so.6",
    ])
    base = 0x1000000

    def host_entry(start, end, rss_kb, path=""):
        return f"{start:x}-{end:x} r--p 00000000 fe:00 9 {path}\nSize: 1 kB\nRss: {rss_kb} kB\nPss: 1 kB\n"

    smaps = "".join([
        host_entry(0x400000 + base, 0x500000 + base, 100, "/root/rootfs/usr/bin/python3.11"),
        host_entry(0x600000 + base, 0x700000 + base, 200),
        host_entry(0x5500000000 + base, 0x5500100000 + base, 300, "/root/rootfs/lib/libc.so.6"),
        host_entry(0x7F0000000000, 0x7F0040000000, 5000),                       # TCG code cache
        host_entry(0x55AA00000000, 0x55AA00100000, 700, "/usr/bin/qemu-aarch64"),  # qemu itself
        host_entry(0x55AB00000000, 0x55AB00800000, 900, "[heap]"),               # qemu's heap
    ])
    assert guest_rss_kb(guest, smaps) == 600


def test_ort_mobile_check_reports_nnapi_and_coreml_partitions(tiny_onnx):
    r = ort_mobile_check(tiny_onnx)
    assert set(r["eps"]) == {"nnapi", "coreml_neuralnetwork", "coreml_mlprogram"}
    assert r["dynamic_inputs"] == NAMES
    for ep in r["eps"].values():
        for variant in ("as_is", "fixed_shapes"):  # dynamic inputs: both variants are reported
            p = ep[variant]
            assert 0 <= p["nodes_on_accelerator"] <= p["nodes"] and p["nodes"] > 10
            assert len(p["partition_sizes"]) == p["partitions"]
            assert sum(p["partition_sizes"]) == p["nodes_on_accelerator"]
            assert p["suitability"] in ("YES", "MAYBE", "NO") and ep["ep"] in p["verdict"]
        # fixing the shapes can only let the accelerator take more nodes
        assert ep["fixed_shapes"]["nodes_on_accelerator"] >= ep["as_is"]["nodes_on_accelerator"]
    assert r["recommendation"]


def test_ort_mobile_check_rejects_a_corrupt_model(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(EdgecompError, match="bad.onnx"):
        ort_mobile_check(bad)


def test_required_ops_summary_of_the_ort_conversion(tiny_onnx, tmp_path):
    from edgecomp.optimize.ort_format import to_ort_format

    _, config = to_ort_format(tiny_onnx, tmp_path)
    s = summarize_required_ops(config)
    assert "ai.onnx:MatMul" in s["operators"] and "ai.onnx:Softmax" in s["operators"]
    assert s["n_operators"] == len(s["operators"]) == sum(len(ops) for d in s["by_domain"].values() for ops in d.values())
    assert s["type_reduction"] is False


def test_xnnpack_takes_most_of_the_tflite(tiny_tflite):
    r = tflite_xnnpack_partitioning(tiny_tflite)
    assert r["partitions"] >= 1
    assert r["nodes"] * 0.5 < r["nodes_on_xnnpack"] <= r["nodes"]
    assert "FULLY_CONNECTED" not in r["ops_left_on_cpu"]  # the matmuls run on XNNPACK
