"""Triplet files in, a ``datasets.Dataset`` of ``anchor, positive, negative_1 .. negative_k`` out.

:func:`load_triplets` reads (query, positive, negative...) triplets from

* JSON Lines (``.jsonl``, ``.ndjson``, or ``.json`` holding JSON Lines or one JSON array of objects)
  with ``query``/``anchor``, ``positive`` and ``negative`` (text or a list), ``negatives: [...]``
  or ``negative_1 .. negative_k``; this covers the files of neighbouring tools:

  - FlagEmbedding: ``{"query", "pos": [...], "neg": [...]}`` (``prompt``, ``pos_scores``,
    ``neg_scores`` and ``type`` are ignored);
  - Tevatron: ``{"query_id", "query", "positive_passages": [{"docid", "title", "text"}],
    "negative_passages": [...]}``; a passage object is ``(title + " " + text).strip()``
    (:func:`join_title_text`, BEIR's convention);
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
by :func:`iter_lines`, the one line decoder the BEIR readers share: a UTF-8 BOM is dropped. The
first record of a text file is checked before ``datasets`` is imported, so an empty or header-only
file fails at once.

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

import csv
import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpo_retrieval.errors import UserInputError

if TYPE_CHECKING:  # importing datasets takes a second; only the loaders need it
    import datasets

logger = logging.getLogger(__name__)

__all__ = [
    "ANCHOR",
    "POSITIVE",
    "iter_lines",
    "join_title_text",
    "load_beir_corpus",
    "load_beir_queries",
    "load_triplets",
    "negative_columns",
    "save_triplets",
    "triplet_columns",
]

ANCHOR = "anchor"
POSITIVE = "positive"

#: file suffix -> reader kind ("hf" is a saved-dataset directory)
_SUFFIXES = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
    ".tsv": "tsv", ".txt": "tsv", ".csv": "csv", ".parquet": "parquet",
}
_ROW_FORMATS = ("parquet", "hf", "hub")  # numbered by row, not by line
_TEXT_FORMATS = ("jsonl", "json", "tsv", "csv")  # read without importing datasets or pyarrow
_HUB_PREFIX = "hf://"
#: a dataset name such as ``org/name`` or ``org/name:config`` (used when no such file exists)
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(?::[\w.-]+)?")
_BATCH = 1024


def negative_columns(k: int) -> list[str]:
    """``["negative_1", ..., "negative_k"]``."""
    return [f"negative_{i}" for i in range(1, k + 1)]


def triplet_columns(k: int) -> list[str]:
    """The columns of a loaded triplet dataset with k negatives, in order."""
    return [ANCHOR, POSITIVE, *negative_columns(k)]


# ----------------------------------------------------------------------------------------------
# field names
_ANCHOR_TEXT = ("query", "anchor")
_ANCHOR_ID = ("query_id", "qid", "anchor_id")
# "answer": sentence-transformers' (query, answer) datasets; "*_passages": Tevatron's lists of passages
_POSITIVE_TEXT = ("positive", "pos", "answer", "positives", "positive_passages")
_POSITIVE_ID = ("positive_id", "pos_id", "positive_ids", "pos_ids")
_NEGATIVE_TEXT = ("negative", "negatives", "neg", "negative_passages")
_NEGATIVE_ID = ("negative_id", "negative_ids", "neg_id", "neg_ids")
_NEGATIVE_TEXT_N = re.compile(r"(?:negative|neg)_?(\d+)")
_NEGATIVE_ID_N = re.compile(r"(?:negative|neg)_?id_?(\d+)|(?:negative|neg)_?(\d+)_?id")
_PLAIN_NAMES = frozenset(_ANCHOR_TEXT + _ANCHOR_ID + _POSITIVE_TEXT + _POSITIVE_ID
                         + _NEGATIVE_TEXT + _NEGATIVE_ID)
# a header cell naming one negative each; several such columns make a list
_REPEATABLE = frozenset(_NEGATIVE_TEXT + _NEGATIVE_ID)


def _norm(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def _known(norm_name: str) -> bool:
    return (norm_name in _PLAIN_NAMES or _NEGATIVE_TEXT_N.fullmatch(norm_name) is not None
            or _NEGATIVE_ID_N.fullmatch(norm_name) is not None)


def _numbered(norm_name: str, pattern: re.Pattern) -> int | None:
    m = pattern.fullmatch(norm_name)
    if m is None:
        return None
    return int(next(g for g in m.groups() if g is not None))


# ----------------------------------------------------------------------------------------------
# one record (a mapping of field name -> value) -> refs to text or ids
Err = Callable[[str], Exception]
# a reference to one text: ("text", the text, field) or ("query_id" | "doc_id", the id, field)
Ref = tuple[str, str, str]


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        text = repr(value)
        return f"a number ({text[:20] + '...' if len(text) > 20 else text})"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (bytes, bytearray)):
        return "bytes"
    if isinstance(value, str):
        return "text"
    return f"a {type(value).__name__}"


def _text(value: Any, field: str, err: Err) -> Ref:
    if not isinstance(value, str):
        raise err(f"{field!r} must be text, got {_describe(value)}")
    if not value.strip():
        raise err(f"{field!r} is empty" if not value else f"{field!r} is only whitespace")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise err(f"{field!r} holds an unpaired UTF-16 surrogate (a lone \\ud8xx escape?)") from None
    return ("text", value, field)


def join_title_text(title: str | None, text: str | None) -> str:
    """BEIR's document string: ``(title + " " + text).strip()``; a missing title or text counts as ``""``."""
    return f"{title or ''} {text or ''}".strip()


