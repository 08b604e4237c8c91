"""The on-device side of an early-exit export: run stages in order, stop at the first confident exit.

``EarlyExitRunner(export_dir)`` reads ``early_exit.json`` (written by the export), opens one stage set
(ONNX, ORT format or TFLite), checks that every stage file is there and belongs to this export, and
classifies texts: ``{"label", "probs", "exit_layer", "latency_ms"}`` per text. A batch runs only the
stages that some text in it still needs: rows that exited are dropped, and so is padding no remaining
row uses. A stage's session is created when a text first reaches it, so loading costs what the texts
use: most sentences exit at stage 1, and a run whose texts all exit there never opens the others.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np

from ..errors import EdgecompError
from ..manifest import sha256
from ..runtime import open_artifact
from ..tasks.text_classification import softmax
from ..texts import batches, tokenize
from .names import SEQ_NAMES, carry

DESCRIPTOR = "early_exit.json"
EXPORT_ID_KEY = "edgecomp.early_exit.export_id"
_BUCKET = re.compile(r"^seq(\d+)$")


class TFLiteStageRunner:
    """A LiteRT stage with one fixed-shape ``seq<N>`` signature per bucket and batch 1: pads ids, mask
    and hidden states to the smallest bucket that fits (padding is masked out), crops ``hidden_state``."""

    def __init__(self, path: Path, threads: int | None = None):
        from ..runtime.litert import open_interpreter

        self.path = Path(path)
        self.interpreter = open_interpreter(self.path, threads, fix="re-run `edgecomp export --early-exit`")
        sigs = self.interpreter.get_signature_list()
        self._by_len = {int(m.group(1)): n for n in sigs if (m := _BUCKET.match(n))}
        if not self._by_len:
            raise EdgecompError(f"{self.path.name} has no seq<N> signatures", "re-run `edgecomp export --early-exit`")
        self.buckets = sorted(self._by_len)
        first = sigs[self._by_len[self.buckets[0]]]
        self.input_names, self.output_names = list(first["inputs"]), list(first["outputs"])
        self._runners = {}
        details = self._runner(self.buckets[0]).get_input_details()
        self._dtypes = {k: v["dtype"] for k, v in details.items()}

    def _runner(self, n):
        if n not in self._runners:
            self._runners[n] = self.interpreter.get_signature_runner(self._by_len[n])
        return self._runners[n]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows, length = feeds["attention_mask"].shape
        fits = [n for n in self.buckets if n >= length]
        if not fits:
            raise EdgecompError(f"{self.path.name} takes at most {self.buckets[-1]} tokens, got {length}",
                                f"truncate texts to {self.buckets[-1]} tokens")
        n = fits[0]
        runner = self._runner(n)
        parts = []
        for r in range(rows):
            one = {}
            for k in self.input_names:
                v = np.asarray(feeds[k][r : r + 1])
                if k in SEQ_NAMES:
                    pad = [(0, 0)] * v.ndim
                    pad[1] = (0, n - length)
                    v = np.pad(v, pad)
                one[k] = v.astype(self._dtypes[k])
            parts.append(runner(**one))
        out = {k: np.concatenate([p[k] for p in parts]) for k in self.output_names}
        if "hidden_state" in out:
            out["hidden_state"] = out["hidden_state"][:, :length]
        return out


def read_descriptor(export_dir: Path) -> dict:
    export_dir = Path(export_dir)
    p = export_dir / DESCRIPTOR
    if p.is_file():
        return json.loads(p.read_text())
    manifest = export_dir / "manifest.json"
    if manifest.is_file():
        block = json.loads(manifest.read_text()).get("early_exit")
        if block:
            return block
    raise EdgecompError(f"{export_dir} is not an early-exit export (no {DESCRIPTOR})",
                        "pass a folder written by `edgecomp export --early-exit`")


def _export_id_of(runner) -> str | None:
    session = getattr(runner, "session", None)
    if session is None:
        return None
    return session.get_modelmeta().custom_metadata_map.get(EXPORT_ID_KEY)


class EarlyExitRunner:
    """Stages open on first use (``lazy``, the default): a text that exits at stage 1 never pays for
    opening stages 2..L, and a run opens only the stages its texts reach. Every stage file is checked
    for presence and checksum up front, so a broken export is refused before any text runs; the export id
    inside a stage is checked when that stage opens. ``lazy=False`` opens every stage at once."""

    def __init__(self, export_dir: str | Path, stage_set: str | None = None, threads: int | None = 1,
                 tau: float | None = None, tokenizer=None, lazy: bool = True):
        self.export_dir = Path(export_dir)
        self.block = read_descriptor(self.export_dir)
        sets = self.block["stage_sets"]
        self.stage_set = self._pick_set(self.block, sets, stage_set)
        entries = sets[self.stage_set]["stages"]
        self.tau = float(self.block["tau"] if tau is None else tau)
        self.labels = self.block["label_names"]
        self.max_length = int(self.block.get("max_length", 128))
        self.threads = threads
        self.ios, self._paths = [], []
        for e in entries:
            p = self.export_dir / e["path"]
            if not p.is_file():
                raise EdgecompError(f"early-exit stage {e['index']} ({e['path']}) is missing from {self.export_dir}",
                                    "copy the whole export folder, or re-run `edgecomp export --early-exit`")
            if sha256(p) != e["sha256"]:
                raise EdgecompError(f"early-exit stage {e['index']} ({e['path']}) does not belong to this export "
                                    "(its checksum differs from early_exit.json)",
                                    "use the stage files written together with this early_exit.json, or re-export")
            self.ios.append((tuple(e["inputs"]), tuple(e["outputs"])))
            self._paths.append(p)
        self._opened: list = [None] * len(entries)
        self._tokenizer = tokenizer
        if not lazy:
            self.runners  # noqa: B018  (opens every stage)

    def stage(self, i: int):
        """The runner of stage ``i``, opened (and its export id checked) the first time it is asked for."""
        if self._opened[i] is None:
            p = self._paths[i]
            runner = TFLiteStageRunner(p, self.threads) if p.suffix == ".tflite" else open_artifact(p, self.threads)
            found = _export_id_of(runner)
            if found is not None and found != self.block["export_id"]:
                raise EdgecompError(f"early-exit stage {i} ({p.relative_to(self.export_dir)}) comes from another export "
                                    f"(export id {found[:8]}, expected {self.block['export_id'][:8]})",
                                    "use the stage files written together with this early_exit.json, or re-export")
            self._opened[i] = runner
        return self._opened[i]

    @property
    def opened_stages(self) -> list[int]:
        return [i for i, r in enumerate(self._opened) if r is not None]

    @property
    def runners(self) -> list:
        """Every stage's runner (opens those not open yet)."""
        return [self.stage(i) for i in range(len(self._opened))]

    @staticmethod
    def _pick_set(block: dict, sets: dict, wanted: str | None) -> str:
        if wanted is None:
            return primary if (primary := block.get("primary_stage_set")) in sets else next(iter(sets))
        if wanted in sets:
            return wanted
        by_format = [k for k, v in sets.items() if v["format"] == wanted]
        if by_format:
            return by_format[0]
        raise EdgecompError(f"this export has no early-exit stage set {wanted!r}",
                            f"use one of: {', '.join(sets)} (or a format: {', '.join(sorted({v['format'] for v in sets.values()}))})")

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.export_dir, local_files_only=True)
            except Exception:
                raise EdgecompError(f"{self.export_dir} has no tokenizer files",
                                    "pass a folder written by `edgecomp export` (it copies the tokenizer)") from None
        return self._tokenizer

    @property
    def n_layers(self) -> int:
        return len(self.ios)

    def classify(self, texts: list[str], batch_size: int = 32) -> list[dict]:
        out = []
        for chunk in batches(texts, batch_size):
            start = time.perf_counter()
            feeds = tokenize(self.tokenizer, chunk, max_length=self.max_length)
            out.extend(self.run_feeds(feeds, start))
        return out

    def run_feeds(self, feeds: dict[str, np.ndarray], start: float | None = None) -> list[dict]:
        """Exit-by-exit over one tokenized batch; ``latency_ms`` counts from ``start`` (default: now)."""
        start = time.perf_counter() if start is None else start
        n = len(feeds["attention_mask"])
        records: list[dict | None] = [None] * n
        active = np.arange(n)
        cur = dict(feeds)
        crop = getattr(self._tokenizer, "padding_side", "right") == "right"
        last = self.n_layers - 1
        for i, (inputs, _) in enumerate(self.ios):
            out = self.stage(i).run({k: cur[k] for k in inputs})
            probs = softmax(out["logits"].astype(np.float64))
            if i == last or self.tau <= 0:
                done = np.ones(len(active), bool)
            elif self.tau >= 1.0:
                done = np.zeros(len(active), bool)
            else:
                done = probs.max(-1) >= self.tau
            now = 1000 * (time.perf_counter() - start)
            for j in np.flatnonzero(done):
                p = probs[j]
                records[active[j]] = {"label": self.labels[int(p.argmax())], "probs": [round(float(x), 6) for x in p],
                                      "exit_layer": i + 1, "latency_ms": round(now, 4)}
            if done.all():
                break
            keep = ~done
            active = active[keep]
            cur = {"attention_mask": cur["attention_mask"][keep]}
            cur.update({k: v[keep] for k, v in carry(out).items()})
            if crop:  # padding only the rows that already left needed
                length = int(cur["attention_mask"].sum(1).max())
                cur["attention_mask"] = cur["attention_mask"][:, :length]
                cur["prev_hidden_state"] = cur["prev_hidden_state"][:, :length]
        return records


def run_early_exit(export_dir: str | Path, texts: list[str], stage_set: str | None = None, threads: int | None = 1,
                   batch_size: int = 32, tau: float | None = None) -> list[dict]:
    """What `edgecomp run OUT` does for an early-exit export: one record per text."""
    return EarlyExitRunner(export_dir, stage_set, threads, tau).classify(texts, batch_size)
