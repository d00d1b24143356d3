"""BEIR datasets: resolve a name or path (download when absent), read corpus/queries/qrels, load a split.

A bare name (``scifact``) resolves to ``$DPO_RETRIEVAL_DATA/<name>`` (default
``~/.cache/dpo_retrieval/datasets``) and is downloaded with BEIR's downloader when absent; anything
with a path separator (``./scifact``, ``/data/scifact``) is used as is. Bad files are reported as
``file:line``.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from dpo_retrieval.errors import UserInputError
from dpo_retrieval.data.fields import join_title_text
from dpo_retrieval.data.lines import _iter_jsonl, iter_lines

logger = logging.getLogger(__name__)

DATA_ENV = "DPO_RETRIEVAL_DATA"
DEFAULT_DATA_ROOT = Path("~/.cache/dpo_retrieval/datasets")
BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
BEIR_DATASETS = (
    "msmarco", "trec-covid", "nfcorpus", "nq", "hotpotqa", "fiqa", "arguana", "webis-touche2020",
    "cqadupstack", "quora", "dbpedia-entity", "scidocs", "fever", "climate-fever", "scifact",
    "bioasq", "signal1m", "trec-news", "robust04", "msmarco-v2", "mrtydi", "germanquad",
)
OFFLINE_ENVS = ("DPO_RETRIEVAL_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


# ----------------------------------------------------------------------------------------------
# dataset resolution
def data_root() -> Path:
    """``$DPO_RETRIEVAL_DATA`` or ``~/.cache/dpo_retrieval/datasets``."""
    root = os.environ.get(DATA_ENV)
    return Path(root).expanduser() if root else DEFAULT_DATA_ROOT.expanduser()


def dataset_dir(name: str) -> Path:
    """Where a dataset called ``name`` lives (or will be downloaded to)."""
    return data_root() / name


def _is_path(name_or_path: str | os.PathLike) -> bool:
    s = str(name_or_path)
    return isinstance(name_or_path, Path) or os.sep in s or "/" in s or s.startswith((".", "~"))


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in OFFLINE_ENVS)


def download_beir(name: str, root: Path) -> Path:
    """Download and unzip BEIR dataset ``name`` under ``root`` with BEIR's own downloader, atomically."""
    target = root / name
    create = (f"create {target} with corpus.jsonl, queries.jsonl and qrels/<split>.tsv, "
              f"or set {DATA_ENV} to the folder that holds {name}/")
    try:
        from beir import util
    except ImportError as err:  # beir.util needs requests, which beir does not always pull in
        raise UserInputError(f"dataset: {name!r} is not at {target} and BEIR's downloader cannot run "
                             f"({err}; pip install requests); {create}") from None
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.download-", dir=root))
    except OSError as err:
        raise UserInputError.at(root, None, f"cannot create the dataset folder: {err.strerror or err}") from None
    try:
        logger.info("downloading BEIR dataset %s to %s", name, target)
        util.download_and_unzip(BEIR_URL.format(name=name), str(tmp))
        unpacked = tmp / name
        if not (unpacked / "corpus.jsonl").is_file():
            raise UserInputError(f"dataset: the download of {name!r} holds no {name}/corpus.jsonl")
        os.replace(unpacked, target)
    except UserInputError:
        raise
    except Exception as err:  # network, HTTP 404, bad zip ...
        raise UserInputError(
            f"dataset: cannot download {name!r} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            f"{create}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_dataset(name_or_path: str | os.PathLike, *, download: bool = True) -> Path:
    """A dataset directory from a name (``$DPO_RETRIEVAL_DATA/<name>``, downloaded if absent) or a path."""
    s = str(name_or_path).strip()
    if not s:
        raise UserInputError("dataset: empty name")
    if _is_path(name_or_path):
        path = Path(s).expanduser()
        if not path.exists():
            raise UserInputError.at(path, None, "no such dataset directory")
        if not path.is_dir():
            raise UserInputError.at(path, None, "is a file; a BEIR dataset is a directory with corpus.jsonl, "
                                                "queries.jsonl and qrels/")
        return path
    path = dataset_dir(s)
    if path.is_dir():
        return path
    if path.exists():
        raise UserInputError.at(path, None, "is a file; a BEIR dataset is a directory")
    create = (f"create {path} with corpus.jsonl, queries.jsonl and qrels/<split>.tsv, or set "
              f"{DATA_ENV} to the folder that holds {s}/ (or pass a path such as ./{s})")
    if s not in BEIR_DATASETS:
        raise UserInputError(f"dataset: {s!r} not found at {path} and not a BEIR dataset name to download; {create}")
    if not download or _offline():
        why = "offline (" + ", ".join(f"{v}={os.environ[v]}" for v in OFFLINE_ENVS if os.environ.get(v)) + ")" \
            if _offline() else "downloads disabled"
        raise UserInputError(f"dataset: {s!r} not found at {path} and {why}; {create}")
    return download_beir(s, data_root())


class _quiet_beir:
    """Silence BEIR's INFO chatter (its ``beir`` logger, and the metric lines it logs on the root logger)."""

    @staticmethod
    def _drop(record: logging.LogRecord) -> bool:
        return not (record.name == "root" and record.levelno < logging.WARNING)

    def __enter__(self):
        self.beir = logging.getLogger("beir")
        self.level = self.beir.level
        self.beir.setLevel(max(self.level, logging.WARNING))
        logging.getLogger().addFilter(self._drop)

    def __exit__(self, *exc) -> None:
        logging.getLogger().removeFilter(self._drop)
        self.beir.setLevel(self.level)


# ----------------------------------------------------------------------------------------------
# BEIR files, read with file:line errors
def _check_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise UserInputError.at(path, None, f"missing {what}")
    if path.is_dir():
        raise UserInputError.at(path, None, f"is a directory; expected the {what} file")
    return path


def _jsonl_records(path: Path, what: str) -> Iterator[tuple[int, str, dict]]:
    """(line number, ``_id`` as text, object) for each non-blank line of a BEIR JSONL file of ``what``
    (documents, queries); bad JSON, non-objects, a missing or repeated ``_id``, no line at all -> error.

    Read by :func:`dpo_retrieval.data.lines._iter_jsonl`, the triplet readers' JSON Lines reader (a UTF-8
    BOM is dropped; bytes that are not UTF-8 are reported with their line)."""
    _check_file(path, "JSONL file")
    seen: dict[str, int] = {}
    for lineno, obj in _iter_jsonl(path, what):
        if not isinstance(obj, dict):
            raise UserInputError.at(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
        if "_id" not in obj or obj["_id"] is None or str(obj["_id"]) == "":
            raise UserInputError.at(path, lineno, "missing \"_id\"")
        _id = str(obj["_id"])
        if _id in seen:
            raise UserInputError.at(path, lineno, f"duplicate _id {_id!r} (first on line {seen[_id]})")
        seen[_id] = lineno
        yield lineno, _id, obj


def corpus_file(*, corpus: str | os.PathLike | None = None, dataset: str | None = None) -> Path:
    """The corpus to index: the file ``corpus``, or a BEIR ``dataset``'s corpus.jsonl (exactly one)."""
    if (corpus is None) == (dataset is None):
        raise UserInputError("corpus: give exactly one of corpus or dataset")
    path = Path(corpus) if corpus is not None else resolve_dataset(dataset) / "corpus.jsonl"
    return _check_file(path, "corpus.jsonl")


def check_corpus(*, corpus: str | os.PathLike | None = None, dataset: str | None = None) -> Path:
    """:func:`corpus_file`, read through once so that a bad line (or no document) is reported before a
    model is loaded."""
    path = corpus_file(corpus=corpus, dataset=dataset)
    for _ in iter_corpus(path):
        pass
    return path


def iter_corpus(path: str | os.PathLike) -> Iterator[tuple[str, str, str]]:
    """Stream a BEIR ``corpus.jsonl``: ``(doc_id, title, text)``; duplicate ids are errors."""
    path = Path(path)
    for lineno, doc_id, obj in _jsonl_records(path, "documents"):
        title, text = obj.get("title") or "", obj.get("text")
        if text is None and not title:
            raise UserInputError.at(path, lineno, "missing \"text\"")
        if not isinstance(title, str) or not isinstance(text or "", str):
            raise UserInputError.at(path, lineno, "\"title\" and \"text\" must be strings")
        yield doc_id, title, text or ""


def count_records(path: str | os.PathLike) -> int:
    """Non-blank lines of a JSONL file (fast, binary)."""
    path = _check_file(Path(path), "JSONL file")
    n = 0
    with open(path, "rb") as f:
        for line in f:
            n += bool(line.strip())
    return n


def read_queries(path: str | os.PathLike) -> dict[str, str]:
    """A BEIR ``queries.jsonl`` (``{"_id", "text"}`` per line) as ``{qid: text}``."""
    path = Path(path)
    queries: dict[str, str] = {}
    for lineno, qid, obj in _jsonl_records(path, "queries"):
        text = obj.get("text")
        if not isinstance(text, str) or not text.strip():
            raise UserInputError.at(path, lineno, "missing or empty \"text\"")
        queries[qid] = text
    return queries


def read_qrels(path: str | os.PathLike, *, doc_ids: Iterable[str] | None = None,
               query_ids: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
    """A BEIR qrels TSV (header ``query-id corpus-id score``) as ``{qid: {docid: grade}}``."""
    path = _check_file(Path(path), "qrels TSV")
    docs = set(doc_ids) if doc_ids is not None else None
    queries = set(query_ids) if query_ids is not None else None
    qrels: dict[str, dict[str, int]] = {}
    reader = None
    try:
        reader = csv.reader((line for _, line in iter_lines(path)), delimiter="\t", quoting=csv.QUOTE_MINIMAL)
        _read_qrels_rows(path, reader, docs, queries, qrels)
    except csv.Error as err:
        raise UserInputError.at(path, reader.line_num if reader else None, f"malformed TSV: {err}") from None
    if not qrels:
        raise UserInputError.at(path, None, "no judgments")
    return qrels


def _read_qrels_rows(path: Path, reader, docs, queries, qrels: dict[str, dict[str, int]]) -> None:
    """The rows of a qrels TSV after its header into ``qrels``; bad rows raise UserInputError."""
    for lineno, row in enumerate(reader, 1):
        if lineno == 1 or not row or not "".join(row).strip():
            continue  # header, as BEIR skips it
        if len(row) < 3:
            raise UserInputError.at(path, lineno, f"expected 3 tab-separated columns (query-id, corpus-id, score), got {len(row)}")
        qid, did, grade = row[0], row[1], row[2]
        try:
            value = int(grade)
        except ValueError:
            raise UserInputError.at(path, lineno, f"score {grade!r} is not an integer") from None
        if docs is not None and did not in docs:
            raise UserInputError.at(path, lineno, f"corpus-id {did!r} is not in the corpus")
        if queries is not None and qid not in queries:
            raise UserInputError.at(path, lineno, f"query-id {qid!r} is not in queries.jsonl")
        qrels.setdefault(qid, {})[did] = value


@dataclass
class BeirDataset:
    """One split of a BEIR dataset: corpus ``{id: {title, text}}``, queries ``{id: text}``, qrels."""

    name: str
    path: Path
    split: str
    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    doc_ids: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.doc_ids = list(self.corpus)

    def doc_texts(self) -> Iterator[str]:
        """Document strings in ``doc_ids`` order: BEIR's title + " " + text, stripped."""
        return (join_title_text(self.corpus[d].get("title"), self.corpus[d].get("text")) for d in self.doc_ids)

    def __repr__(self) -> str:
        return (f"BeirDataset({self.name!r}, split={self.split!r}, docs={len(self.corpus)}, "
                f"queries={len(self.queries)}, path={str(self.path)!r})")


def _splits(path: Path) -> list[str]:
    return sorted(p.stem for p in (path / "qrels").glob("*.tsv")) if (path / "qrels").is_dir() else []


def _diagnose(path: Path, split: str) -> dict:
    """Re-read the files with line numbers; raises the UserInputError that explains a failed load."""
    corpus = {d: {"title": t, "text": x} for d, t, x in iter_corpus(path / "corpus.jsonl")}
    queries = read_queries(path / "queries.jsonl")
    qrels = read_qrels(path / "qrels" / f"{split}.tsv", doc_ids=corpus, query_ids=queries)
    return {"corpus": corpus, "queries": {q: queries[q] for q in qrels}, "qrels": qrels}


def load_beir(name_or_path: str | os.PathLike, split: str = "test", *, download: bool = True) -> BeirDataset:
    """Load one split of a BEIR dataset by name or path with BEIR's ``GenericDataLoader``."""
    from beir.datasets.data_loader import GenericDataLoader

    path = resolve_dataset(name_or_path, download=download)
    _check_file(path / "corpus.jsonl", "corpus.jsonl")
    _check_file(path / "queries.jsonl", "queries.jsonl")
    qrels_file = path / "qrels" / f"{split}.tsv"
    if not qrels_file.exists():
        have = _splits(path)
        raise UserInputError.at(qrels_file, None, f"no {split!r} split" + (f"; this dataset has: {', '.join(have)}" if have else ""))
    _check_file(qrels_file, "qrels TSV")
    name = Path(str(name_or_path)).name if _is_path(name_or_path) else str(name_or_path)
    try:
        with _quiet_beir():  # GenericDataLoader logs whole example documents at INFO
            corpus, queries, qrels = GenericDataLoader(data_folder=str(path)).load(split=split)
        ok = (None not in corpus and None not in queries and len(corpus) == count_records(path / "corpus.jsonl")
              and all(isinstance(d, str) and d and isinstance(doc.get("text"), str)
                      and isinstance(doc.get("title") or "", str) for d, doc in corpus.items())
              and all(d in corpus for rel in qrels.values() for d in rel))
    except Exception as err:  # noqa: BLE001 - any failure is explained by re-reading with line numbers
        logger.debug("GenericDataLoader failed: %r", err)
        ok = False
    if not ok:
        fixed = _diagnose(path, split)  # raises for real problems; a blank line BEIR choked on is fine
        corpus, queries, qrels = fixed["corpus"], fixed["queries"], fixed["qrels"]
    else:  # BEIR keeps the last of duplicate query ids and any "text" (null, empty): check the (small) file
        all_queries = read_queries(path / "queries.jsonl")
        queries = {q: all_queries[q] for q in qrels}
    if not qrels:
        raise UserInputError.at(qrels_file, None, "no judgments")
    ds = BeirDataset(name=name, path=path, split=split, corpus=corpus, queries=queries, qrels=qrels)
    logger.info("loaded %s", ds)
    return ds

