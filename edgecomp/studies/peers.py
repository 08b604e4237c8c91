"""The peers of scripts/bench_peers.py: what a user does without edgecomp, built and run the same way
every time.

- optimum:      `optimum-cli export onnx` (fp32)
- optimum+ORT:  `optimum-cli onnxruntime quantize --avx512 --per_channel` (dynamic int8, per-channel)
- litert-torch: plain litert-torch conversion at [1, 128] with its dynamic int8 recipe (one fixed-shape
  signature, run through FixedTFLite)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from ..runtime import open_artifact

PEER_TFLITE_DIR = "litert-peer"


class FixedTFLite:
    """A single-signature [1, N] .tflite (the plain litert-torch output): pad every input to N."""

    def __init__(self, path: Path, threads: int):
        from ai_edge_litert.interpreter import Interpreter

        self.path = path
        self.interp = Interpreter(model_path=str(path), num_threads=threads)
        sig = self.interp.get_signature_list()
        self.key = next(iter(sig))
        self.runner = self.interp.get_signature_runner(self.key)
        details = self.runner.get_input_details()
        self.order = sorted(details)  # args_0, args_1, args_2 = input_ids, attention_mask, token_type_ids
        self.n = int(details[self.order[0]]["shape"][1])
        self.input_names = ["input_ids", "attention_mask", "token_type_ids"]

    def run(self, feeds):
        outs = []
        for i in range(feeds["input_ids"].shape[0]):
            row = []
            for name in self.input_names:
                x = np.zeros((1, self.n), dtype=np.int32)
                v = feeds[name][i : i + 1]
                x[:, : v.shape[1]] = v
                row.append(x)
            res = self.runner(**dict(zip(self.order, row)))
            outs.append(next(iter(res.values()))[:, : feeds["input_ids"].shape[1]])
        return {"last_hidden_state": np.concatenate(outs)}


def open_any(path: Path, threads: int):
    if path.suffix == ".tflite" and path.parent.name == PEER_TFLITE_DIR:
        return FixedTFLite(path, threads)
    return open_artifact(path, threads=threads)


def build_peers(src_dir: Path, work: Path, log) -> dict[str, Path]:
    peers = {}
    opt = work / "optimum-fp32"
    if not (opt / "model.onnx").exists():
        log("peer: optimum-cli export onnx")
        # --library-name: with sentence-transformers installed optimum would export its pipeline instead
        # (sentence_embedding, no token_type_ids), not the transformers graph every other candidate is
        subprocess.run(["optimum-cli", "export", "onnx", "--model", str(src_dir), "--task", "feature-extraction",
                        "--library-name", "transformers", str(opt)], check=True, capture_output=True)
    peers["optimum onnx fp32"] = opt / "model.onnx"
    q = work / "optimum-int8"
    if not (q / "model_quantized.onnx").exists():
        log("peer: optimum-cli onnxruntime quantize --avx512 --per_channel")
        subprocess.run(["optimum-cli", "onnxruntime", "quantize", "--onnx_model", str(opt), "--avx512", "--per_channel",
                        "-o", str(q)], check=True, capture_output=True)
    peers["optimum + ORT int8 per-channel"] = q / "model_quantized.onnx"
    lt = work / PEER_TFLITE_DIR / "model.tflite"
    if not lt.exists():
        log("peer: litert-torch [1,128] with its dynamic int8 recipe")
        lt.parent.mkdir(parents=True, exist_ok=True)
        code = f"""
import torch, litert_torch
from litert_torch.generative.quantize import quant_recipes, quant_attrs
from transformers import AutoModel
m = AutoModel.from_pretrained({str(src_dir)!r}).eval()
class W(torch.nn.Module):
    def __init__(s, m): super().__init__(); s.m = m
    def forward(s, a, b, c): return s.m(input_ids=a, attention_mask=b, token_type_ids=c).last_hidden_state
z = torch.zeros(1, 128, dtype=torch.long)
qc = quant_recipes.full_dynamic_recipe(weight_dtype=quant_attrs.Dtype.INT8, granularity=quant_attrs.Granularity.CHANNELWISE)
litert_torch.convert(W(m).eval(), (z + 101, z + 1, z), quant_config=qc).export({str(lt)!r})
"""
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    peers["litert-torch int8 dynamic"] = lt
    return peers