def _doc_text(value: Any, field: str, err: Err) -> Ref:
    """A positive or negative: text, or a passage object ``{"title", "text", ...}`` (Tevatron)."""
    if not isinstance(value, Mapping):
        return _text(value, field, err)
    joined = _passage(value, err, field)
    if not joined:
        blank = not (value.get("title") or value.get("text"))
        raise err(f"{field!r} is empty" if blank else f"{field!r} is only whitespace")
    return _text(joined, field, err)


def _id(value: Any, field: str, kind: str, err: Err) -> Ref:
    if isinstance(value, int) and not isinstance(value, bool):
        return (kind, str(value), field)
    if not isinstance(value, str):
        raise err(f"{field!r} must be an id (text or an integer), got {_describe(value)}")
    if not value.strip():
        raise err(f"{field!r} is an empty id")
    return (kind, value, field)


def _one_of(fields: dict, names: Iterable[str], err: Err) -> str | None:
    present = [n for n in names if n in fields]
    if len(present) > 1:
        a, b = (fields[n][0] for n in present[:2])
        raise err(f"both {a!r} and {b!r} given; keep one")
    return present[0] if present else None


def _found(fields_in: Iterable[Any]) -> str:
    names = [repr(k) for k in fields_in][:12]
    return ", ".join(names) if names else "none"


def _single(fields: dict, text_names, id_names, id_kind: str, role: str, err: Err, keys) -> Ref:
    name = _one_of(fields, text_names, err)
    if name is not None:
        return _text(fields[name][1], fields[name][0], err)
    name = _one_of(fields, id_names, err)
    if name is not None:
        return _id(fields[name][1], fields[name][0], id_kind, err)
    raise err(f"missing {role}: expected a field {text_names[0]!r} (or {text_names[1]!r}, or "
              f"{id_names[0]!r} looked up in a BEIR file); fields found: {_found(keys)}")


