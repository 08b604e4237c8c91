"""Labelled sentence data for the classifier and its exit heads: ``text<TAB>label`` files (SST-2 layout).

One deterministic split is shared by every step so nothing is tuned on the rows it is judged on:
- calibration: held-aside *sentences* (>= ``MIN_WORDS`` words; SST-2 also holds short phrases, and
  real inputs are sentences, which exit later than phrases), chosen by a stable hash of the text;
- training pool: every other row (fine-tuning and exit-head training draw from it), *minus every row
  that is a contiguous piece of a held-aside sentence*. SST-2 labels every phrase of every parse tree,
  so 98.5% of the dev sentences contain a labelled training phrase, covering 75% of the sentence on
  average (measured): without this, heads trained for long memorise phrases and look far better on
  SST-2 than on other text. ``exclude`` sentences (e.g. an evaluation set) are decontaminated the same way.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import EdgecompError
from ..paths import shared_data_dir

MIN_WORDS = 10
CALIBRATION_FRACTION = 1 / 8  # of the sentences: ~2.8k rows of SST-2 train.tsv
DATA_ENV = "EDGECOMP_CLASSIFIER_DATA"


@dataclass(frozen=True)
class Labelled:
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx) -> "Labelled":
        return Labelled([self.texts[i] for i in idx], [self.labels[i] for i in idx])


def resolve_data_path(configured: str | os.PathLike | None, default_name: str = "sst2/train.tsv") -> Path:
    """The labelled TSV: an explicit path (model toml / CLI), else $EDGECOMP_CLASSIFIER_DATA, else the
    development copy under the shared data folder. A clear error when none exists."""
    if configured:
        p = Path(configured).expanduser()
        if not p.is_absolute():
            from ..paths import PROJECT_DIR

            p = PROJECT_DIR / p
    elif os.environ.get(DATA_ENV):
        p = Path(os.environ[DATA_ENV]).expanduser()
    else:
        p = shared_data_dir() / default_name
    if not p.is_file():
        raise EdgecompError(
            f"labelled training text {p} does not exist",
            f"pass a `sentence<TAB>label` file (SST-2 layout) with --exit-data or set ${DATA_ENV}",
        )
    return p


def read_labelled_tsv(path: Path) -> Labelled:
    texts, labels = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f):
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 2 or not parts[0].strip():
                continue
            try:
                label = int(parts[-1])
            except ValueError:
                if n == 0:  # header row
                    continue
                raise EdgecompError(f"{path}:{n + 1}: label {parts[-1]!r} is not an integer",
                                    "write one `sentence<TAB>label` row per line with integer labels") from None
            texts.append(parts[0].strip())
            labels.append(label)
    if len(texts) < 100:
        raise EdgecompError(f"{path} holds {len(texts)} labelled rows, too few to train exit heads",
                            "use a `sentence<TAB>label` file with at least a few thousand rows")
    return Labelled(texts, labels)


def is_sentence(text: str) -> bool:
    return len(text.split()) >= MIN_WORDS


def _stable_unit(text: str) -> float:
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big") / 2**64


def pieces(text: str) -> set[str]:
    """Every contiguous run of words of ``text`` (the phrases SST-2 may have labelled separately)."""
    w = text.split()
    return {" ".join(w[i:j]) for i in range(len(w)) for j in range(i + 1, len(w) + 1)}


def split(data: Labelled, exclude: list[str] | tuple[str, ...] = ()) -> tuple[Labelled, Labelled]:
    """(training pool, calibration sentences): a stable split by text hash, independent of row order;
    the pool holds no piece of a calibration sentence nor of an ``exclude`` text."""
    calib = [i for i, t in enumerate(data.texts) if is_sentence(t) and _stable_unit(t) < CALIBRATION_FRACTION]
    held = set()
    for t in [data.texts[i] for i in calib] + list(exclude):
        held |= pieces(t)
    calib_set = set(calib)
    pool = [i for i in range(len(data)) if i not in calib_set and data.texts[i] not in held]
    return data.subset(pool), data.subset(calib)


def read_exclusions(paths, relative_to: Path) -> list[str]:
    """Texts of the labelled files whose pieces must stay out of training (missing files are skipped:
    they only exist where that evaluation data does)."""
    texts = []
    for p in paths or ():
        q = Path(p) if Path(p).is_absolute() else relative_to / p
        if q.is_file():
            texts += read_labelled_tsv(q).texts
    return texts


def sentences(data: Labelled) -> Labelled:
    return data.subset([i for i, t in enumerate(data.texts) if is_sentence(t)])
