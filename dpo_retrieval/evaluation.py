"""BEIR datasets and retrieval evaluation.

- Datasets by name or path: a bare name (``scifact``) resolves to ``$DPO_RETRIEVAL_DATA/<name>``
  (default ``~/.cache/dpo_retrieval/datasets``) and is downloaded with BEIR's downloader when
  absent; anything with a path separator (``./scifact``, ``/data/scifact``) is used as is.
  Loading goes through BEIR's ``GenericDataLoader``; bad files are reported as ``file:line``.
- Metrics are small pure functions over runs ``{qid: {docid: score}}`` and qrels
  ``{qid: {docid: grade}}``, computed by BEIR's ``EvaluateRetrieval`` (pytrec_eval), with
  per-query values from pytrec_eval.
- :func:`evaluate_model` is the whole pipeline (encode corpus, index, encode queries, search,
  score) the ``evaluate`` and ``compare`` commands share.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np

from dpo_retrieval.data import _json_problem, iter_lines
from dpo_retrieval.encoding import DEFAULT_BATCH_SIZE, join_title_text, resolved_precision
from dpo_retrieval.errors import UserInputError

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

#: k values handed to BEIR; the report picks the metrics below from what it returns.
K_VALUES = (1, 3, 5, 10, 100, 1000)
REPORTED = ("ndcg@1", "ndcg@3", "ndcg@5", "ndcg@10", "ndcg@100", "map@100",
            "recall@10", "recall@100", "recall@1000", "mrr@10")
TABLE = ("ndcg@10", "ndcg@100", "map@100", "recall@10", "recall@100", "recall@1000", "mrr@10")


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
        raise UserInputError(f"--dataset: {name!r} is not at {target} and BEIR's downloader cannot run "
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
            raise UserInputError(f"--dataset: the download of {name!r} holds no {name}/corpus.jsonl")
        os.replace(unpacked, target)
    except UserInputError:
        raise
    except Exception as err:  # network, HTTP 404, bad zip ...
        raise UserInputError(
            f"--dataset: cannot download {name!r} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            f"{create}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_dataset(name_or_path: str | os.PathLike, *, download: bool = True) -> Path:
    """A dataset directory from a name (``$DPO_RETRIEVAL_DATA/<name>``, downloaded if absent) or a path."""
    s = str(name_or_path).strip()
    if not s:
        raise UserInputError("--dataset: empty name")
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
        raise UserInputError(f"--dataset: {s!r} not found at {path} and not a BEIR dataset name to download; {create}")
    if not download or _offline():
        why = "offline (" + ", ".join(f"{v}={os.environ[v]}" for v in OFFLINE_ENVS if os.environ.get(v)) + ")" \
            if _offline() else "downloads disabled"
        raise UserInputError(f"--dataset: {s!r} not found at {path} and {why}; {create}")
    return download_beir(s, data_root())


# ----------------------------------------------------------------------------------------------
# BEIR files, read with file:line errors
def _check_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise UserInputError.at(path, None, f"missing {what}")
    if path.is_dir():
        raise UserInputError.at(path, None, f"is a directory; expected the {what} file")
    return path


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; bad JSON / non-objects / missing ``_id`` -> error.

    Lines are decoded by :func:`dpo_retrieval.data.iter_lines`, the triplet reader's decoder (a UTF-8 BOM
    is dropped; bytes that are not UTF-8 are reported with their line)."""
    _check_file(path, "JSONL file")
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserInputError.at(path, lineno, _json_problem(err)) from None
        except RecursionError:
            raise UserInputError.at(path, lineno, "invalid JSON: nested too deeply") from None
        if not isinstance(obj, dict):
            raise UserInputError.at(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
        if "_id" not in obj or obj["_id"] is None or str(obj["_id"]) == "":
            raise UserInputError.at(path, lineno, "missing \"_id\"")
        yield lineno, obj


def check_corpus(*, corpus: str | os.PathLike | None = None, dataset: str | None = None) -> Path:
    """The corpus file to index (``corpus``, or a BEIR ``dataset``'s corpus.jsonl), read through once
    so that a bad line is reported before a model is loaded; empty corpora are errors."""
    if (corpus is None) == (dataset is None):
        raise UserInputError("give exactly one of --corpus or --dataset")
    path = Path(corpus) if corpus is not None else resolve_dataset(dataset) / "corpus.jsonl"
    _check_file(path, "corpus.jsonl")
    if sum(1 for _ in iter_corpus(path)) == 0:
        raise UserInputError.at(path, None, "empty corpus")
    return path


def iter_corpus(path: str | os.PathLike) -> Iterator[tuple[str, str, str]]:
    """Stream a BEIR ``corpus.jsonl``: ``(doc_id, title, text)``; duplicate ids are errors."""
    path = Path(path)
    seen: dict[str, int] = {}
    for lineno, obj in _jsonl_records(path):
        doc_id = str(obj["_id"])
        if doc_id in seen:
            raise UserInputError.at(path, lineno, f"duplicate _id {doc_id!r} (first on line {seen[doc_id]})")
        seen[doc_id] = lineno
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
    for lineno, obj in _jsonl_records(path):
        qid = str(obj["_id"])
        if qid in queries:
            raise UserInputError.at(path, lineno, f"duplicate _id {qid!r}")
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
    if not corpus:
        raise UserInputError.at(path / "corpus.jsonl", None, "empty corpus: no documents")
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


# ----------------------------------------------------------------------------------------------
# metrics: pure functions over runs {qid: {docid: score}}
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


def _without_self_hits(run: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """A copy of ``run`` without query-id == doc-id hits (BEIR's ``ignore_identical_ids=True``)."""
    return {q: {d: float(s) for d, s in hits.items() if d != q} for q, hits in run.items()}


def _check_inputs(qrels, run) -> None:
    if not isinstance(qrels, Mapping) or not isinstance(run, Mapping):
        raise TypeError("qrels and run must be mappings {qid: {docid: value}}")


def evaluate_run(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]],
                 k_values: Iterable[int] = K_VALUES, *, ignore_identical_ids: bool = True) -> dict[str, float]:
    """Mean metrics through BEIR's ``EvaluateRetrieval``: ``ndcg@k``, ``map@k``, ``recall@k``,
    ``p@k`` for each k, plus ``mrr@k`` (BEIR's ``evaluate_custom``). Averages over the queries
    that appear in both qrels and run (pytrec_eval's convention). Neither input is modified."""
    from beir.retrieval.evaluation import EvaluateRetrieval

    _check_inputs(qrels, run)
    k_values = sorted(set(int(k) for k in k_values))
    results = _without_self_hits(run) if ignore_identical_ids else {q: dict(h) for q, h in run.items()}
    qrels = {q: dict(r) for q, r in qrels.items()}
    results = {q: h for q, h in results.items() if q in qrels}
    if not results:
        raise UserInputError("no query of the run has relevance judgments")
    with _quiet_beir():
        ndcg, _map, recall, precision = EvaluateRetrieval.evaluate(qrels, results, k_values, ignore_identical_ids=False)
        mrr = EvaluateRetrieval.evaluate_custom({q: qrels[q] for q in results}, results, k_values, metric="mrr")
    out: dict[str, float] = {}
    for block in (ndcg, _map, recall, precision, mrr):
        out.update({k.lower(): float(v) for k, v in block.items()})
    return out