def _positives(fields: dict, err: Err, keys) -> list[Ref]:
    """The positive, or each of a list of positives (FlagEmbedding ``pos``, Tevatron ``positive_passages``)."""
    for names, convert in ((_POSITIVE_TEXT, _doc_text),
                           (_POSITIVE_ID, lambda v, f, e: _id(v, f, "doc_id", e))):
        name = _one_of(fields, names, err)
        if name is None:
            continue
        orig, value = fields[name]
        if not isinstance(value, (list, tuple)):
            return [convert(value, orig, err)]
        if not value:
            raise err(f"{orig!r} is an empty list; at least one positive is needed")
        return [convert(v, f"{orig}[{j}]", err) for j, v in enumerate(value)]
    raise err(f"missing the positive: expected a field 'positive' (or 'pos', 'answer', 'positive_passages', "
              f"or 'positive_id' looked up in a BEIR file); fields found: {_found(keys)}")


def _negatives(fields: dict, plain: tuple[str, ...], numbered: re.Pattern, convert, err: Err) -> list[Ref] | None:
    """The negatives given one way (a plain field, maybe a list, or numbered fields), else None."""
    plain_name = _one_of(fields, plain, err)
    nums = {}
    for n, (orig, _) in fields.items():
        i = _numbered(n, numbered)
        if i is not None:
            if i in nums:
                raise err(f"both {fields[nums[i]][0]!r} and {orig!r} given; keep one")
            nums[i] = n
    if plain_name is not None and nums:
        other = fields[nums[min(nums)]][0]
        raise err(f"both {fields[plain_name][0]!r} and {other!r} given; give the negatives one way")
    if plain_name is not None:
        orig, value = fields[plain_name]
        if isinstance(value, (list, tuple)):
            if not value:
                raise err(f"{orig!r} is an empty list; at least one negative is needed")
            return [convert(v, f"{orig}[{j}]") for j, v in enumerate(value)]
        return [convert(value, orig)]
    if nums:
        expected = set(range(1, len(nums) + 1))
        if set(nums) != expected:
            extra = fields[nums[min(set(nums) - expected)]][0]
            missing = min(expected - set(nums))
            raise err(f"{extra!r} given without a negative number {missing}; number them 1, 2, ... k")
        return [convert(fields[nums[i]][1], fields[nums[i]][0]) for i in range(1, len(nums) + 1)]
    return None


def _parse_record(record: Any, err: Err) -> tuple[Ref, list[Ref], list[Ref]]:
    """A record's query, positives (one or more) and negatives as refs; raises ``err(problem)`` on bad input.

    A record with several positives stands for one triplet per positive, each with all the negatives."""
    if not isinstance(record, Mapping):
        raise err(f"expected an object with query/positive/negative fields, got {_describe(record)}")
    fields: dict[str, tuple[str, Any]] = {}
    for key, value in record.items():
        if not isinstance(key, str):
            continue
        n = _norm(key)
        if not _known(n):
            continue
        if n in fields:
            raise err(f"both {fields[n][0]!r} and {key!r} given; keep one")
        fields[n] = (key, value)
    keys = list(record.keys())
    anchor = _single(fields, _ANCHOR_TEXT, _ANCHOR_ID, "query_id", "the query", err, keys)
    positives = _positives(fields, err, keys)
    negatives = _negatives(fields, _NEGATIVE_TEXT, _NEGATIVE_TEXT_N,
                           lambda v, f: _doc_text(v, f, err), err)
    if negatives is None:
        negatives = _negatives(fields, _NEGATIVE_ID, _NEGATIVE_ID_N,
                               lambda v, f: _id(v, f, "doc_id", err), err)
    if negatives is None:
        raise err("missing the negatives: expected a field 'negative', 'negatives' (a list) or "
                  "'negative_1'..'negative_k' (or 'negative_id'/'negative_ids' looked up in a BEIR "
                  f"corpus); fields found: {_found(keys)}")
    return anchor, positives, negatives


# ----------------------------------------------------------------------------------------------
# readers: each yields (line or row number, record)
def _at(path, line: int | None) -> Err:
    return lambda problem: UserInputError.at(path, line, problem)


