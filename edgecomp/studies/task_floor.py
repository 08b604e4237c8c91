"""The task-floor compression study (scripts/study_task_floor.py): every combination of table, weight and
recovery methods measured by what a user of the embeddings feels, beside closeness to fp32.

Per combination: the android-style int4 ONNX artifact's bytes (and breakdown), STS Benchmark Spearman on the
dev pairs against the PyTorch fp32 model's, the SST-2 probe (the fp32 model's logistic regression applied
to the artifact's embeddings, i.e. drop-in) against fp32, and embedding cosine on held-out SST-2 sentences.
Tuning data never overlaps what is reported: calibration / distillation text are SST-2 train sentences; the
token ranking corpus (``corpus``) is WikiText-2 valid + SST-2 train + STS *train* sentences; STS is scored
on dev, the probe on SST-2 dev.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..bench.size import COMPONENTS, onnx_size_breakdown
from .encoder_artifacts import lower_encoder, quantized, train_view
from .sst2_embeddings import embed_artifact, embed_torch, fit_probe, probe_accuracy, study_texts, cos_stats
from .sts import read_sts, sts_spearman


@dataclass
class Combo:
    steps: list
    quantization: dict  # the ONNX artifact's scheme (edgecomp.quant table)
    group: str
    note: str = ""
    trains_for: dict | None = None  # a quant-aware distill step's scheme (default: quantization)


def int4(block=32, **kw) -> dict:
    return {"weights": {"bits": 4, "block": block, **kw}}


def ranked(frequent: int, rare: str = "int2", rare_block: int = 32, corpus: bool | str = True, method: str = "freq-table",
           trim_to: int | None = None) -> dict:
    step = {"method": method, "frequent": frequent, "rare": rare}
    if rare == "int2":
        step["rare_block"] = rare_block
    if trim_to is not None:
        step["trim_to"] = trim_to
    if isinstance(corpus, str):
        step["corpus"] = corpus  # e.g. "wordfreq:en"
    elif corpus:
        step["corpus"] = "{corpus}"  # filled in with the study's ranking corpus
    return step


DISTILL = {"method": "distill", "quant_aware": True, "steps": 100, "lr": 1e-4}
DROP1 = {"method": "drop-layers", "count": 1}
INT8 = {"weights": {"bits": 8}, "activations": "dynamic-per-tensor"}

COMBOS: dict[str, Combo] = {
    "int8": Combo([], INT8, "baseline", "ORT int8 per channel (the targets' default)"),
    "rtn-b32": Combo([], int4(32), "weights", "int4 round to nearest (the `int4` recipe)"),
    "gptq-b32": Combo([], int4(32, algorithm="gptq"), "weights"),
    "hqq-b32": Combo([], int4(32, algorithm="hqq"), "weights"),
    "kquant-b32": Combo([], int4(32, algorithm="k-quant"), "weights"),
    "rtn-b128": Combo([], int4(128), "weights"),
    "gptq-b128": Combo([], int4(128, algorithm="gptq"), "weights"),
    "hqq-b128": Combo([], int4(128, algorithm="hqq"), "weights"),
    "rtn-b32+ffn-rtn2": Combo([], {**int4(32), "ffn": {"bits": 2, "block": 32}}, "mixed", "2-bit FFN, 4-bit attention"),
    "rtn-b32+ffn-hqq2": Combo([], {**int4(32), "ffn": {"bits": 2, "block": 32, "algorithm": "hqq"}}, "mixed"),
    # --- the table: uniform 2-bit vs frequency-aware at fewer bytes, and trimmed
    "uniform2-table": Combo([ranked(5, corpus=False)], int4(32), "table", "every row 2-bit (b32) but the special tokens"),
    "freq4096-int2b64": Combo([ranked(4096, rare_block=64)], int4(32), "table", "4096 rows 4-bit, the rest 2-bit b64"),
    "freq8192-int2b32": Combo([ranked(8192)], int4(32), "table"),
    "trim8192-nearest": Combo([ranked(8192, "nearest", method="vocab-trim")], int4(32), "table"),
    "trim8192-unk": Combo([ranked(8192, "unk", method="vocab-trim")], int4(32), "table"),
    "svd-table-l96": Combo([{"method": "svd-embedding", "latent_dim": 96}], int4(32), "table", "uniform low rank"),
    "ae-table-l96": Combo([{"method": "ae-embedding", "latent_dim": 96}], int4(32), "table",
                          "direction-loss autoencoder, same latent width as svd-table-l96"),
    # --- the 8 MB candidates
    "trim8192+rtn-b128": Combo([ranked(8192, "nearest", method="vocab-trim")], int4(128), "8MB"),
    "trim6144+rtn-b64": Combo([ranked(6144, "nearest", method="vocab-trim")], int4(64), "8MB"),
    "trim8192+rtn-b64": Combo([ranked(8192, "nearest", method="vocab-trim")], int4(64), "8MB"),
    "trim8192+gptq-b128": Combo([ranked(8192, "nearest", method="vocab-trim")], int4(128, algorithm="gptq"), "8MB"),
    "trim6144+gptq-b64": Combo([ranked(6144, "nearest", method="vocab-trim")], int4(64, algorithm="gptq"), "8MB"),
    "trim8192-builtin+gptq-b128": Combo([ranked(8192, "nearest", corpus=False, method="vocab-trim")],
                                        int4(128, algorithm="gptq"), "8MB", "ranked on the built-in sentences only"),
    "freq4096+ffn-hqq2": Combo([ranked(4096, rare_block=64)], {**int4(32), "ffn": {"bits": 2, "block": 32, "algorithm": "hqq"}},
                               "8MB"),
    # three tiers (freq-table trim_to): a few rows at 4 bits, the next ones at 2 bits, the rest read their nearest
    "tier5-8192b64+rtn-b32": Combo([ranked(5, rare_block=64, trim_to=8192)], int4(32), "8MB",
                                   "special tokens 4-bit, the 8192 most frequent rows 2-bit (b64), the rest nearest"),
    "tier5-8192b64+rtn-b64": Combo([ranked(5, rare_block=64, trim_to=8192)], int4(64), "8MB"),
    "tier512-8192b64+rtn-b64": Combo([ranked(512, rare_block=64, trim_to=8192)], int4(64), "8MB"),
    "trim8192-wordfreq+rtn-b128": Combo([ranked(8192, "nearest", corpus="wordfreq:en", method="vocab-trim")], int4(128), "8MB",
                                        "rows ranked by English word frequencies (wordfreq), no corpus of the domain"),
    "tier5-8192b64-wordfreq+rtn-b32": Combo([ranked(5, rare_block=64, trim_to=8192, corpus="wordfreq:en")], int4(32), "8MB"),
    "tier5-7168b64+rtn-b32": Combo([ranked(5, rare_block=64, trim_to=7168)], int4(32), "8MB"),
    "tier5-8192b128+rtn-b32": Combo([ranked(5, rare_block=128, trim_to=8192)], int4(32), "8MB"),
    # --- with int4-aware distillation (trains for RTN blocks: GPTQ's choices are not what it simulates)
    "small": Combo([DISTILL], int4(32), "recovery", "the `small` recipe"),
    "trim8192+distill+rtn-b128": Combo([ranked(8192, "nearest", method="vocab-trim"), DISTILL], int4(128), "recovery"),
    "trim8192+distill+rtn-b64": Combo([ranked(8192, "nearest", method="vocab-trim"), DISTILL], int4(64), "recovery"),
    "tier5-7168b64+distill+rtn-b32": Combo([ranked(5, rare_block=64, trim_to=7168), DISTILL], int4(32), "recovery"),
    # depth: one of six blocks removed (the one whose removal moves the output least), then recovered
    "drop1+distill+rtn-b32": Combo([DROP1, DISTILL], int4(32), "depth", "drop-layers count 1 + int4-aware distillation"),
    "drop1+trim8192+distill+rtn-b32": Combo([DROP1, ranked(8192, "nearest", method="vocab-trim"), DISTILL], int4(32), "depth"),
    "drop1+trim8192+distill+rtn-b64": Combo([DROP1, ranked(8192, "nearest", method="vocab-trim"), DISTILL], int4(64), "depth"),
    "drop1+trim10240+distill+rtn-b64": Combo([DROP1, ranked(10240, "nearest", method="vocab-trim"), DISTILL], int4(64), "depth"),
    "drop1+trim10240-wordfreq+distill+rtn-b64": Combo([DROP1, ranked(10240, "nearest", corpus="wordfreq:en", method="vocab-trim"),
                                                        DISTILL], int4(64), "depth",
                                                       "as drop1+trim10240+distill+rtn-b64, rows ranked by wordfreq:en"),
    "trim8192+ffn-hqq2+distill": Combo([ranked(8192, "nearest", method="vocab-trim"), DISTILL],
                                       {**int4(32), "ffn": {"bits": 2, "block": 32, "algorithm": "hqq"}}, "mixed",
                                       "2-bit HQQ feed-forward, int4 b32 attention, 4-bit trimmed table",
                                       trains_for=int4(32)),
}
QUICK = ["int8", "rtn-b32", "gptq-b32", "rtn-b128", "gptq-b128", "hqq-b128", "rtn-b32+ffn-hqq2", "uniform2-table",
         "freq4096-int2b64", "trim8192-nearest", "trim8192+gptq-b128", "trim8192-builtin+gptq-b128"]
PEERS = {"ORT int8 (optimum)": 23.0e6, "LiteRT int8": 23.5e6}
CALIBRATION_TEXTS = 512  # SST-2 train sentences the data-aware steps (distillation, GPTQ) run on
SMALL_BYTES = 14.3e6  # the `small` recipe's model.onnx (README)


def calibration_file(path: Path, quick: bool = True) -> Path:
    """The study's calibration sentences (SST-2 train, the seeded split), one per line, for an export's --texts."""
    from ..manifest import write_text_atomic

    write_text_atomic(path, "\n".join(study_texts(quick).calibration[:CALIBRATION_TEXTS]) + "\n")
    return path


def ranking_corpus(path: Path) -> Path:
    """WikiText-2 valid (detokenized) + SST-2 train + STS train sentences, one per line."""
    from ..early_exit.data import read_labelled_tsv
    from ..paths import shared_data_dir
    from .wikitext import detokenize_wikitext, wikitext_valid

    wiki = [ln.strip() for ln in detokenize_wikitext(wikitext_valid().read_text(encoding="utf-8")).splitlines()]
    sst = read_labelled_tsv(shared_data_dir() / "sst2" / "train.tsv").texts
    sts = read_sts("train").sentences
    path.write_text("\n".join(t for t in [*wiki, *sst, *sts] if t and t.strip()) + "\n", encoding="utf-8")
    return path


def fill(steps: list, corpus: Path) -> list:
    return [{k: (str(corpus) if v == "{corpus}" else v) for k, v in s.items()} for s in steps]


@dataclass
class Protocol:
    tokenizer: object
    base: object
    texts: object
    sts: object
    corpus: Path
    reference: dict = field(default_factory=dict)
    probe: object = None

    def embeds(self, embed) -> dict:
        ytr = np.array([y for _, y in self.texts.probe_train])
        ydv = np.array([y for _, y in self.texts.probe_dev])
        held = embed(self.texts.held)
        out = {"sts_spearman": sts_spearman(embed, self.sts)}
        dv = embed([s for s, _ in self.texts.probe_dev])
        if self.probe is None:  # the reference: fit the drop-in probe on fp32 train embeddings
            self.probe = fit_probe(embed([s for s, _ in self.texts.probe_train]), ytr)
            self.reference["held"] = held
        out["sst2_probe"] = probe_accuracy(self.probe, dv, ydv)
        out.update(cos_stats(self.reference["held"], held))
        return out


def subset(pairs, n: int | None, seed: int = 0):
    """A fixed random ``n`` of the pairs (paired drops on the same pairs; the full set for the final check)."""
    if not n or n >= len(pairs.scores):
        return pairs
    idx = np.sort(np.random.default_rng(seed).permutation(len(pairs.scores))[:n])
    return type(pairs)([pairs.first[i] for i in idx], [pairs.second[i] for i in idx], pairs.scores[idx])


def setup(work: Path, quick: bool, sts_pairs: int | None = None):
    import torch
    from transformers import AutoModel, AutoTokenizer

    from ..models import model_dir, resolve_model

    mdir = model_dir(resolve_model("all-minilm-l6-v2"))
    tok = AutoTokenizer.from_pretrained(mdir, local_files_only=True)
    base = AutoModel.from_pretrained(mdir, local_files_only=True, torch_dtype=torch.float32).eval()
    texts = study_texts(quick)
    texts.calibration = texts.calibration[:CALIBRATION_TEXTS]
    proto = Protocol(tok, base, texts, subset(read_sts("dev"), sts_pairs), ranking_corpus(work / "ranking-corpus.txt"))
    proto.reference.update(proto.embeds(lambda t: embed_torch(base, tok, t)))
    return proto


def measure_combo(name: str, combo: Combo, proto: Protocol, work: Path, threads: int) -> dict:
    from ..compress import Calibration, compress_model
    from ..runtime import open_artifact
    from ..texts import batches, tokenize

    t0 = time.perf_counter()
    model = copy.deepcopy(proto.base)
    steps = fill(combo.steps, proto.corpus)
    calibration = Calibration(proto.tokenizer, proto.texts.calibration, max_length=128, batch_size=16)
    quant = train_view(combo.trains_for or combo.quantization) if any(s.get("quant_aware") for s in steps) else None
    report = compress_model(model, steps, calibration, quant=quant)
    fp32 = lower_encoder(model, work / f"{name}.onnx", target="android")
    feeds = lambda: [tokenize(proto.tokenizer, b, 128, ("input_ids", "attention_mask", "token_type_ids"))  # noqa: E731
                     for b in batches(proto.texts.calibration[:128], 8)]
    art = quantized(fp32, work / f"{name}.q.onnx", combo.quantization, calibration=feeds, model=model)
    runner = open_artifact(art, threads=threads)
    got = proto.embeds(lambda t: embed_artifact(runner, proto.tokenizer, t))
    breakdown = onnx_size_breakdown(art, model)
    row = {"group": combo.group, "note": combo.note, "steps": steps, "quantization": combo.quantization,
           "size_bytes": os.path.getsize(art), "size_breakdown": {k: breakdown[k] for k in COMPONENTS}, **got,
           "sts_drop": round(proto.reference["sts_spearman"] - got["sts_spearman"], 2),
           "sst2_drop": round(proto.reference["sst2_probe"] - got["sst2_probe"], 2),
           "compression": [{k: s.get(k) for k in ("method", "details", "fidelity")} for s in report["steps"]],
           "seconds": round(time.perf_counter() - t0, 1)}
    for p in (fp32, art):
        p.unlink(missing_ok=True)
    return row


def measure_artifact(path: Path, proto: Protocol, threads: int, note: str) -> dict:
    """An exported artifact (e.g. `edgecomp export ... --recipe tiny`), measured as the combinations are."""
    from ..runtime import open_artifact

    runner = open_artifact(Path(path), threads=threads)
    got = proto.embeds(lambda t: embed_artifact(runner, proto.tokenizer, t))
    return {"group": "recipe", "note": note, "steps": [], "quantization": {}, "size_bytes": os.path.getsize(path),
            "size_breakdown": {k: v for k, v in onnx_size_breakdown(Path(path)).items() if k in COMPONENTS}
            if Path(path).suffix == ".onnx" else {k: 0 for k in COMPONENTS}, **got,
            "sts_drop": round(proto.reference["sts_spearman"] - got["sts_spearman"], 2),
            "sst2_drop": round(proto.reference["sst2_probe"] - got["sst2_probe"], 2)}


def frontier(configs: dict) -> list[str]:
    """Names not dominated by a smaller artifact with a smaller STS drop."""
    out, best = [], float("inf")
    for n, r in sorted(configs.items(), key=lambda kv: kv[1]["size_bytes"]):
        if r["sts_drop"] < best:
            out.append(n)
            best = r["sts_drop"]
    return out


def claims(c: dict) -> list[dict]:
    out = []

    def cmp(title, a, b, equal):
        if a in c and b in c:
            out.append({"claim": title, "a": a, "b": b, "mb_a": c[a]["size_bytes"] / 1e6, "mb_b": c[b]["size_bytes"] / 1e6,
                        "sts_drop_a": c[a]["sts_drop"], "sts_drop_b": c[b]["sts_drop"], "equal": equal,
                        "held": c[a]["sts_drop"] < c[b]["sts_drop"]})

    cmp("GPTQ beats RTN at equal bits (int4, blocks of 32)", "gptq-b32", "rtn-b32", "bytes")
    cmp("GPTQ beats RTN at equal bits (int4, blocks of 128)", "gptq-b128", "rtn-b128", "bytes")
    cmp("HQQ beats RTN at equal bits (int4, blocks of 128)", "hqq-b128", "rtn-b128", "bits (HQQ adds zero points)")
    cmp("HQQ beats RTN at 2-bit FFN", "rtn-b32+ffn-hqq2", "rtn-b32+ffn-rtn2", "bytes")
    cmp("frequency-aware table beats a uniform 2-bit table at fewer bytes", "freq4096-int2b64", "uniform2-table", "fewer bytes for a")
    cmp("frequency-aware table beats a uniform low-rank (SVD) table", "freq4096-int2b64", "svd-table-l96", "sizes in the table")
    cmp("nearest kept token beats [UNK] for trimmed tokens", "trim8192-nearest", "trim8192-unk", "bytes")
    cmp("direction-loss autoencoder table beats SVD at the same latent width", "ae-table-l96", "svd-table-l96", "bytes")
    cmp("three table tiers beat a trimmed 4-bit table at fewer bytes", "tier5-8192b64+rtn-b32", "trim8192-nearest", "fewer bytes for a")
    cmp("int4-aware distillation recovers the 8 MB point", "trim8192+distill+rtn-b128", "trim8192+rtn-b128", "bytes")
    return out


def markdown(res: dict) -> str:
    ref = res["reference"]
    c = res["configs"]
    front = set(frontier(c))
    lines = ["# Compression study with the task floor: all-MiniLM-L6-v2", "",
             f"PyTorch fp32 reference: STS-B dev Spearman {ref['sts_spearman']:.2f} ({res['texts']['sts_pairs']} pairs), "
             f"SST-2 drop-in probe {ref['sst2_probe']:.2f}% ({res['texts']['probe_dev']} dev / {res['texts']['probe_train']} "
             f"train phrases). Drops are in points against it (positive = worse); cosine is vs fp32 on "
             f"{res['texts']['held_out']} held-out SST-2 sentences. Artifacts: the int4 (or int8) ONNX graph as "
             "`edgecomp export --target android` quantizes it (the .ort is the same graph). Ranking corpus of the "
             "table methods: WikiText-2 valid + SST-2 train + STS train (never STS dev). `*` = on the size/STS frontier.", "",
             "| combination | group | MB | table / attn / FFN MB | STS | STS drop | SST-2 | SST-2 drop | cos mean / min |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n, r in sorted(c.items(), key=lambda kv: kv[1]["size_bytes"]):
        b = r["size_breakdown"]
        # a .ort (flatbuffer) has no ONNX breakdown: its graph is the .onnx's
        parts = " / ".join(f"{b[k] / 1e6:.2f}" for k in ("token_embeddings", "attention", "feed_forward")) if any(b.values()) else "—"
        lines.append(f"| {n}{' *' if n in front else ''} | {r['group']} | {r['size_bytes'] / 1e6:.2f} | {parts} | "
                     f"{r['sts_spearman']:.2f} | {r['sts_drop']:+.2f} | {r['sst2_probe']:.2f} | {r['sst2_drop']:+.2f} | "
                     f"{r['cos_mean']:.4f} / {r['cos_min']:.4f} |")
    for n, e in res.get("errors", {}).items():
        lines.append(f"| {n} | failed: {e} |" + " |" * 7)
    lines += ["", "## Claims", "", "| claim | a | b | MB a / b | STS drop a / b | compared at | held? |", "|---|---|---|---|---|---|---|"]
    for x in res["claims"]:
        lines.append(f"| {x['claim']} | {x['a']} | {x['b']} | {x['mb_a']:.2f} / {x['mb_b']:.2f} | "
                     f"{x['sts_drop_a']:+.2f} / {x['sts_drop_b']:+.2f} | {x['equal']} | {'yes' if x['held'] else 'no'} |")
    full = res.get("full_sts_dev")
    if full:
        lines += ["", "## The same artifacts on all 1500 STS dev pairs", "", full["note"], "",
                  f"fp32 reference: STS {full['reference']['sts_spearman']:.2f}, SST-2 probe {full['reference']['sst2_probe']:.2f}.", "",
                  "| combination | MB | STS drop | SST-2 drop | cos mean |", "|---|---|---|---|---|"]
        for n, r in full["configs"].items():
            lines.append(f"| {n} | {r['size_bytes'] / 1e6:.2f} | {r['sts_drop']:+.2f} | {r['sst2_drop']:+.2f} | {r['cos_mean']:.4f} |")
    lines += ["", "## Notes", "", "- Combinations: " + "; ".join(f"`{n}`: {r['note']}" for n, r in c.items() if r["note"]),
              f"- Commands: {res['command']}"]
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = res["configs"]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    groups = sorted({r["group"] for r in c.values()})
    cmap = plt.get_cmap("tab10")
    for gi, g in enumerate(groups):
        pts = [(r["size_bytes"] / 1e6, r["sts_drop"], n) for n, r in c.items() if r["group"] == g]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=cmap(gi), label=g, s=28)
        for x, y, n in pts:
            ax.annotate(n, (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
    for label, size in PEERS.items():
        ax.axvline(size / 1e6, color="grey", ls=":", lw=1)
        ax.text(size / 1e6, 0, f" {label}", rotation=90, fontsize=7, va="bottom", color="grey")
    if "small" not in c:  # its bytes are rtn-b32's (the distillation changes values, not sizes)
        ax.axvline(SMALL_BYTES / 1e6, color="black", ls=":", lw=1)
        ax.text(SMALL_BYTES / 1e6, 0, " `small` (14.3 MB; its task drop not re-measured here)", rotation=90, fontsize=7, va="bottom")
    else:
        ax.scatter([c["small"]["size_bytes"] / 1e6], [c["small"]["sts_drop"]], marker="*", s=160, color="black", label="`small` recipe")
    ax.axhline(1.0, color="red", ls="--", lw=1, label="floor: 1 STS point")
    ax.axvline(8.0, color="red", ls=":", lw=1, label="8 MB")
    ax.set_xlabel("artifact MB")
    ax.set_ylabel("STS-B dev Spearman drop vs fp32 (points)")
    ax.set_title("all-MiniLM-L6-v2: size vs task drop")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def result(proto: Protocol, configs: dict, errors: dict, command: str, quick: bool) -> dict:
    ref = {k: proto.reference[k] for k in ("sts_spearman", "sst2_probe")}
    res = {"model": "all-MiniLM-L6-v2", "quick": quick, "reference": ref, "configs": configs, "errors": errors,
           "texts": {"sts_pairs": len(proto.sts.scores), "probe_train": len(proto.texts.probe_train),
                     "probe_dev": len(proto.texts.probe_dev), "held_out": len(proto.texts.held),
                     "calibration": len(proto.texts.calibration)},
           "peers_bytes": PEERS, "command": command}
    res["claims"] = claims(configs)
    res["frontier"] = frontier(configs)
    return res


def dumps(res: dict) -> str:
    return json.dumps(res, indent=1, default=str)
