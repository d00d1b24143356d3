"""Triplet records: field names (matched ignoring case, spaces and ``-``/``_``) and one record
(a mapping of field name -> value) parsed into references to texts or ids."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from dpo_retrieval.data.lines import Err


__all__ = ["join_title_text"]

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