def per_query_metrics(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]],
                      k_values: Iterable[int] = K_VALUES, *, ignore_identical_ids: bool = True,
                      mrr_k: int = 10) -> dict[str, dict[str, float]]:
    """``{qid: {"ndcg@10": .., "map@100": .., "recall@100": .., "mrr@10": ..}}`` from pytrec_eval
    (MRR@k = pytrec_eval's ``recip_rank`` on the run cut to its top k)."""
    import pytrec_eval

    _check_inputs(qrels, run)
    ks = ",".join(str(k) for k in sorted(set(int(k) for k in k_values)))
    results = _without_self_hits(run) if ignore_identical_ids else {q: dict(h) for q, h in run.items()}
    qrels = {q: dict(r) for q, r in qrels.items()}
    results = {q: h for q, h in results.items() if q in qrels}
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{ks}", f"map_cut.{ks}", f"recall.{ks}"})
    scores = evaluator.evaluate(results)
    top = {q: dict(sorted(h.items(), key=lambda kv: (-kv[1], kv[0]))[:mrr_k]) for q, h in results.items()}
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top)
    out: dict[str, dict[str, float]] = {}
    for qid, vals in scores.items():
        row = {}
        for key, value in vals.items():
            measure, k = key.rsplit("_", 1)
            name = {"ndcg_cut": "ndcg", "map_cut": "map", "recall": "recall"}[measure]
            row[f"{name}@{k}"] = float(value)
        row[f"mrr@{mrr_k}"] = float(rr.get(qid, {}).get("recip_rank", 0.0))
        out[qid] = row
    return out