def _decode(raw: bytes, path, line_no: int) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserInputError.at(path, line_no, f"not valid UTF-8: byte 0x{raw[e.start]:02x} at byte "
                                               f"{e.start + 1} of the line (save the file as UTF-8)") from None
    if line_no == 1 and text.startswith("\ufeff"):
        text = text[1:]
    return text


def _open(path):
    try:
        return open(path, "rb")
    except OSError as e:
        raise UserInputError.at(path, None, f"cannot read: {e.strerror or e}") from None


def iter_lines(path) -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded line with its line ending) for every line of a UTF-8 text file.

    The one line decoder of every reader here and in :mod:`dpo_retrieval.data.beir`: a UTF-8 BOM
    before the first line is dropped; bytes that are not UTF-8 raise ``path:N: not valid UTF-8``."""
    with _open(path) as f:
        line_no = 0
        try:
            for line_no, raw in enumerate(f, 1):
                yield line_no, _decode(raw, path, line_no)
        except OSError as e:
            raise UserInputError.at(path, line_no + 1, f"cannot read: {e.strerror or e}") from None


def _no_records(path, saw_lines: bool, what: str = "triplets") -> UserInputError:
    if saw_lines:
        return UserInputError.at(path, 1, f"no {what}: the file holds only blank lines")
    return UserInputError.at(path, 1, f"empty file: no {what}")


def _json_problem(e: json.JSONDecodeError) -> str:
    return f"invalid JSON: {e.msg} (column {e.colno})"


def _iter_jsonl(path, what: str = "triplets", hint: str = "") -> Iterator[tuple[int, Any]]:
    saw_lines = saw_records = False
    for line_no, line in iter_lines(path):
        saw_lines = True
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserInputError.at(path, line_no, _json_problem(e) + hint) from None
        except RecursionError:
            raise UserInputError.at(path, line_no, "invalid JSON: nested too deeply") from None
        saw_records = True
        yield line_no, value
    if not saw_records:
        raise _no_records(path, saw_lines, what)


_JSON_WS = re.compile(r"[ \t\n\r]*")


def _first_byte(path) -> bytes:
    """The first byte of the file that is not whitespace or a BOM (b"" if none)."""
    with _open(path) as f:
        chunk = f.read(65536).removeprefix(b"\xef\xbb\xbf")
        while chunk:
            rest = chunk.lstrip(b" \t\r\n")
            if rest:
                return rest[:1]
            chunk = f.read(65536)
    return b""


def _iter_json(path) -> Iterator[tuple[int, Any]]:
    if _first_byte(path) != b"[":
        yield from _iter_jsonl(path, hint=" (a .json file must hold JSON Lines, one object per "
                                          "line, or one JSON array of objects)")
        return
    # one JSON array: parsed in memory, element by element, to know each element's line
    with _open(path) as f:
        try:
            data = f.read()
        except OSError as e:
            raise UserInputError.at(path, None, f"cannot read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_no = data.count(b"\n", 0, e.start) + 1
        start = data.rfind(b"\n", 0, e.start) + 1
        raise UserInputError.at(path, line_no, f"not valid UTF-8: byte 0x{data[e.start]:02x} at byte "
                                               f"{e.start - start + 1} of the line (save the file as UTF-8)") from None
    text = text.removeprefix("\ufeff")
    decoder = json.JSONDecoder()
    pos = _JSON_WS.match(text, 0).end() + 1  # after "["
    line_no, counted = 1, 0

    def line_at(i: int) -> int:
        nonlocal line_no, counted
        line_no += text.count("\n", counted, i)
        counted = i
        return line_no

    pos = _JSON_WS.match(text, pos).end()
    if text.startswith("]", pos):
        raise UserInputError.at(path, line_at(pos), "empty JSON array: no triplets")
    while True:
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise UserInputError.at(path, e.lineno, _json_problem(e)) from None
        except RecursionError:
            raise UserInputError.at(path, line_at(pos), "invalid JSON: nested too deeply") from None
        yield line_at(pos), value
        pos = _JSON_WS.match(text, end).end()
        if text.startswith(",", pos):
            pos = _JSON_WS.match(text, pos + 1).end()
            if text.startswith("]", pos) or pos >= len(text):
                raise UserInputError.at(path, line_at(pos), "invalid JSON: expected a value after ','")
        elif text.startswith("]", pos):
            pos = _JSON_WS.match(text, pos + 1).end()
            if pos < len(text):
                raise UserInputError.at(path, line_at(pos), "invalid JSON: extra data after the array")
            return
        else:
            raise UserInputError.at(path, line_at(pos), "invalid JSON: expected ',' or ']' in the array"
                                    if pos < len(text) else "invalid JSON: the array is not closed with ']'")


def _tsv_rows(path) -> Iterator[tuple[int, list[str]]]:
    for line_no, line in iter_lines(path):
        yield line_no, line.rstrip("\r\n").split("\t")


def _csv_rows(path) -> Iterator[tuple[int, list[str]]]:
    lines = (line for _, line in iter_lines(path))
    reader = csv.reader(lines, strict=True)
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            problem = f"malformed CSV: {e}"
            if "field larger than field limit" in str(e):
                problem = (f"a field is longer than {csv.field_size_limit()} characters, the csv module's "
                           "limit; use .tsv or .jsonl for long passages")
            raise UserInputError.at(path, max(reader.line_num, start), problem) from None
        yield start, row


def _iter_delimited(path, kind: str) -> Iterator[tuple[int, dict[str, Any]]]:
    rows = _tsv_rows(path) if kind == "tsv" else _csv_rows(path)
    sep = "tab-separated" if kind == "tsv" else "comma-separated"
    header: dict[str, Any] | None = None  # field -> column index, or a list of them
    ncols = first_line = None
    saw_lines = saw_records = False
    for line_no, cells in rows:
        saw_lines = True
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue  # blank line
        if ncols is None:
            ncols, first_line = len(cells), line_no
            header = _header(cells, path, line_no)
            if header is not None:
                continue
            if ncols < 3:
                hint = " (is it comma-separated? name it .csv)" if kind == "tsv" and "," in cells[0] else ""
                raise UserInputError.at(path, line_no, f"expected at least 3 {sep} columns (query, positive, "
                                                       f"negative...), got {ncols}{hint}")
        elif len(cells) != ncols:
            like = "the header" if header is not None else f"line {first_line}"
            hint = f" (a {'tab' if kind == 'tsv' else 'comma'} inside a text?)" if len(cells) > ncols else ""
            raise UserInputError.at(path, line_no, f"expected {ncols} columns like {like}, got {len(cells)}{hint}")
        saw_records = True
        if header is None:
            yield line_no, {"query": cells[0], "positive": cells[1],
                            **{f"negative_{i}": c for i, c in enumerate(cells[2:], 1)}}
        else:
            yield line_no, {name: [cells[j] for j in idx] if isinstance(idx, list) else cells[idx]
                            for name, idx in header.items()}
    if not saw_records:
        if ncols is not None:  # a header and nothing else
            raise UserInputError.at(path, first_line, "no triplets: only a header row")
        raise _no_records(path, saw_lines)


def _header(cells: list[str], path, line_no: int) -> dict[str, Any] | None:
    """The first row as a header (field -> column index, or a list of indices), or None if it is data.

    It is a header when at least two cells are known field names; other cells are ignored."""
    names = [_norm(c) for c in cells]
    if sum(_known(n) for n in names) < 2:
        return None
    header: dict[str, Any] = {}
    ignored = []
    for j, (cell, n) in enumerate(zip(cells, names)):
        if not _known(n):
            ignored.append(cell)
        elif n in header:
            if n not in _REPEATABLE:
                raise UserInputError.at(path, line_no, f"header names column {cell!r} twice")
            if not isinstance(header[n], list):
                header[n] = [header[n]]
            header[n].append(j)
        else:
            header[n] = j
    if ignored:
        logger.info("%s: ignoring header columns %s", path, ", ".join(map(repr, ignored)))
    return header


def _iter_parquet(path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise UserInputError.at(path, None, f"not a readable Parquet file: {e}") from None
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=_BATCH):
            for record in batch.to_pylist():
                row += 1
                yield row, record
    except (pa.ArrowException, OSError) as e:
        raise UserInputError.at(path, row + 1, f"cannot read Parquet: {e}") from None
    if row == 0:
        raise UserInputError.at(path, None, "no triplets: the Parquet file has 0 rows")


def _iter_saved(path) -> Iterator[tuple[int, dict[str, Any]]]:
    import datasets
    import pyarrow as pa

    try:
        ds = datasets.load_from_disk(str(path))
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as e:
        raise UserInputError.at(path, None, f"cannot load the saved dataset: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise UserInputError.at(path, None, f"the saved DatasetDict has no 'train' split "
                                                f"(splits: {', '.join(ds) or 'none'})")
        ds = ds["train"]
    return _iter_dataset(ds, path, "saved")


def _hub_name(spec: str) -> tuple[str, str | None]:
    """``hf://org/name:config`` or ``org/name:config`` -> (``org/name``, ``config`` or None)."""
    name, _, config = spec.removeprefix(_HUB_PREFIX).partition(":")
    return name, config or None


