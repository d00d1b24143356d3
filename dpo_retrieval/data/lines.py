"""The one line decoder of triplet and BEIR files (:func:`iter_lines`: UTF-8, BOM dropped, errors
named ``path:N``) and the JSON Lines reader built on it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from dpo_retrieval.errors import UserInputError


__all__ = ["iter_lines"]

Err = Callable[[str], Exception]


# ----------------------------------------------------------------------------------------------
# lines of a text file, decoded once
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