def report_metrics(metrics: Mapping[str, float], names: Iterable[str] = REPORTED) -> dict[str, float]:
    """The issue's metric set (nDCG@1/3/5/10/100, MAP@100, Recall@10/100/1000, MRR@10) where present."""
    return {n: metrics[n] for n in names if n in metrics}


def format_table(result: Mapping, names: Iterable[str] = TABLE) -> str:
    m = result["metrics"]
    names = [n for n in names if n in m]
    head = "  ".join(f"{n:>11}" for n in names)
    row = "  ".join(f"{m[n]:>11.4f}" for n in names)
    t = result.get("timings", {})
    tail = (f"{result.get('dataset')}/{result.get('split')}: {result.get('num_queries')} queries, "
            f"{result.get('num_docs')} docs; encode {t.get('encode_corpus_s', 0) + t.get('encode_queries_s', 0):.1f}s, "
            f"search {t.get('search_s', 0):.2f}s, metrics {t.get('metrics_s', 0):.2f}s")
    return f"{head}\n{row}\n{tail}"


# ----------------------------------------------------------------------------------------------
# runs
def retrieve(index, model, queries: Mapping[str, str], k: int = 1000, *, batch_size: int = DEFAULT_BATCH_SIZE,
             precision: str = "auto", query_embeddings: np.ndarray | None = None, check: bool = True,
             show_progress_bar: bool | None = None, **search_kwargs) -> dict[str, dict[str, float]]:
    """Search ``index`` (a :class:`~dpo_retrieval.index.FaissIndex`) for each query: ``{qid: {docid: score}}``."""
    if check:
        index.check_model(model)
    qids = list(queries)
    if query_embeddings is None:
        query_embeddings = index.encode_queries(model, [queries[q] for q in qids], batch_size=batch_size,
                                                precision=precision, show_progress_bar=show_progress_bar)
    scores, ids = index.search(query_embeddings, k, **search_kwargs)
    return run_from_arrays(qids, scores, ids)


def run_from_arrays(qids, scores: np.ndarray, ids: np.ndarray) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for qid, srow, irow in zip(qids, scores, ids):
        run[qid] = {d: float(s) for d, s in zip(irow, srow) if d is not None}
    return run