def _load_named(spec: str) -> "datasets.Dataset":
    """The ``train`` split of a dataset name through ``datasets.load_dataset`` (a one-line error if it fails)."""
    import datasets

    name, config = _hub_name(spec)
    try:
        ds = datasets.load_dataset(name, config, split="train")
    except Exception as e:  # noqa: BLE001 - offline, not found, no train split...: one line, no traceback
        from huggingface_hub import constants

        if datasets.config.HF_HUB_OFFLINE or constants.HF_HUB_OFFLINE:
            offline = ", ".join(f"{v}={os.environ[v]}" for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
                                if os.environ.get(v)) or "offline mode"
            raise UserInputError.at(spec, None, f"no such file or directory, and dataset {name!r} is not in the "
                                                f"local HF datasets cache (offline: {offline}); load it once "
                                                "online, or give a file") from None
        first = next((line for line in str(e).splitlines() if line.strip()), "")
        raise UserInputError.at(spec, None, f"no such file or directory, and datasets.load_dataset({name!r}"
                                            f"{', ' + repr(config) if config else ''}, split='train') failed: "
                                            f"{type(e).__name__}: {first}") from None
    if not isinstance(ds, datasets.Dataset):
        raise UserInputError.at(spec, None, f"datasets.load_dataset({name!r}) gave a {type(ds).__name__}, "
                                            "not one split")
    return ds


