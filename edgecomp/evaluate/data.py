"""Task evaluation data: readers for the files a user gives and the small built-in sets (edgecomp/data/eval/).

Every reader returns plain Python lists and raises EdgecompError naming the file and line on bad input.
The built-in sets were written for the project; they make `edgecomp eval` work with no data, and are too
small for a figure anyone should quote (pass --data for that).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import EdgecompError
from ..paths import DATA_DIR
from ..texts import read_lines, read_texts

BUILTIN_DIR = DATA_DIR / "eval"
# builtin:NAME -> the file(s) it names in edgecomp/data/eval/
BUILTIN = {
    "sts-pairs": "sts-pairs.tsv",
    "sentiment": "sentiment.tsv",
    "text": "text.txt",
    "retrieval": "retrieval",  # retrieval-{queries,corpus,qrels}.tsv
}


@dataclass(frozen=True)
class StsPairs:
    sentence1: list[str]
    sentence2: list[str]
    scores: list[float]

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class Labelled:
    texts: list[str]
    labels: list[str]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class RetrievalSet:
    queries: dict[str, str]  # id -> text
    corpus: dict[str, str]  # id -> text
    qrels: dict[str, set[str]]  # query id -> relevant doc ids

    def __len__(self) -> int:
        return len(self.qrels)


def builtin_path(name: str) -> Path:
    return BUILTIN_DIR / BUILTIN[name]


def _rows(path: Path, what: str, layout: str) -> list[tuple[int, list[str]]]:
    """(line number, tab-separated cells) of every non-blank line."""
    rows = [(i + 1, ln.split("\t")) for i, ln in enumerate(read_lines(path)) if ln.strip()]
    if not rows:
        raise EdgecompError(f"{what} file {path} is empty", f"put one row per line in it: {layout}")
    return rows


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


STS_LAYOUT = ("genre<TAB>file<TAB>year<TAB>id<TAB>score<TAB>sentence1<TAB>sentence2 (STS Benchmark) "
              "or sentence1<TAB>sentence2<TAB>score")


def read_sts_pairs(path: str | Path) -> StsPairs:
    """Sentence pairs with a similarity score: the STS Benchmark layout (7 columns; its extra source columns,
    when present, are ignored) or ``sentence1<TAB>sentence2<TAB>score``. A first row whose score is not a
    number is a header."""
    path = Path(path)
    s1, s2, scores = [], [], []
    for n, (line, cells) in enumerate(_rows(path, "STS pairs", STS_LAYOUT)):
        if len(cells) == 3:
            a, b, score = cells
        elif len(cells) >= 7:
            score, a, b = cells[4], cells[5], cells[6]
        else:
            raise EdgecompError(f"{path} line {line} has {len(cells)} tab-separated columns, not 3 or 7",
                                f"write each pair as {STS_LAYOUT}")
        value = _number(score)
        if value is None:
            if n == 0:
                continue  # a header row
            raise EdgecompError(f"{path} line {line}: score {score!r} is not a number",
                                f"write each pair as {STS_LAYOUT}")
        if not a.strip() or not b.strip():
            raise EdgecompError(f"{path} line {line} has an empty sentence", "give both sentences of every pair")
        s1.append(a.strip())
        s2.append(b.strip())
        scores.append(value)
    if len(scores) < 3:
        raise EdgecompError(f"{path} holds {len(scores)} scored pairs, too few for a rank correlation",
                            "give at least 3 pairs (the STS Benchmark dev set has 1,500)")
    return StsPairs(s1, s2, scores)


LABELLED_LAYOUT = "text<TAB>label"


def read_labelled(path: str | Path) -> Labelled:
    """``text<TAB>label`` rows (a first row ``text<TAB>label`` / ``sentence<TAB>label`` is a header)."""
    path = Path(path)
    texts, labels = [], []
    for n, (line, cells) in enumerate(_rows(path, "labelled", LABELLED_LAYOUT)):
        if len(cells) != 2:
            raise EdgecompError(f"{path} line {line} has {len(cells)} tab-separated columns, not 2",
                                f"write each example as {LABELLED_LAYOUT}")
        text, label = cells[0].strip(), cells[1].strip()
        if n == 0 and label.lower() == "label":
            continue
        if not text or not label:
            raise EdgecompError(f"{path} line {line} has an empty text or label", f"write each example as {LABELLED_LAYOUT}")
        texts.append(text)
        labels.append(label)
    if not labels:
        raise EdgecompError(f"{path} holds no labelled examples", f"write each example as {LABELLED_LAYOUT}")
    return Labelled(texts, labels)


def read_eval_text(path: str | Path) -> list[str]:
    """The non-blank lines of a text file (perplexity is scored per line)."""
    return read_texts(path)


RETRIEVAL_FILES = ("queries.tsv", "corpus.tsv", "qrels.tsv")
RETRIEVAL_LAYOUT = ("a folder with queries.tsv (id<TAB>text), corpus.tsv (id<TAB>text) and qrels.tsv "
                    "(query_id<TAB>doc_id[<TAB>relevance])")


def _id_texts(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for n, (line, cells) in enumerate(_rows(path, "retrieval", RETRIEVAL_LAYOUT)):
        if len(cells) != 2:
            raise EdgecompError(f"{path} line {line} has {len(cells)} tab-separated columns, not 2",
                                "write each row as id<TAB>text")
        if n == 0 and cells[0].strip().lower() in ("id", "_id", "qid", "doc_id", "query_id"):
            continue
        out[cells[0].strip()] = cells[1].strip()
    return out


def read_retrieval(path: str | Path, prefix: str = "") -> RetrievalSet:
    """A queries/corpus/qrels set from a folder (``{prefix}queries.tsv`` ...); qrels rows with relevance 0
    are not relevant."""
    d = Path(path)
    if not d.is_dir():
        raise EdgecompError(f"retrieval data {d} is not a folder", f"pass {RETRIEVAL_LAYOUT}")
    files = [d / f"{prefix}{f}" for f in RETRIEVAL_FILES]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise EdgecompError(f"retrieval data {d} has no {', '.join(missing)}", f"pass {RETRIEVAL_LAYOUT}")
    queries, corpus = _id_texts(files[0]), _id_texts(files[1])
    qrels: dict[str, set[str]] = {}
    for n, (line, cells) in enumerate(_rows(files[2], "qrels", RETRIEVAL_LAYOUT)):
        if len(cells) not in (2, 3):
            raise EdgecompError(f"{files[2]} line {line} has {len(cells)} tab-separated columns, not 2 or 3",
                                "write each row as query_id<TAB>doc_id[<TAB>relevance]")
        q, doc = cells[0].strip(), cells[1].strip()
        rel = _number(cells[2]) if len(cells) == 3 else 1.0
        if rel is None:
            if n == 0:
                continue
            raise EdgecompError(f"{files[2]} line {line}: relevance {cells[2]!r} is not a number",
                                "write each row as query_id<TAB>doc_id[<TAB>relevance]")
        if n == 0 and q.lower() in ("query_id", "qid", "query-id"):
            continue
        if q not in queries or doc not in corpus:
            raise EdgecompError(f"{files[2]} line {line} names {q if q not in queries else doc!r}, which "
                                f"{'queries.tsv' if q not in queries else 'corpus.tsv'} does not hold",
                                "give every query and document of qrels.tsv a row in its file")
        if rel > 0:
            qrels.setdefault(q, set()).add(doc)
    if not qrels:
        raise EdgecompError(f"{files[2]} names no relevant document", "give at least one query_id<TAB>doc_id row")
    return RetrievalSet(queries, corpus, qrels)


def read_builtin_retrieval() -> RetrievalSet:
    return read_retrieval(BUILTIN_DIR, prefix="retrieval-")