def _atomic_write_text(path: Path, write) -> Path:
    path = Path(path)
    if path.is_dir():
        raise UserInputError.at(path, None, "is a directory; expected a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise UserInputError.at(path, None, f"cannot write: {err.strerror or err}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def run_format(path: str | os.PathLike, fmt: str | None = None) -> str:
    if fmt:
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix == ".jsonl":
        return "jsonl"
    if suffix in (".trec", ".run", ".txt", ""):
        return "trec"
    raise UserInputError(f"--output: cannot tell the run format from {Path(path).name!r}; use .trec or .jsonl")


def write_run(run: Mapping[str, Mapping[str, float]], path: str | os.PathLike, *, fmt: str | None = None,
              tag: str = "dpo-retrieval", titles: Mapping[str, str] | None = None) -> Path:
    """Write a run atomically: TREC (``qid Q0 docid rank score tag``, what trec_eval/pytrec_eval read)
    or JSONL (``{"query_id", "results": [{"rank", "doc_id", "score"}]}`` per query)."""
    fmt = run_format(path, fmt)
    if any(c.isspace() for c in tag):
        raise ValueError("the run tag may not contain whitespace")

    def ranked(hits):
        return sorted(hits.items(), key=lambda kv: (-kv[1], kv[0]))

    def write(f):
        for qid, hits in run.items():
            if fmt == "trec":
                for rank, (did, score) in enumerate(ranked(hits), 1):
                    f.write(f"{qid} Q0 {did} {rank} {score:.6f} {tag}\n")
            else:
                rows = [{"rank": r, "doc_id": d, "score": round(float(s), 6),
                         **({"title": titles.get(d, "")} if titles is not None else {})}
                        for r, (d, s) in enumerate(ranked(hits), 1)]
                f.write(json.dumps({"query_id": qid, "results": rows}, ensure_ascii=False) + "\n")

    for qid, hits in run.items():
        if fmt == "trec" and (any(c.isspace() for c in qid) or any(any(c.isspace() for c in d) for d in hits)):
            raise UserInputError(f"--output: query or doc ids with whitespace (e.g. in query {qid!r}) cannot be "
                                 "written as a TREC run; use .jsonl")
    return _atomic_write_text(Path(path), write)


def read_run(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """Read a run written by :func:`write_run` (TREC via pytrec_eval's parser, or JSONL)."""
    path = _check_file(Path(path), "run file")
    try:
        return _read_run(path)
    except UnicodeDecodeError as err:
        raise UserInputError.at(path, None, f"not UTF-8 text ({err.reason} at byte {err.start})") from None


def _read_run(path: Path) -> dict[str, dict[str, float]]:
    import pytrec_eval

    if run_format(path) == "trec":
        with open(path, encoding="utf-8") as f:
            try:
                return pytrec_eval.parse_run(f)
            except (ValueError, IndexError) as err:
                raise UserInputError.at(path, None, f"not a TREC run ({err})") from None
    run: dict[str, dict[str, float]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                run[str(obj["query_id"])] = {str(r["doc_id"]): float(r["score"]) for r in obj["results"]}
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                raise UserInputError.at(path, lineno, f"not a JSONL run line ({type(err).__name__}: {err})") from None
    return run


def write_json(obj, path: str | os.PathLike) -> Path:
    """Write JSON atomically (temporary file, then ``os.replace``)."""
    return _atomic_write_text(Path(path), lambda f: (json.dump(obj, f, indent=2, ensure_ascii=False), f.write("\n")))


# ----------------------------------------------------------------------------------------------
# the pipeline
#: Files of a model directory whose bytes determine its embeddings: weights, configs, tokenizer.
MODEL_FILE_PATTERNS = ("*.safetensors", "*.bin", "*.json", "*.txt", "*.model")
#: What a trained model's directory holds besides the model (logs, resumable checkpoints).
MODEL_DIR_SKIP = ("checkpoints", "train_log.jsonl", "train_summary.json")
_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def package_version() -> str:
    from dpo_retrieval import __version__

    return __version__


def texts_digest(ids: Iterable[str], texts: Iterable[str]) -> str:
    """sha256 over ``(id, text)`` pairs in order: what a cache of their encodings depends on."""
    h = hashlib.sha256()
    for i, t in zip(ids, texts, strict=True):
        h.update(i.encode("utf-8") + b"\0" + t.encode("utf-8") + b"\0")
    return h.hexdigest()


def corpus_digest(dataset: "BeirDataset") -> str:
    """:func:`texts_digest` of a dataset's documents as encoded (ids and title + text strings)."""
    return texts_digest(dataset.doc_ids, dataset.doc_texts())


def _file_digest(path: Path, memo: dict | None) -> str:
    st_ = path.stat()
    key = (str(path.resolve()), st_.st_size, st_.st_mtime_ns)
    memo_key = "\0".join(map(str, key))
    digest = _FILE_DIGESTS.get(key) or (memo or {}).get(memo_key)
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
    _FILE_DIGESTS[key] = digest
    if memo is not None:
        memo[memo_key] = digest
    return digest


def model_files_digest(directory: str | os.PathLike, memo_file: str | os.PathLike | None = None) -> str:
    """sha256 over a model directory's weight, config and tokenizer files (:data:`MODEL_FILE_PATTERNS`,
    outside :data:`MODEL_DIR_SKIP`), with their relative paths. Each file's hash is remembered per
    (path, size, mtime) in this process and, given ``memo_file``, in that JSON file across runs."""
    root = Path(directory)
    memo = None
    if memo_file is not None:
        try:
            memo = json.loads(Path(memo_file).read_text())
        except (OSError, ValueError):
            memo = {}
        before = dict(memo)
    files = sorted({p for pattern in MODEL_FILE_PATTERNS for p in root.rglob(pattern)
                    if p.is_file() and not set(p.relative_to(root).parts) & set(MODEL_DIR_SKIP)})
    if not files:
        raise UserInputError.at(root, None, "no model files (*.safetensors, *.bin, *.json) to identify the model by")
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + _file_digest(p, memo).encode() + b"\0")
    if memo is not None and memo != before:
        write_json(memo, memo_file)
    return h.hexdigest()


def state_dict_digest(model) -> str:
    """sha256 over a loaded model's parameters and buffers (for a model with no directory to hash)."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(name.encode() + str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update((t.view(torch.uint8) if t.dtype == torch.bfloat16 else t).numpy().tobytes())
    return h.hexdigest()


def model_id(name_or_path: str | os.PathLike | None, model=None, *, memo_file=None) -> str:
    """What identifies a model's weights in a cache key: ``files:<sha256>`` of its directory, else
    ``state:<sha256>`` of the loaded ``model``, else ``files:`` of a hub name's snapshot in the local hub
    cache, else ``name:<name>`` (a hub name not cached locally: revisions cannot be told apart)."""
    path = Path(str(name_or_path)).expanduser() if name_or_path is not None else None
    if path is not None and path.is_dir():
        return "files:" + model_files_digest(path, memo_file)
    if model is not None:
        return "state:" + state_dict_digest(model)
    snapshot = _hub_snapshot(str(name_or_path)) if name_or_path is not None else None
    if snapshot is not None:
        return "files:" + model_files_digest(snapshot, memo_file)
    return f"name:{name_or_path}"


def _hub_snapshot(name: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        for repo in (name, f"sentence-transformers/{name}"):
            found = try_to_load_from_cache(repo, "modules.json")
            if isinstance(found, str):
                return Path(found).parent
    except Exception:  # noqa: BLE001 - a malformed name, no hub library: fall back to the name
        return None
    return None


def encoding_key(model_id: str, precision: str, texts_digest: str, **extra) -> dict:
    """The key of every cache of encodings (corpus embeddings, mined triplets, trained and evaluated
    models): the model's weights, the resolved precision, the texts, the package version, and any
    further field that changes the numbers (``extra``, e.g. a backend). One function for all caches."""
    return {"model": model_id, "precision": precision, "texts": texts_digest, "version": package_version(),
            **extra}


def _cache_meta(doc_ids: list[str], model_settings: Mapping, key: Mapping | None = None) -> dict:
    keys = ("dimension", "max_seq_length", "similarity", "normalize_embeddings", "doc_join", "probe", "two_towers",
            "backend")
    return {"count": len(doc_ids), "key": dict(key or {}),
            **{k: model_settings.get(k) for k in keys}, "model": model_settings.get("model")}


def _load_cached_embeddings(path: Path, expect: dict) -> np.ndarray | None:
    side = path.with_suffix(path.suffix + ".json")
    if not path.is_file() or not side.is_file():
        return None
    try:
        meta = json.loads(side.read_text())
        same = all(meta.get(k) == v for k, v in expect.items() if k not in ("probe", "model")) and bool(meta.get("key"))
        probe_ok = np.allclose(np.asarray(meta.get("probe") or [0.0]), np.asarray(expect.get("probe") or [1.0]),
                               atol=2e-3)
        emb = np.load(path, mmap_mode="r")
    except (OSError, ValueError, json.JSONDecodeError) as err:
        logger.warning("ignoring the embeddings cache %s: %s", path, err)
        return None
    if not (same and probe_ok) or emb.shape != (expect["count"], expect["dimension"]) or emb.dtype != np.float32:
        logger.warning("the embeddings cache %s was made with another model, settings or corpus; re-encoding", path)
        return None
    logger.info("reusing corpus embeddings from %s", path)
    return emb


def _save_cached_embeddings(path: Path, emb: np.ndarray, meta: dict) -> None:
    if path.is_dir():
        raise UserInputError.at(path, None, "is a directory; the embeddings cache is a .npy file")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npy", dir=path.parent)
    os.close(fd)
    try:
        np.save(tmp, np.asarray(emb, dtype=np.float32))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    write_json(meta, path.with_suffix(path.suffix + ".json"))
    logger.info("saved corpus embeddings to %s", path)


def evaluate_model(model, dataset: BeirDataset, *, top_k: int = 1000, k_values: Iterable[int] = K_VALUES,
                   batch_size: int = DEFAULT_BATCH_SIZE, precision: str = "auto", factory: str = "Flat",
                   index=None, save_index: str | os.PathLike | None = None,
                   embeddings_cache: str | os.PathLike | None = None, model_name: str | None = None,
                   show_progress_bar: bool | None = None, include_run: bool = True,
                   model_key: str | None = None) -> dict:
    """Encode the corpus and queries, search, and score one BEIR split.

    - ``index``: a :class:`~dpo_retrieval.index.FaissIndex` or an index directory to reuse
      (checked against ``model`` and the dataset's doc ids) instead of encoding the corpus.
    - ``save_index``: also save the index built here to that directory.
    - ``embeddings_cache``: a ``.npy`` path: reused when its :func:`encoding_key` (model weights,
      resolved precision, document texts, package version) and settings match, else (re)written.
    - ``model_key``: what identifies the model in that key (e.g. its training stage's hash); default
      :func:`model_id` of ``model_name`` or of the loaded weights.

    Returns ``{"dataset", "split", "model", "num_docs", "num_queries", "top_k", "factory",
    "precision", "metrics", "metrics_all", "per_query", "timings", "run" (if include_run)}``.
    """
    from dpo_retrieval.index import FaissIndex, build_from_embeddings, encode_corpus, model_settings

    if top_k <= 0:
        raise UserInputError(f"--top-k: must be > 0, got {top_k}")
    k_values = sorted(set(int(k) for k in k_values))
    timings: dict[str, float] = {}
    doc_ids = dataset.doc_ids
    key = None
    settings = model_settings(model, model_name=model_name, precision=precision)

    if index is not None:
        t0 = time.perf_counter()
        if not isinstance(index, FaissIndex):
            index = FaissIndex.load(index)
        index.check_model(model)
        if len(index.doc_ids) != len(doc_ids) or set(index.doc_ids) != set(doc_ids):
            missing = len(set(doc_ids) - set(index.doc_ids))
            raise UserInputError(f"--index: holds {index.count} documents, {missing} of the {len(doc_ids)} in "
                                 f"{dataset.name} are missing; it was built from another corpus")
        timings["load_index_s"] = time.perf_counter() - t0
        timings["encode_corpus_s"] = 0.0
    else:
        cache = Path(embeddings_cache) if embeddings_cache else None
        if cache is not None:
            key = encoding_key(model_key or model_id(model_name, model), resolved_precision(model, precision),
                               corpus_digest(dataset), backend=settings.get("backend") or "torch")
        expect = _cache_meta(doc_ids, settings, key)
        emb = _load_cached_embeddings(cache, expect) if cache is not None else None
        t0 = time.perf_counter()
        if emb is None:
            emb = encode_corpus(model, dataset.doc_texts(), count=len(doc_ids),
                                normalize=settings["normalize_embeddings"], batch_size=batch_size,
                                precision=precision, show_progress_bar=show_progress_bar)
            timings["encode_corpus_s"] = time.perf_counter() - t0
            if cache is not None:
                _save_cached_embeddings(cache, emb, expect)
        else:
            timings["encode_corpus_s"] = 0.0
        t0 = time.perf_counter()
        index = build_from_embeddings(emb, doc_ids, dict(settings, encode_seconds=timings["encode_corpus_s"]),
                                      factory=factory, titles=[dataset.corpus[d].get("title") or "" for d in doc_ids])
        timings["build_index_s"] = time.perf_counter() - t0
        if save_index:
            index.save(save_index)
            logger.info("saved the index to %s", save_index)

    qids = list(dataset.queries)
    t0 = time.perf_counter()
    q_emb = index.encode_queries(model, [dataset.queries[q] for q in qids], batch_size=batch_size,
                                 precision=precision, show_progress_bar=show_progress_bar)
    timings["encode_queries_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    run = retrieve(index, model, dataset.queries, top_k, query_embeddings=q_emb, check=False)
    timings["search_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics_all = evaluate_run(dataset.qrels, run, k_values)
    per_query = per_query_metrics(dataset.qrels, run, k_values)
    timings["metrics_s"] = time.perf_counter() - t0
    timings = {k: round(v, 3) for k, v in timings.items()}
    if timings.get("encode_corpus_s"):
        timings["docs_per_s"] = round(len(doc_ids) / timings["encode_corpus_s"], 1)
    result = {
        "dataset": dataset.name, "dataset_path": str(dataset.path), "split": dataset.split,
        "model": settings.get("model"), "max_seq_length": settings.get("max_seq_length"),
        "similarity": settings.get("similarity"), "doc_join": settings.get("doc_join"),
        "precision": resolved_precision(model, precision), "backend": settings.get("backend"),
        "batch_size": batch_size,
        "factory": index.factory, "top_k": top_k, "num_docs": len(doc_ids), "num_queries": len(qids),
        "metrics": report_metrics(metrics_all), "metrics_all": metrics_all, "per_query": per_query,
        "timings": timings, "versions": index.meta.get("versions"),
    }
    if key is not None:
        result["encoding_key"] = key
    if include_run:
        result["run"] = run
    return result


def index_corpus(model, output: str | os.PathLike, *, corpus: str | os.PathLike | None = None,
                 dataset: str | None = None, factory: str = "Flat", batch_size: int = DEFAULT_BATCH_SIZE,
                 precision: str = "auto", chunk_size: int | None = None, keep_embeddings: bool = False,
                 model_name: str | None = None, overwrite: bool = True, show_progress_bar: bool | None = None):
    """Stream a corpus file (or a BEIR dataset's) into an index directory; returns the FaissIndex."""
    from dpo_retrieval.index import DEFAULT_CHUNK_SIZE, build_index_on_disk

    if (corpus is None) == (dataset is None):
        raise UserInputError("give exactly one of --corpus or --dataset")
    path = Path(corpus) if corpus is not None else resolve_dataset(dataset) / "corpus.jsonl"
    _check_file(path, "corpus.jsonl")
    count = count_records(path)
    if count == 0:
        raise UserInputError.at(path, None, "empty corpus")
    docs = ((doc_id, join_title_text(title, text), title) for doc_id, title, text in iter_corpus(path))
    return build_index_on_disk(model, docs, output, count=count, factory=factory, batch_size=batch_size,
                               precision=precision, chunk_size=chunk_size or DEFAULT_CHUNK_SIZE,
                               model_name=model_name, keep_embeddings=keep_embeddings, overwrite=overwrite,
                               extra_meta={"corpus": str(path.resolve())}, show_progress_bar=show_progress_bar)