def _iter_dataset(ds: "datasets.Dataset", path, what: str) -> Iterator[tuple[int, dict[str, Any]]]:
    if ds.num_rows == 0:
        raise UserInputError.at(path, None, f"no triplets: the {what} dataset has 0 rows")
    row = 0
    for batch in ds.iter(batch_size=_BATCH):
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns)):
            row += 1
            yield row, dict(zip(columns, values))


def _records(kind: str, path) -> Iterator[tuple[int, Any]]:
    if kind == "jsonl":
        return _iter_jsonl(path)
    if kind == "json":
        return _iter_json(path)
    if kind in ("tsv", "csv"):
        return _iter_delimited(path, kind)
    if kind == "parquet":
        return _iter_parquet(path)
    if kind == "hub":
        return _iter_dataset(_load_named(path), path, "named")
    return _iter_saved(path)


# ----------------------------------------------------------------------------------------------
# BEIR corpus and queries
def _beir_jsonl(path, what: str, items: str, ids: Collection[str] | None,
                value: Callable[[dict, Err], str]) -> dict[str, str]:
    path_str = str(path)
    p = Path(path)
    if not p.exists():
        raise UserInputError.at(path_str, None, "no such file")
    if p.is_dir():
        raise UserInputError.at(path_str, None, f"is a directory; expected a BEIR {what}.jsonl file")
    wanted = None if ids is None else set(ids)
    out: dict[str, str] = {}
    for line_no, obj in _iter_jsonl(path_str, what=items):
        err = _at(path_str, line_no)
        if not isinstance(obj, dict):
            raise err(f"expected a JSON object with '_id' and 'text', got {_describe(obj)}")
        if "_id" not in obj:
            raise err(f"missing field '_id'; fields found: {_found(obj)}")
        doc_id = obj["_id"]
        if isinstance(doc_id, int) and not isinstance(doc_id, bool):
            doc_id = str(doc_id)
        if not isinstance(doc_id, str) or not doc_id:
            raise err(f"'_id' must be a non-empty id (text or an integer), got {_describe(doc_id)}")
        text = value(obj, err)
        if wanted is not None and doc_id not in wanted:
            continue
        if doc_id in out:
            raise err(f"duplicate _id {doc_id!r}")
        out[doc_id] = text
    return out


