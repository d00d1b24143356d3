"""Fuzz load_triplets: any file gives a valid triplet Dataset or a one-line UserInputError, nothing else."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dpo_retrieval.data.triplets import load_triplets
from dpo_retrieval.errors import UserInputError

FUZZ = settings(max_examples=100, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

KEYS = ["query", "anchor", "positive", "pos", "negative", "negatives", "neg", "negative_1", "negative_2",
        "negative_3", "Query", "query_id", "positive_id", "negative_ids", "_id", "text"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                    st.sampled_from(["", " ", "\t\n", "q", "passage text", "\u2028x", "\x00", "\ud800"]), st.text(max_size=8))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)), max_leaves=12)
json_objects = st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), json_values, max_size=6)
# mostly-valid objects too, so that successes are exercised and not only errors
words = st.text(alphabet="abc xyz\u00e9\u2028", min_size=1, max_size=8)
near_valid = st.fixed_dictionaries(
    {"query": st.one_of(words, words, scalars), "positive": st.one_of(words, words, scalars)},
    optional={"negative": st.one_of(words, words, st.lists(words, max_size=2), scalars),
              "negatives": st.lists(words, max_size=2)})
valid_lists = st.integers(1, 3).flatmap(lambda k: st.lists(st.fixed_dictionaries(
    {"anchor": words, "positive": words, "negatives": st.lists(words, min_size=k, max_size=k)}), min_size=1, max_size=3))
record_lists = st.one_of(valid_lists, st.lists(near_valid, min_size=1, max_size=4),
                         st.lists(st.one_of(json_objects, near_valid, json_values), max_size=4))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hf-cache")


def check(path: Path, cache: Path) -> None:
    try:
        ds = load_triplets(path, cache_dir=cache)
    except UserInputError as e:
        msg = str(e)
        assert msg.startswith(f"{path}:"), msg
        assert re.match(re.escape(str(path)) + r"(:\d+)?: \S", msg), msg
        assert "\n" not in msg, msg
        event("UserInputError")
        return
    k = len(ds.column_names) - 2
    assert k >= 1
    assert ds.column_names == ["anchor", "positive"] + [f"negative_{i}" for i in range(1, k + 1)]
    assert ds.num_rows >= 1
    for row in ds:
        for value in row.values():
            assert isinstance(value, str) and value.strip()
    event("valid dataset")


def write_and_check(suffix: str, content: bytes, cache: Path) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"fuzz{suffix}"
        path.write_bytes(content)
        check(path, cache)


@FUZZ
@given(content=st.binary(max_size=200))
def test_arbitrary_bytes_as_jsonl(content, cache):
    write_and_check(".jsonl", content, cache)


@FUZZ
@given(content=st.one_of(st.binary(max_size=200),
                         st.lists(st.lists(st.sampled_from(["q", "p", "n", "", " ", "query", "positive", "negative",
                                                            "\xe9", "\xff", '"']), max_size=5), max_size=5)
                         .map(lambda rows: "".join("\t".join(r) + "\n" for r in rows).encode("latin-1"))))
def test_arbitrary_bytes_as_tsv(content, cache):
    write_and_check(".tsv", content, cache)


@FUZZ
@given(records=record_lists,
       suffix=st.sampled_from([".jsonl", ".json"]), as_array=st.booleans())
def test_arbitrary_json_objects(records, suffix, as_array, cache):
    if suffix == ".json" and as_array:
        text = json.dumps(records, indent=1)
    else:
        text = "".join(json.dumps(r) + "\n" for r in records)
    write_and_check(suffix, text.encode("utf-8"), cache)
