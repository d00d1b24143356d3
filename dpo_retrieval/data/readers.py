"""Triplet file readers (JSON, TSV/CSV, Parquet, saved and named datasets): each yields (line or row
number, record); and the BEIR corpus/queries readers that resolve id triplets."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpo_retrieval.data.fields import _REPEATABLE, _describe, _field, _found, _known, _norm, _passage
from dpo_retrieval.data.lines import Err, _at, _iter_jsonl, _json_problem, _no_records, _open, iter_lines
from dpo_retrieval.errors import UserInputError

if TYPE_CHECKING:  # importing datasets takes a second; only the loaders need it
    import datasets


logger = logging.getLogger(__name__)

__all__ = ["load_beir_corpus", "load_beir_queries"]

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


def load_beir_corpus(path: str | os.PathLike, *, ids: Collection[str] | None = None) -> dict[str, str]:
    """A BEIR ``corpus.jsonl`` as ``{_id: (title + " " + text).strip()}``.

    ``ids`` keeps only those documents (the whole file is still checked line by line). Bad lines
    raise :class:`UserInputError` (``path:line: problem``).
    """
    return _beir_jsonl(path, "corpus", "documents", ids, _passage)


def load_beir_queries(path: str | os.PathLike, *, ids: Collection[str] | None = None) -> dict[str, str]:
    """A BEIR ``queries.jsonl`` as ``{_id: text}``; ``ids`` keeps only those queries."""
    return _beir_jsonl(path, "queries", "queries", ids, lambda obj, err: _field(obj, "text", err, required=True))