def _field(obj: Mapping, name: str, err: Err, required: bool, owner: str | None = None) -> str:
    """``obj[name]`` as text; ``owner`` names the object when it is a field of a record (a passage)."""
    v = obj.get(name)
    if v is None:
        if required:
            if owner is not None:
                raise err(f"{owner!r} has no {name!r}" if name not in obj else f"'{owner}.{name}' is null")
            raise err(f"missing field {name!r}" if name not in obj else f"{name!r} is null")
        return ""
    if not isinstance(v, str):
        where = name if owner is None else f"{owner}.{name}"
        raise err(f"{where!r} must be text, got {_describe(v)}")
    return v


def _passage(obj: Mapping, err: Err, owner: str | None = None) -> str:
    """A BEIR document or a Tevatron passage as one string, :func:`join_title_text`."""
    return join_title_text(_field(obj, "title", err, False, owner), _field(obj, "text", err, True, owner))


def load_beir_corpus(path: str | os.PathLike, *, ids: Collection[str] | None = None) -> dict[str, str]:
    """A BEIR ``corpus.jsonl`` as ``{_id: (title + " " + text).strip()}``.

    ``ids`` keeps only those documents (the whole file is still checked line by line). Bad lines
    raise :class:`UserInputError` (``path:line: problem``).
    """
    return _beir_jsonl(path, "corpus", "documents", ids, _passage)


def load_beir_queries(path: str | os.PathLike, *, ids: Collection[str] | None = None) -> dict[str, str]:
    """A BEIR ``queries.jsonl`` as ``{_id: text}``; ``ids`` keeps only those queries."""
    return _beir_jsonl(path, "queries", "queries", ids, lambda obj, err: _field(obj, "text", err, required=True))


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
        _CODE_HASH = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
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


def _kind_of(path: str) -> str:
    p = Path(path)
    if path.startswith(_HUB_PREFIX):
        return "hub"
    if not p.exists():
        if _HUB_NAME.fullmatch(path) and p.suffix.lower() not in _SUFFIXES:
            return "hub"  # a dataset name for datasets.load_dataset
        raise UserInputError.at(path, None, "no such file or directory")
    if p.is_dir():
        if (p / "state.json").is_file() or (p / "dataset_dict.json").is_file():
            return "hf"
        raise UserInputError.at(path, None, "is a directory but not a saved HF datasets dataset "
                                            "(no state.json or dataset_dict.json in it)")
    kind = _SUFFIXES.get(p.suffix.lower())
    if kind is None:
        raise UserInputError.at(path, None, f"unknown file type {p.suffix or '(no extension)'!r}: expected "
                                            ".jsonl, .json, .tsv, .txt, .csv, .parquet or a saved HF "
                                            "datasets directory")
    return kind


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
