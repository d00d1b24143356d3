"""Triplet files in, a ``datasets.Dataset`` of ``anchor, positive, negative_1 .. negative_k`` out.

:func:`load_triplets` reads (query, positive, negative...) triplets from

* JSON Lines (``.jsonl``, ``.ndjson``, or ``.json`` holding JSON Lines or one JSON array of objects)
  with ``query``/``anchor``, ``positive`` and ``negative`` (text or a list), ``negatives: [...]``
  or ``negative_1 .. negative_k``; this covers the files of neighbouring tools:

  - FlagEmbedding: ``{"query", "pos": [...], "neg": [...]}`` (``prompt``, ``pos_scores``,
    ``neg_scores`` and ``type`` are ignored);
  - Tevatron: ``{"query_id", "query", "positive_passages": [{"docid", "title", "text"}],
    "negative_passages": [...]}``; a passage object is ``(title + " " + text).strip()``
    (:func:`~dpo_retrieval.data.fields.join_title_text`, BEIR's convention);
  - sentence-transformers (``mine_hard_negatives`` and its datasets): ``anchor``/``positive``/
    ``negative`` or ``negative_1..k``, and ``query``/``answer`` (the answer is the positive) with
    ``negative*`` columns;

  A positive may be a list (``pos``, ``positives``, ``positive_passages``, ``positive_ids``): the
  record gives one triplet per positive, each with all of the record's negatives;
* TSV (``.tsv``, ``.txt``) and CSV (``.csv``) with 3+ columns, with or without a header row.
  Without a header the columns are query, positive, negative[, negative...] (MS MARCO
  ``triples.train.small.tsv``). TSV is plain tab-separated text with no quoting (a ``"`` is an
  ordinary character); CSV follows the usual quoting rules (:mod:`csv`);
* Parquet (``.parquet``) and a ``Dataset.save_to_disk`` directory (a ``DatasetDict``: its
  ``train`` split), with the same column names as JSON;
* a dataset name for ``datasets.load_dataset`` (its ``train`` split, the same column names):
  ``hf://org/name`` or ``hf://org/name:config``, or ``org/name[:config]`` when no such file exists.
  Offline, a dataset missing from the local cache is a one-line error;
* id triplets: ``query_id``/``qid``, ``positive_id``/``pos_id`` and ``negative_id``/
  ``negative_ids``/``negative_id_1..k`` in any of the above (TSV/CSV: with a header row),
  looked up in a BEIR ``queries.jsonl`` and ``corpus.jsonl``. A passage is
  ``(title + " " + text).strip()``, the BEIR convention. Text and ids may be mixed per field; when a
  record has both a text field and an id field for the same role, the text is used.

Field names are matched ignoring case, surrounding spaces and ``-`` vs ``_``; other fields (or
header columns) are ignored. Every record needs the same number of negatives, k >= 1: a record
with another count is an error naming its line (never cut to the smallest k). Text files are read
by :func:`~dpo_retrieval.data.lines.iter_lines`, the one line decoder the BEIR readers share: a
UTF-8 BOM is dropped. The first record of a text file is checked before ``datasets`` is imported,
so an empty or header-only file fails at once.

Rows stream from disk through ``Dataset.from_generator``, which validates each record as it goes
and writes Arrow only into the HF datasets cache. The cache key is this module's source, the input's
path, size and mtime (and those of the corpus and queries files; a named dataset's own fingerprint),
so an edited file is read afresh.

Bad input raises :class:`~dpo_retrieval.errors.UserInputError` with one line,
``path:N: problem``, where N is the 1-based line for text files and the 1-based row for Parquet and
saved datasets (no N where no line applies: a missing file, an unknown extension...).

:func:`save_triplets` writes the canonical JSON Lines that :func:`load_triplets` reads back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpo_retrieval.data.fields import Ref, _parse_record
from dpo_retrieval.data.lines import Err, _at
from dpo_retrieval.data.readers import (_ROW_FORMATS, _TEXT_FORMATS, _kind_of, _load_named, _records,
                                        load_beir_corpus, load_beir_queries)
from dpo_retrieval.errors import UserInputError

if TYPE_CHECKING:  # importing datasets takes a second; only the loaders need it
    import datasets


logger = logging.getLogger(__name__)

__all__ = [
    "ANCHOR",
    "POSITIVE",
    "load_beir_corpus",
    "load_beir_queries",
    "count_negatives",
    "first_negatives",
    "load_triplets",
    "negative_columns",
    "save_triplets",
    "triplet_columns",
]

ANCHOR = "anchor"
POSITIVE = "positive"


def negative_columns(k: int) -> list[str]:
    """``["negative_1", ..., "negative_k"]``."""
    return [f"negative_{i}" for i in range(1, k + 1)]


def triplet_columns(k: int) -> list[str]:
    """The columns of a loaded triplet dataset with k negatives, in order."""
    return [ANCHOR, POSITIVE, *negative_columns(k)]


# ----------------------------------------------------------------------------------------------
# the generator behind Dataset.from_generator
def _generate_triplets(kind: str, path: str, corpus: str | None, queries: str | None):
    unit = "row" if kind in _ROW_FORMATS else "line"
    tables: dict[str, dict[str, str] | None] = {"query_id": None, "doc_id": None}
    if corpus is not None or queries is not None:
        # first pass: which ids are needed, so only those texts are held in memory
        wanted: dict[str, set[str]] = {"query_id": set(), "doc_id": set()}
        for n, record in _records(kind, path):
            a, ps, negs = _parse_record(record, _at(path, n))
            for ref in (a, *ps, *negs):
                if ref[0] != "text":
                    wanted[ref[0]].add(ref[1])
        if not wanted["query_id"] and not wanted["doc_id"]:
            logger.warning("%s holds texts, not ids, so the BEIR corpus/queries files are not used (a "
                           "TSV/CSV of ids needs a header row such as query_id, positive_id, negative_id)",
                           path)
        if queries is not None and wanted["query_id"]:
            tables["query_id"] = load_beir_queries(queries, ids=wanted["query_id"])
        if corpus is not None and wanted["doc_id"]:
            tables["doc_id"] = load_beir_corpus(corpus, ids=wanted["doc_id"])
    sources = {"query_id": (queries, "queries", "queries"), "doc_id": (corpus, "corpus", "corpus")}

    def resolve(ref: Ref, err: Err) -> str:
        kind_, value, field = ref
        if kind_ == "text":
            return value
        table = tables[kind_]
        src, what, option = sources[kind_]
        if src is None:
            raise err(f"{field!r} is an id, but no BEIR {what} file was given to look it up in "
                      f"({option}=..., --{option})")
        text = table.get(value) if table is not None else None
        if text is None:
            raise err(f"{field} {value!r} is not in {src}")
        if not text.strip():
            raise err(f"{field} {value!r} has empty text in {src}")
        return text

    k = first = None
    for n, record in _records(kind, path):
        err = _at(path, n)
        anchor, positives, negatives = _parse_record(record, err)
        if k is None:
            k, first = len(negatives), n
        elif len(negatives) != k:
            raise err(f"{len(negatives)} negative{'s' if len(negatives) != 1 else ''}, but {unit} {first} "
                      f"has {k}; every triplet needs the same number")
        query = resolve(anchor, err)
        negative_texts = {f"negative_{i}": resolve(ref, err) for i, ref in enumerate(negatives, 1)}
        for positive in positives:
            yield {ANCHOR: query, POSITIVE: resolve(positive, err), **negative_texts}


_CODE_HASH: str | None = None


def _code_hash() -> str:
    global _CODE_HASH
    if _CODE_HASH is None:
        here = Path(__file__).parent  # the readers and parsers this module's output depends on
        sources = b"".join((here / f"{m}.py").read_bytes() for m in ("fields", "lines", "readers", "triplets"))
        _CODE_HASH = hashlib.sha256(sources).hexdigest()
    return _CODE_HASH


def _stamp(p: Path) -> str:
    """Identity of a file (or of every file in a directory): path, size, mtime."""
    if p.is_dir():
        parts = []
        for root, dirs, files in os.walk(p):
            dirs.sort()
            for name in sorted(files):
                f = Path(root, name)
                st = f.stat()
                parts.append(f"{f.relative_to(p)}:{st.st_size}:{st.st_mtime_ns}")
        return f"{p.resolve()}|" + "|".join(parts)
    st = p.stat()
    return f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"

def _beir_arg(path: str | os.PathLike | None, what: str) -> str | None:
    if path is None:
        return None
    s = os.fspath(path)
    if not Path(s).exists():
        raise UserInputError.at(s, None, f"no such file (the BEIR {what}.jsonl)")
    if Path(s).is_dir():
        raise UserInputError.at(s, None, f"is a directory; expected a BEIR {what}.jsonl file")
    return s


def _check_first_record(kind: str, path: str) -> None:
    """Read and check the first record alone: an empty, header-only or malformed file fails at once."""
    records = _records(kind, path)
    try:
        n, record = next(records)
    except StopIteration:  # the readers raise on a file without records; this is a guard
        raise UserInputError.at(path, 1, "no triplets") from None
    finally:
        records.close()
    _parse_record(record, _at(path, n))


def _user_error(exc: BaseException) -> UserInputError | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserInputError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def load_triplets(path: str | os.PathLike, *, corpus: str | os.PathLike | None = None,
                  queries: str | os.PathLike | None = None,
                  cache_dir: str | os.PathLike | None = None) -> "datasets.Dataset":
    """Triplets from ``path`` as a Dataset with string columns ``anchor, positive, negative_1..k``.

    ``corpus`` and ``queries`` are BEIR ``corpus.jsonl`` and ``queries.jsonl`` files that resolve
    id triplets. ``cache_dir`` overrides the HF datasets cache (the only place anything is written).
    Bad input raises :class:`UserInputError` naming the file, the line (or row) and the problem.
    """
    path = os.fspath(path)
    kind = _kind_of(path)
    corpus_s, queries_s = _beir_arg(corpus, "corpus"), _beir_arg(queries, "queries")
    if kind in _TEXT_FORMATS:  # the first record, before the second it takes to import datasets
        _check_first_record(kind, path)
    import datasets

    try:
        stamp = f"{path}:{_load_named(path)._fingerprint}" if kind == "hub" else _stamp(Path(path))
        key = "\n".join([_code_hash(), kind, stamp,
                         _stamp(Path(corpus_s)) if corpus_s else "-",
                         _stamp(Path(queries_s)) if queries_s else "-"])
    except OSError as e:
        raise UserInputError.at(e.filename or path, None, f"cannot read: {e.strerror or e}") from None
    fingerprint = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    try:
        ds = datasets.Dataset.from_generator(
            _generate_triplets,
            gen_kwargs={"kind": kind, "path": path, "corpus": corpus_s, "queries": queries_s},
            fingerprint=fingerprint,
            cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
        )
    except Exception as e:  # datasets wraps what the generator raises in a DatasetGenerationError
        user = _user_error(e)
        if user is not None and user is not e:
            raise user from None
        raise
    k = len(ds.column_names) - 2
    logger.info("loaded %d triplets with %d negative%s each from %s", ds.num_rows, k, "s" if k != 1 else "", path)
    return ds


def count_negatives(dataset: "datasets.Dataset") -> int:
    """Hard negatives per row of a loaded triplet dataset (its ``negative_<i>`` columns)."""
    return sum(1 for c in dataset.column_names if c.startswith("negative_"))


def first_negatives(dataset: "datasets.Dataset", n: int | None, source: str | os.PathLike) -> "datasets.Dataset":
    """``dataset`` (as :func:`load_triplets` returns it) with only its first ``n`` negatives per row, the
    columns ``negative_{n+1}..`` dropped; None keeps all. A file with fewer than ``n`` negatives per row
    (``source`` names it) raises :class:`UserInputError` naming the ``negatives`` option."""
    if n is None:
        return dataset
    k = count_negatives(dataset)
    if k < n:
        raise UserInputError(f"negatives: {n} asked for, but {os.fspath(source)} has {k} negative"
                             f"{'s' if k != 1 else ''} per triplet")
    extra = negative_columns(k)[n:]
    return dataset.remove_columns(extra) if extra else dataset


# ----------------------------------------------------------------------------------------------
def save_triplets(dataset: "datasets.Dataset | Iterable[Mapping[str, Any]]", path: str | os.PathLike) -> int:
    """Write triplets as JSON Lines ``{"anchor", "positive", "negative_1".."negative_k"}``; returns the count.

    ``dataset`` is a Dataset or any iterable of mappings in a shape :func:`load_triplets` accepts
    (text, not ids). The file appears whole or not at all (a temp file, then ``os.replace``). Rows
    that are not valid triplets raise ValueError (a bug in the caller, not bad user input).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    count, k = 0, None
    try:
        with open(tmp, "x", encoding="utf-8", newline="\n") as f:
            for i, record in enumerate(dataset, 1):
                def err(problem: str, i: int = i) -> ValueError:
                    return ValueError(f"save_triplets: row {i}: {problem}")

                anchor, positives, negatives = _parse_record(record, err)
                if any(r[0] != "text" for r in (anchor, *positives, *negatives)):
                    raise err("holds ids, not texts; resolve them before saving")
                if k is None:
                    k = len(negatives)
                elif len(negatives) != k:
                    raise err(f"{len(negatives)} negatives, but row 1 has {k}")
                for positive in positives:  # one triplet per positive
                    row = dict(zip(triplet_columns(k), (r[1] for r in (anchor, positive, *negatives))))
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    count += 1
            if count == 0:
                raise ValueError("save_triplets: no triplets to save")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info("wrote %d triplets to %s", count, path)
    return count
