"""``python -m edgecomp.bench.probe [--kind KIND] PATH FEEDS.npz THREADS``: load, run, print peak RSS as JSON.

Runs in a fresh interpreter so nothing else (torch, the exporter) is in the process. Each kind loads and
runs one way and imports only what that way needs:
- ``artifact`` (default): an edgecomp artifact through edgecomp.runtime.open_artifact, one run on the feeds;
- ``causal-lm``: a KV-cache .onnx/.ort/.tflite through edgecomp.llm.generate, prefill + DECODE_STEPS steps;
- ``torch-causal-lm``: a transformers model folder (the PyTorch reference), the same greedy loop;
- ``llama.cpp``: a GGUF file through llama-cpp-python, the same greedy loop;
- ``fixed-tflite``: a single-signature .tflite with fixed shapes (plain litert-torch output), one run
  through edgecomp.studies.peers.FixedTFLite (feeds padded to its shape).
The causal-LM kinds take the prompt from the feeds' ``input_ids`` row 0.
"""

from __future__ import annotations

import argparse
import json
import resource
from typing import Callable

import numpy as np

from ..registry import Registry

DECODE_STEPS = 8

PROBES: Registry[Callable[[str, dict, int], None]] = Registry("memory probe")


@PROBES.register("artifact")
def _artifact(path: str, feeds: dict, threads: int) -> None:
    from edgecomp.runtime import open_artifact

    runner = open_artifact(path, threads=threads)
    runner.run({k: v for k, v in feeds.items() if k in runner.input_names})


@PROBES.register("causal-lm")
def _causal_lm(path: str, feeds: dict, threads: int) -> None:
    from edgecomp.llm.generate import open_causal_lm

    open_causal_lm(path, threads).greedy(_prompt(feeds), DECODE_STEPS + 1)


@PROBES.register("torch-causal-lm")
def _torch_causal_lm(path: str, feeds: dict, threads: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from edgecomp.llm.generate import torch_greedy

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()
    torch_greedy(model, _prompt(feeds), DECODE_STEPS + 1)


@PROBES.register("llama.cpp")
def _llama_cpp(path: str, feeds: dict, threads: int) -> None:
    from llama_cpp import Llama

    ids = _prompt(feeds)
    llm = Llama(model_path=path, n_ctx=max(256, 2 * len(ids)), n_threads=threads, logits_all=True, verbose=False)
    llm.eval(ids)
    for _ in range(DECODE_STEPS):
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])


@PROBES.register("fixed-tflite")
def _fixed_tflite(path: str, feeds: dict, threads: int) -> None:
    from edgecomp.studies.peers import FixedTFLite

    FixedTFLite(path, threads).run(feeds)


def _prompt(feeds: dict) -> list[int]:
    return [int(t) for t in np.asarray(feeds["input_ids"])[0]]


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m edgecomp.bench.probe")
    ap.add_argument("--kind", default="artifact", choices=PROBES.names())
    ap.add_argument("path")
    ap.add_argument("feeds", help=".npz of the inputs")
    ap.add_argument("threads", type=int)
    a = ap.parse_args()
    with np.load(a.feeds) as z:
        feeds = {k: z[k] for k in z.files}
    PROBES.get(a.kind)(a.path, feeds, a.threads)
    print(json.dumps({"peak_rss_mb": round(peak_rss_kib() / 1024, 1)}))


def peak_rss_kib() -> int:
    # VmHWM belongs to the address space created by exec, so it is this process's own peak. ru_maxrss
    # is not: Linux carries it over from the forked parent (here the exporter holding torch, ~1.3 GB).
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


if __name__ == "__main__":
    main()
