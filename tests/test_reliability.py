"""Reliability (issue 6): bad input, atomic writes, numerical safety, safe loading, BEIR fuzzing.

The bad-input table drives ``dpo_retrieval.cli.main`` with one malformed file or option per case and
checks the CLI contract: exit status != 0, exactly one line on stderr (progress bars aside) naming
the file:line or the option and the problem, no traceback, and nothing created or modified on disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dpo_retrieval.cli import main
from dpo_retrieval.errors import UserInputError
from test_beir import CORPUS as BEIR_CORPUS

PACKAGE = Path(__file__).resolve().parents[1] / "dpo_retrieval"


# ----------------------------------------------------------------------------------------------
# valid inputs that the cases below break one thing in
def jl(*rows) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


TRIPLETS = [
    ("what causes cancer", "mutation causes cancer cells", "the water fiber"),
    ("does sleep increase risk", "sleep and heart disease risk", "vitamin and infants"),
    ("how does insulin work", "insulin signal pathway", "white matter in the brain"),
    ("can a virus cause infection", "virus infection and immune response", "birth weight of infants"),
]
GOOD = [{"query": q, "positive": p, "negative": n} for q, p, n in TRIPLETS]
CORPUS = dict(list(BEIR_CORPUS.items())[:5])  # the BEIR tests' corpus without d6
QUERIES = {"q1": "how does insulin work", "q2": "what causes heart disease", "q3": "virus infection"}
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq3\td5\t1\n"
CORPUS_LINES = [{"_id": d, "title": t, "text": x} for d, (t, x) in CORPUS.items()]
QUERY_LINES = [{"_id": q, "text": t} for q, t in QUERIES.items()]
DATASET = {"ds/corpus.jsonl": jl(*CORPUS_LINES), "ds/queries.jsonl": jl(*QUERY_LINES),
           "ds/qrels/test.tsv": QRELS.encode()}
ID_TRIPLETS = {"ids.jsonl": jl({"query_id": "q1", "positive_id": "d1", "negative_id": "d2"},
                               {"query_id": "q2", "positive_id": "d2", "negative_id": "d3"})}
DIR = object()  # a file entry that is a directory instead
INDEX = object()  # copy the module's valid index directory here


def dataset(**files) -> dict:
    out = dict(DATASET)
    # corpus__jsonl -> corpus.jsonl, qrels__test__tsv -> qrels/test.tsv
    out.update({"ds/" + ".".join(k.rsplit("__", 1)).replace("__", "/"): v for k, v in files.items()})
    return {k: v for k, v in out.items() if v is not None}


def ids(**files) -> dict:
    return {**ID_TRIPLETS, **dataset(**files)}


def train(triplets: str = "t.jsonl", *extra: str) -> list[str]:
    return ["--quiet", "train", "--triplets", "{tmp}/" + triplets, "--output", "{tmp}/out", "--model", "{model}",
            "--batch-size", "2", "--max-seq-length", "16", "--precision", "fp32", "--max-steps", "1", *extra]


def train_ids(*extra: str) -> list[str]:
    return train("ids.jsonl", "--corpus", "{tmp}/ds/corpus.jsonl", "--queries", "{tmp}/ds/queries.jsonl", *extra)


EVALUATE = ["--quiet", "evaluate", "--dataset", "{tmp}/ds", "--output", "{tmp}/res.json", "--model", "{model}",
            "--precision", "fp32", "--batch-size", "4", "--top-k", "5"]
SEARCH = ["--quiet", "search", "--index", "{tmp}/idx", "--query", "what causes cancer", "--output", "{tmp}/run.trec"]
INDEX_CMD = ["--quiet", "index", "--corpus", "{tmp}/ds/corpus.jsonl", "--output", "{tmp}/idx2", "--model", "{model}",
             "--precision", "fp32"]
MINE = ["--quiet", "mine", "--dataset", "{tmp}/ds", "--split", "test", "--output", "{tmp}/mined", "--model", "{model}"]
GOOD_TRIPLETS = {"t.jsonl": jl(*GOOD)}


@dataclass
class Case:
    id: str
    files: dict
    argv: list
    expect: str  # regex; {tmp} stands for the case's directory
    notes: str = field(default="")


def _idx(**changes) -> dict:
    """The valid index at idx/, with files replaced (bytes), removed (None) or JSON-edited (callable)."""
    return {"idx": INDEX, **{f"idx/{k.replace('_json', '.json').replace('_faiss', '.faiss')}": v
                             for k, v in changes.items()}}


def _meta(**kv):
    return lambda meta: {**meta, **kv}


CASES = [
    # --- triplets: JSON Lines -------------------------------------------------------------------
    Case("jsonl-truncated-line", {"t.jsonl": jl(GOOD[0], '{"query": "q", "positive": "p"')}, train(),
         r"t\.jsonl:2: invalid JSON"),
    Case("jsonl-missing-negative", {"t.jsonl": jl({"query": "q", "positive": "p"})}, train(),
         r"t\.jsonl:1: missing the negatives"),
    Case("jsonl-missing-query", {"t.jsonl": jl({"positive": "p", "negative": "n"})}, train(),
         r"t\.jsonl:1: missing the query"),
    Case("jsonl-extra-conflicting-column", {"t.jsonl": jl({**GOOD[0], "anchor": "other"})}, train(),
         r"t\.jsonl:1: both 'query' and 'anchor' given"),
    Case("jsonl-empty-string", {"t.jsonl": jl(GOOD[0], {**GOOD[1], "positive": ""})}, train(),
         r"t\.jsonl:2: 'positive' is empty"),
    Case("jsonl-whitespace-string", {"t.jsonl": jl({**GOOD[0], "query": "  \t "})}, train(),
         r"t\.jsonl:1: 'query' is only whitespace"),
    Case("jsonl-number-for-text", {"t.jsonl": jl({**GOOD[0], "positive": 3.5})}, train(),
         r"t\.jsonl:1: 'positive' must be text, got a number"),
    Case("jsonl-null-negative", {"t.jsonl": jl({**GOOD[0], "negative": None})}, train(),
         r"t\.jsonl:1: 'negative' must be text, got null"),
    Case("jsonl-object-for-query", {"t.jsonl": jl({**GOOD[0], "query": {"a": 1}})}, train(),
         r"t\.jsonl:1: 'query' must be text, got an object"),
    Case("jsonl-line-not-object", {"t.jsonl": jl(GOOD[0], "[1, 2, 3]")}, train(),
         r"t\.jsonl:2: expected an object"),
    Case("jsonl-non-utf8", {"t.jsonl": jl(GOOD[0]) + b'{"query": "caf\xe9", "positive": "p", "negative": "n"}\n'},
         train(), r"t\.jsonl:2: not valid UTF-8"),
    Case("jsonl-empty-file", {"t.jsonl": b""}, train(), r"t\.jsonl:1: empty file"),
    Case("jsonl-blank-lines-only", {"t.jsonl": b"\n  \n\n"}, train(), r"t\.jsonl:1: no triplets"),
    Case("jsonl-ragged-negatives", {"t.jsonl": jl(GOOD[0], {**GOOD[1], "negative": ["a", "b"]})}, train(),
         r"t\.jsonl:2: 2 negatives, but line 1 has 1"),
    Case("jsonl-empty-negative-list", {"t.jsonl": jl({**GOOD[0], "negative": []})}, train(),
         r"t\.jsonl:1: 'negative' is an empty list"),
    Case("jsonl-negative-numbering-gap", {"t.jsonl": jl({"query": "q", "positive": "p", "negative_2": "n"})},
         train(), r"t\.jsonl:1: 'negative_2' given without a negative number 1"),
    # --- triplets: .json array --------------------------------------------------------------------
    Case("json-array-truncated", {"t.json": b'[\n' + json.dumps(GOOD[0]).encode() + b',\n{"query": "q"'},
         train("t.json"), r"t\.json:3: invalid JSON"),
    Case("json-array-non-object", {"t.json": json.dumps([GOOD[0], 5], indent=1).encode()}, train("t.json"),
         r"t\.json:\d+: expected an object"),
    Case("json-empty-array", {"t.json": b"[ ]"}, train("t.json"), r"t\.json:1: empty JSON array"),
    Case("json-extra-data", {"t.json": json.dumps([GOOD[0]]).encode() + b"\n]"}, train("t.json"),
         r"t\.json:2: invalid JSON: extra data"),
    # --- triplets: TSV / CSV ----------------------------------------------------------------------
    Case("tsv-missing-column", {"t.tsv": b"q\tp\n"}, train("t.tsv"),
         r"t\.tsv:1: expected at least 3 tab-separated columns"),
    Case("tsv-extra-column", {"t.tsv": b"q\tp\tn\nq2\tp2\tn2\tx\n"}, train("t.tsv"),
         r"t\.tsv:2: expected 3 columns like line 1, got 4"),
    Case("tsv-empty-cell", {"t.tsv": b"q\t\tn\n"}, train("t.tsv"), r"t\.tsv:1: 'positive' is empty"),
    Case("tsv-header-only", {"t.tsv": b"query\tpositive\tnegative\n"}, train("t.tsv"),
         r"t\.tsv:1: no triplets: only a header row"),
    Case("tsv-non-utf8", {"t.tsv": b"caf\xe9\tp\tn\n"}, train("t.tsv"), r"t\.tsv:1: not valid UTF-8"),
    Case("tsv-empty-file", {"t.tsv": b""}, train("t.tsv"), r"t\.tsv:1: empty file"),
    Case("csv-unclosed-quote", {"t.csv": b'q,p,n\n"q2,p2,n2\n'}, train("t.csv"), r"t\.csv:\d+: malformed CSV"),
    Case("csv-missing-column", {"t.csv": b"q,p,n\nq2,p2\n"}, train("t.csv"),
         r"t\.csv:2: expected 3 columns like line 1, got 2"),
    Case("csv-header-duplicate-column", {"t.csv": b"query,positive,positive,negative\nq,p,p,n\n"}, train("t.csv"),
         r"t\.csv:1: header names column 'positive' twice"),
    # --- triplets: Parquet, saved datasets, paths --------------------------------------------------
    Case("parquet-corrupt", {"t.parquet": b"PAR1 this is not parquet"}, train("t.parquet"),
         r"t\.parquet: not a readable Parquet file"),
    Case("parquet-wrong-type", {"t.parquet": "parquet-int-query"}, train("t.parquet"),
         r"t\.parquet:1: 'query' must be text, got a number"),
    Case("parquet-zero-rows", {"t.parquet": "parquet-empty"}, train("t.parquet"),
         r"t\.parquet: no triplets: the Parquet file has 0 rows"),
    Case("hf-dir-not-a-dataset", {"hf": DIR, "hf/notes.txt": b"x"}, train("hf"),
         r"hf: is a directory but not a saved HF datasets dataset"),
    Case("triplets-directory-for-file", {"t.jsonl": DIR}, train(), r"t\.jsonl: is a directory"),
    Case("triplets-missing", {}, train(), r"t\.jsonl: no such file"),
    Case("triplets-unknown-extension", {"t.xlsx": b"x"}, train("t.xlsx"), r"t\.xlsx: unknown file type '\.xlsx'"),
    # --- id triplets + BEIR corpus/queries ----------------------------------------------------------
    Case("ids-without-corpus", ID_TRIPLETS, train("ids.jsonl"),
         r"ids\.jsonl:1: 'query_id' is an id, but no BEIR queries file"),
    Case("ids-unknown-query", {**ids(), "ids.jsonl": jl({"query_id": "q9", "positive_id": "d1", "negative_id": "d2"})},
         train_ids(), r"ids\.jsonl:1: query_id 'q9' is not in .*queries\.jsonl"),
    Case("ids-unknown-doc", {**ids(), "ids.jsonl": jl({"query_id": "q1", "positive_id": "d1", "negative_id": "d9"})},
         train_ids(), r"ids\.jsonl:1: negative_id 'd9' is not in .*corpus\.jsonl"),
    Case("ids-corpus-duplicate-id", ids(corpus__jsonl=jl(*CORPUS_LINES, CORPUS_LINES[1])), train_ids(),
         r"corpus\.jsonl:6: duplicate _id 'd2'"),
    Case("ids-corpus-is-directory", {**ID_TRIPLETS, "c": DIR, **dataset()},
         train("ids.jsonl", "--corpus", "{tmp}/c", "--queries", "{tmp}/ds/queries.jsonl"),
         r"/c: is a directory; expected a BEIR corpus\.jsonl file"),
    Case("ids-queries-non-utf8", ids(queries__jsonl=jl(*QUERY_LINES) + b'{"_id": "q4", "text": "\xff"}\n'),
         train_ids(), r"queries\.jsonl:4: not valid UTF-8"),
    Case("ids-corpus-missing-text", ids(corpus__jsonl=jl({"_id": "d1", "title": "t"}, *CORPUS_LINES[1:])),
         train_ids(), r"corpus\.jsonl:1: missing field 'text'"),
    Case("ids-corpus-truncated-json", ids(corpus__jsonl=jl(*CORPUS_LINES[:2], '{"_id": "d3", "te')), train_ids(),
         r"corpus\.jsonl:3: invalid JSON"),
    Case("ids-corpus-missing", {**ID_TRIPLETS, **dataset(corpus__jsonl=None)}, train_ids(),
         r"corpus\.jsonl: no such file"),
    # --- BEIR dataset directory (evaluate) ----------------------------------------------------------
    Case("beir-corpus-truncated-json", dataset(corpus__jsonl=jl(*CORPUS_LINES[:2], '{"_id": "d3"')), EVALUATE,
         r"ds/corpus\.jsonl:3: invalid JSON"),
    Case("beir-corpus-duplicate-id", dataset(corpus__jsonl=jl(*CORPUS_LINES, CORPUS_LINES[0])), EVALUATE,
         r"ds/corpus\.jsonl:6: duplicate _id 'd1'"),
    Case("beir-corpus-missing-id", dataset(corpus__jsonl=jl(*CORPUS_LINES, {"text": "x"})), EVALUATE,
         r"ds/corpus\.jsonl:6: missing \"_id\""),
    Case("beir-corpus-number-text", dataset(corpus__jsonl=jl(*CORPUS_LINES, {"_id": "d9", "text": 5})), EVALUATE,
         r"ds/corpus\.jsonl:6: \"title\" and \"text\" must be strings"),
    Case("beir-corpus-line-not-object", dataset(corpus__jsonl=jl(*CORPUS_LINES, "[1]")), EVALUATE,
         r"ds/corpus\.jsonl:6: expected a JSON object"),
    Case("beir-corpus-non-utf8", dataset(corpus__jsonl=jl(*CORPUS_LINES) + b'{"_id": "d9", "text": "\xe9"}\n'),
         EVALUATE, r"ds/corpus\.jsonl:6: not valid UTF-8: byte 0xe9"),  # one decoder with the triplet reader
    Case("beir-corpus-empty", dataset(corpus__jsonl=b""), EVALUATE, r"ds/corpus\.jsonl(:\d+)?: empty"),
    Case("beir-corpus-is-directory", {**dataset(corpus__jsonl=None), "ds/corpus.jsonl": DIR}, EVALUATE,
         r"ds/corpus\.jsonl: is a directory"),
    Case("beir-queries-empty-text", dataset(queries__jsonl=jl({"_id": "q1", "text": ""}, *QUERY_LINES[1:])),
         EVALUATE, r"ds/queries\.jsonl:1: missing or empty \"text\""),
    Case("beir-queries-missing-text", dataset(queries__jsonl=jl({"_id": "q1"}, *QUERY_LINES[1:])), EVALUATE,
         r"ds/queries\.jsonl:1: missing or empty \"text\""),
    Case("beir-queries-duplicate-id", dataset(queries__jsonl=jl(*QUERY_LINES, QUERY_LINES[0])), EVALUATE,
         r"ds/queries\.jsonl:4: duplicate _id 'q1'"),
    Case("beir-queries-missing", dataset(queries__jsonl=None), EVALUATE, r"ds/queries\.jsonl: missing"),
    Case("beir-qrels-unknown-doc", dataset(qrels__test__tsv=(QRELS + "q1\td9\t1\n").encode()), EVALUATE,
         r"ds/qrels/test\.tsv:5: corpus-id 'd9' is not in the corpus"),
    Case("beir-qrels-unknown-query", dataset(qrels__test__tsv=(QRELS + "q9\td1\t1\n").encode()), EVALUATE,
         r"ds/qrels/test\.tsv:5: query-id 'q9' is not in queries\.jsonl"),
    Case("beir-qrels-score-not-integer", dataset(qrels__test__tsv=(QRELS + "q1\td2\thigh\n").encode()), EVALUATE,
         r"ds/qrels/test\.tsv:5: score 'high' is not an integer"),
    Case("beir-qrels-missing-column", dataset(qrels__test__tsv=(QRELS + "q1\td2\n").encode()), EVALUATE,
         r"ds/qrels/test\.tsv:5: expected 3 tab-separated columns"),
    Case("beir-qrels-header-only", dataset(qrels__test__tsv=b"query-id\tcorpus-id\tscore\n"), EVALUATE,
         r"ds/qrels/test\.tsv: no judgments"),
    Case("beir-qrels-non-utf8", dataset(qrels__test__tsv=QRELS.encode() + b"q1\td\xe92\t1\n"), EVALUATE,
         r"ds/qrels/test\.tsv:5: not valid UTF-8: byte 0xe9"),
    Case("beir-qrels-missing-split", dataset(), EVALUATE + ["--split", "dev"],
         r"ds/qrels/dev\.tsv: no 'dev' split; this dataset has: test"),
    Case("beir-qrels-is-directory", {**dataset(qrels__test__tsv=None), "ds/qrels/test.tsv": DIR}, EVALUATE,
         r"ds/qrels/test\.tsv: is a directory"),
    Case("beir-dataset-is-file", {"ds": b"x"}, EVALUATE, r"ds: is a file"),
    Case("beir-dataset-missing", {}, EVALUATE, r"ds: no such dataset directory"),
    # --- index directories (search) ------------------------------------------------------------------
    Case("index-missing", {}, SEARCH, r"idx: no such index directory"),
    Case("index-is-file", {"idx": b"x"}, SEARCH, r"idx: is a file"),
    Case("index-meta-corrupt-json", _idx(metadata_json=b'{"format_version": 1,'), SEARCH,
         r"idx/metadata\.json(:\d+)?: invalid JSON"),
    Case("index-meta-missing", _idx(metadata_json=None), SEARCH, r"idx/metadata\.json: missing"),
    Case("index-meta-not-object", _idx(metadata_json=b"[]"), SEARCH, r"idx/metadata\.json: unsupported index format"),
    Case("index-meta-wrong-version", _idx(metadata_json=_meta(format_version=99)), SEARCH,
         r"idx/metadata\.json: unsupported index format 99"),
    Case("index-meta-count-mismatch", _idx(metadata_json=_meta(count=99)), SEARCH, r"idx: inconsistent index"),
    Case("index-meta-dimension-mismatch", _idx(metadata_json=_meta(dimension=7)), SEARCH, r"idx: inconsistent index"),
    Case("index-meta-non-utf8", _idx(metadata_json=b'{"a": "\xff"}'), SEARCH, r"idx/metadata\.json(:\d+)?: invalid"),
    Case("index-doc-ids-count-mismatch", _idx(doc_ids_json=lambda ids: ids[:-1]), SEARCH,
         r"idx: inconsistent index: 5 vectors, 4 ids"),
    Case("index-doc-ids-not-a-list", _idx(doc_ids_json=b"42"), SEARCH, r"idx/doc_ids\.json: expected a list"),
    Case("index-doc-ids-duplicate", _idx(doc_ids_json=lambda ids: [ids[0]] + ids[:-1]), SEARCH,
         r"idx/doc_ids\.json: duplicate document id 'd1'"),
    Case("index-faiss-corrupt", _idx(index_faiss=b"not a faiss index"), SEARCH,
         r"idx/index\.faiss: FAISS cannot read it"),
    Case("index-faiss-missing", _idx(index_faiss=None), SEARCH, r"idx/index\.faiss: missing"),
    Case("index-titles-wrong-length", _idx(titles_json=b'["a"]'), SEARCH,
         r"idx/titles\.json: expected a list of 5 titles"),
    # --- model directories (index) ---------------------------------------------------------------------
    Case("model-empty-directory", {**dataset(), "m": DIR}, [*INDEX_CMD, "--model", "{tmp}/m"],
         r"m: not a model directory"),
    Case("model-is-a-file", {**dataset(), "m": b"x"}, [*INDEX_CMD, "--model", "{tmp}/m"],
         r"m: not a model directory"),
    Case("model-corrupt-modules-json", {**dataset(), "m": "model", "m/modules.json": b"[{"},
         [*INDEX_CMD, "--model", "{tmp}/m"], r"--model: cannot load '.*/m'"),
    Case("model-truncated-safetensors", {**dataset(), "m": "model", "m/model.safetensors": b"\x08\x00\x00\x00"},
         [*INDEX_CMD, "--model", "{tmp}/m"], r"--model: cannot load '.*/m'"),
    Case("model-missing-offline", dataset(), [*INDEX_CMD, "--model", "no-such-org/no-such-model"],
         r"--model: cannot load 'no-such-org/no-such-model'"),
    # --- numeric and choice options ------------------------------------------------------------------
    Case("opt-batch-size-zero", GOOD_TRIPLETS, train("t.jsonl", "--batch-size", "0"), r"--batch-size: must be > 0"),
    Case("opt-batch-size-negative", GOOD_TRIPLETS, train("t.jsonl", "--batch-size", "-4"),
         r"--batch-size: must be > 0"),
    Case("opt-batch-size-not-int", GOOD_TRIPLETS, train("t.jsonl", "--batch-size", "2.5"),
         r"--batch-size: expected an integer"),
    Case("opt-beta-zero", GOOD_TRIPLETS, train("t.jsonl", "--beta", "0"), r"--beta: must be a finite number > 0"),
    Case("opt-beta-negative", GOOD_TRIPLETS, train("t.jsonl", "--beta", "-1"), r"--beta: must be a finite number > 0"),
    Case("opt-beta-nan", GOOD_TRIPLETS, train("t.jsonl", "--beta", "nan"), r"--beta: must be a finite number > 0"),
    Case("opt-beta-inf", GOOD_TRIPLETS, train("t.jsonl", "--beta", "inf"), r"--beta: must be a finite number > 0"),
    Case("opt-scale-zero", GOOD_TRIPLETS, train("t.jsonl", "--scale", "0"), r"--scale: must be a finite number > 0"),
    Case("opt-scale-negative", GOOD_TRIPLETS, train("t.jsonl", "--scale", "-20"),
         r"--scale: must be a finite number > 0"),
    Case("opt-unknown-loss", GOOD_TRIPLETS, train("t.jsonl", "--loss", "triplet"), r"--loss: invalid choice: 'triplet'"),
    Case("opt-unknown-policy", GOOD_TRIPLETS, train("t.jsonl", "--policy", "tanh"), r"--policy: invalid choice"),
    Case("opt-unknown-loss-type", GOOD_TRIPLETS, train("t.jsonl", "--loss-type", "kto"), r"--loss-type: invalid choice"),
    Case("opt-lr-zero", GOOD_TRIPLETS, train("t.jsonl", "--lr", "0"), r"--lr: must be a finite number > 0"),
    Case("opt-epochs-zero", GOOD_TRIPLETS, train("t.jsonl", "--epochs", "0"), r"--epochs: must be a finite number > 0"),
    Case("opt-label-smoothing-half", GOOD_TRIPLETS, train("t.jsonl", "--label-smoothing", "0.5"),
         r"--label-smoothing: must be in \[0, 0\.5\)"),
    Case("opt-warmup-negative", GOOD_TRIPLETS, train("t.jsonl", "--warmup", "-1"), r"--warmup: must be >= 0"),
    Case("opt-max-seq-length-zero", GOOD_TRIPLETS, train("t.jsonl", "--max-seq-length", "0"),
         r"--max-seq-length: must be > 0"),
    Case("opt-gradient-accumulation-zero", GOOD_TRIPLETS, train("t.jsonl", "--gradient-accumulation", "0"),
         r"--gradient-accumulation: must be > 0"),
    Case("opt-save-steps-zero", GOOD_TRIPLETS, train("t.jsonl", "--save-steps", "0"), r"--save-steps: must be > 0"),
    Case("opt-unknown-precision", GOOD_TRIPLETS, train("t.jsonl", "--precision", "fp8"), r"--precision: invalid choice"),
    Case("opt-fp16-on-cpu", GOOD_TRIPLETS, train("t.jsonl", "--precision", "fp16", "--device", "cpu"),
         r"--precision: fp16 needs a CUDA device"),
    Case("opt-unknown-on-nonfinite", GOOD_TRIPLETS, train("t.jsonl", "--on-nonfinite", "ignore"),
         r"--on-nonfinite: invalid choice"),
    Case("opt-output-is-a-file", {**GOOD_TRIPLETS, "out": b"keep me"}, train(), r"--output: .*out exists and is not a directory"),
    Case("opt-output-not-empty", {**GOOD_TRIPLETS, "out/mine.txt": b"keep me"}, train(),
         r"--output: .*out already exists and is not empty"),
    Case("opt-resume-finished-model", {**GOOD_TRIPLETS, "out/modules.json": b"[]"}, train("t.jsonl", "--resume"),
         r"--resume: .*out holds a finished model and no checkpoint"),
    Case("opt-search-k-zero", _idx(), [*SEARCH, "-k", "0"], r"--top-k: must be > 0"),
    Case("opt-search-unknown-format", _idx(), [*SEARCH, "--format", "csv"], r"--format: invalid choice"),
    Case("opt-search-run-suffix", _idx(), [*SEARCH[:-1], "{tmp}/run.csv"], r"--output: cannot tell the run format"),
    Case("opt-index-chunk-size-zero", dataset(), [*INDEX_CMD, "--chunk-size", "0"], r"--chunk-size: must be > 0"),
    Case("opt-index-bad-factory", dataset(), [*INDEX_CMD, "--factory", "Bogus42"], r"--factory: FAISS cannot build"),
    Case("opt-index-output-is-file", {**dataset(), "idx2": b"keep"}, INDEX_CMD, r"idx2: is a file"),
    Case("opt-evaluate-top-k-negative", dataset(), [*EVALUATE, "--top-k", "-1"], r"--top-k: must be > 0"),
    Case("opt-mine-rank-window-format", dataset(), [*MINE, "--rank-window", "50"], r"--rank-window: expected MIN-MAX"),
    Case("opt-mine-rank-window-reversed", dataset(), [*MINE, "--rank-window", "50-10"],
         r"--rank-window: need 0 <= min < max"),
    Case("opt-mine-dev-fraction", dataset(), [*MINE, "--dev-fraction", "2"], r"--dev-fraction: must be in \[0, 1\)"),
    Case("opt-mine-negatives-zero", dataset(), [*MINE, "--negatives", "0"], r"--negatives: must be > 0"),
    Case("opt-unknown-command", {}, ["train-fast"], r"invalid choice: 'train-fast'"),
    Case("opt-device-cuda-without-gpu", GOOD_TRIPLETS, train("t.jsonl", "--device", "cuda"),
         r"--device: cuda requested but CUDA is not available"),
]


# ----------------------------------------------------------------------------------------------
# fixtures and helpers
@pytest.fixture(scope="module")
def built_index(tiny_model_path, tmp_path_factory) -> Path:
    from dpo_retrieval.retrieval.search import index_corpus
    from dpo_retrieval.models import load_model

    root = tmp_path_factory.mktemp("reliability-index")
    (root / "corpus.jsonl").write_bytes(DATASET["ds/corpus.jsonl"])
    index_corpus(load_model(tiny_model_path, device="cpu"), root / "idx", corpus=root / "corpus.jsonl",
                 precision="fp32", model_name=tiny_model_path, show_progress_bar=False)
    return root / "idx"


def _parquet(path: Path, kind: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if kind == "parquet-int-query":
        table = pa.table({"query": [1, 2], "positive": ["p", "p2"], "negative": ["n", "n2"]})
    else:
        table = pa.table({"query": pa.array([], pa.string()), "positive": pa.array([], pa.string()),
                          "negative": pa.array([], pa.string())})
    pq.write_table(table, path)


def materialize(files: dict, root: Path, *, index: Path | None, model: str) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is DIR:
            path.mkdir(exist_ok=True)
        elif content is INDEX:
            shutil.copytree(index, path)
        elif content == "model":
            shutil.copytree(model, path)
        elif isinstance(content, str) and content.startswith("parquet"):
            _parquet(path, content)
        elif callable(content):
            path.write_text(json.dumps(content(json.loads(path.read_text()))))
        elif content is None:
            path.unlink()
        else:
            path.write_bytes(content)


def snapshot(*roots: Path) -> dict:
    """Every path under ``roots`` with its size, mtime and content hash (directories too)."""
    out = {}
    for root in roots:
        root = Path(root)
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames:
                out[str(Path(dirpath, name))] = "dir"
            for name in filenames:
                p = Path(dirpath, name)
                st_ = p.stat()
                out[str(p)] = (st_.st_size, st_.st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
    return out


def error_lines(err: str) -> list[str]:
    """The stderr lines a terminal shows (what follows a line's last '\\r'), without progress bars
    (lines with 'it/s') and blank lines. A tqdm bar that clears itself (leave=False) ends in '\\r'
    with no newline, so the next line printed shares its line in the raw text."""
    visible = (line.rsplit("\r", 1)[-1] for line in err.split("\n"))
    return [line for line in visible if line.strip() and "it/s" not in line]


class _CurrentStderr:
    """A stream that is whatever ``sys.stderr`` is when written to (capsys swaps it)."""

    def write(self, text):
        sys.stderr.write(text)

    def flush(self):
        sys.stderr.flush()


@pytest.fixture()
def cli_stderr_logging():
    """What ``main``'s logging.basicConfig does outside pytest: WARNING+ records go to stderr, so a
    warning printed next to the error counts as a second line."""
    handler = logging.StreamHandler(_CurrentStderr())
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    yield
    root.removeHandler(handler)


def run_cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    return code, error_lines(capsys.readouterr().err)


def _fill(template: str, tmp: Path, model: str) -> str:
    return template.replace("{tmp}", str(tmp)).replace("{model}", model)


# ----------------------------------------------------------------------------------------------
# 1. the bad-input table
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_cleanly(case, tmp_path, tiny_model_path, built_index, capsys, cli_stderr_logging):
    work = tmp_path / "w"
    work.mkdir()
    needs_index = any(v is INDEX for v in case.files.values())
    materialize(case.files, work, index=built_index if needs_index else None, model=tiny_model_path)
    before = snapshot(work, tiny_model_path)
    argv = [_fill(a, work, tiny_model_path) for a in case.argv]
    code, lines = run_cli(argv, capsys)
    assert code not in (0, None), f"{case.id}: exit status {code}"
    assert len(lines) == 1, f"{case.id}: expected one line on stderr, got {lines}"
    line = lines[0]
    assert line.startswith("dpo-retrieval"), line
    assert "Traceback" not in line
    assert re.search(_fill(case.expect, Path(re.escape(str(work))), tiny_model_path), line), \
        f"{case.id}: {line!r} does not match {case.expect!r}"
    assert snapshot(work, tiny_model_path) == before, f"{case.id}: files were created or modified"


def test_the_table_covers_every_input_kind():
    assert len(CASES) >= 100, len(CASES)
    assert len({c.id for c in CASES}) == len(CASES)
    kinds = {c.id.split("-")[0] for c in CASES}
    assert {"jsonl", "json", "tsv", "csv", "parquet", "hf", "ids", "beir", "index", "model", "opt"} <= kinds


def test_debug_flag_shows_the_traceback(tmp_path, tiny_model_path, capsys):
    bad = tmp_path / "t.jsonl"
    bad.write_bytes(jl('{"query": "q"'))
    with pytest.raises(UserInputError, match=r"t\.jsonl:1: invalid JSON"):
        main(["--debug", *[_fill(a, tmp_path, tiny_model_path) for a in train()]])
    assert not (tmp_path / "out").exists()


def test_cli_error_is_one_line_in_a_real_process(tmp_path, built_index):
    """Outside pytest (the CLI's own logging setup, real warnings), stderr is the one error line."""
    import subprocess

    index = tmp_path / "idx"
    shutil.copytree(built_index, index)
    meta = json.loads((index / "metadata.json").read_text())
    (index / "metadata.json").write_text(json.dumps({**meta, "count": 99}))
    before = snapshot(tmp_path)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONWARNINGS="default")
    proc = subprocess.run([sys.executable, "-m", "dpo_retrieval", "search", "--index", str(index), "--query", "x",
                           "--output", str(tmp_path / "run.trec")],
                          capture_output=True, text=True, env=env, cwd=PACKAGE.parent, timeout=120)
    assert proc.returncode == 2
    assert error_lines(proc.stderr) == [f"dpo-retrieval search: error: {index}: inconsistent index: 5 vectors, "
                                        "5 ids, metadata says 99 x 32"], proc.stderr
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------------------------
# run files (read by the library: evaluation.read_run)
RUN_CASES = [
    ("run.jsonl", b'{"query_id": "q1", "results": [{"doc_id": "d1", "score": 1.0}]}\n{"query_id": "q2", "res',
     r"run\.jsonl:2: not a JSONL run line"),
    ("run.jsonl", b'{"query_id": "q1"}\n', r"run\.jsonl:1: not a JSONL run line"),
    ("run.jsonl", b'{"query_id": "q1", "results": [{"doc_id": "d1", "score": "high"}]}\n',
     r"run\.jsonl:1: not a JSONL run line"),
    ("run.jsonl", b'{"query_id": "q\xe9", "results": []}\n', r"run\.jsonl(:\d+)?: not UTF-8"),
    ("run.trec", b"q1 Q0 d1\n", r"run\.trec: not a TREC run"),
    ("run.trec", b"q1 Q0 d1 1 high tag\n", r"run\.trec: not a TREC run"),
    ("run.trec", b"q1 Q0 d\xe9 1 1.0 tag\n", r"run\.trec: not a TREC run \('utf-8' codec can't decode"),
    ("run.trec", None, r"run\.trec: missing run file"),
    ("run.trec", DIR, r"run\.trec: is a directory"),
    ("run.csv", b"q1,d1,1.0\n", r"output: cannot tell the run format"),
]


@pytest.mark.parametrize("name, content, expect", RUN_CASES, ids=[f"run-{i}" for i in range(len(RUN_CASES))])
def test_bad_run_file_fails_cleanly(tmp_path, name, content, expect):
    from dpo_retrieval.evaluation.runs import read_run

    path = tmp_path / name
    if content is DIR:
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    before = snapshot(tmp_path)
    with pytest.raises(UserInputError) as info:
        read_run(path)
    msg = str(info.value)
    assert "\n" not in msg and re.search(expect, msg), msg
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------------------------
# 2. atomic writes: a failure mid-write leaves nothing loadable and no temporary files
def test_index_write_failure_leaves_no_half_index(tiny_model, tmp_path, monkeypatch):
    import faiss

    from dpo_retrieval.retrieval import index as index_mod
    from dpo_retrieval.retrieval.search import index_corpus
    from dpo_retrieval.retrieval.index import FaissIndex

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(DATASET["ds/corpus.jsonl"])
    out = tmp_path / "idx"
    index_corpus(tiny_model, out, corpus=corpus, precision="fp32", show_progress_bar=False)
    before = snapshot(out)

    def broken_write(index, path):
        Path(path).write_bytes(b"half an index")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(faiss, "write_index", broken_write)
    for target in (tmp_path / "new", out):  # a new directory, and a rebuild over an existing index
        with pytest.raises(OSError, match="No space left"):
            index_corpus(tiny_model, target, corpus=corpus, precision="fp32", show_progress_bar=False)
    assert not (tmp_path / "new").exists()
    assert snapshot(out) == before and FaissIndex.load(out).count == len(CORPUS)  # the old index survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl", "idx"]  # no temporary directory
    assert index_mod.faiss is faiss


def test_json_and_report_writes_are_atomic(tmp_path, monkeypatch):
    from dpo_retrieval._io import write_json
    from dpo_retrieval.evaluation.runs import write_run

    path = tmp_path / "results.json"
    write_json({"ok": 1}, path)
    with pytest.raises(TypeError):  # json.dump fails half-way through the object
        write_json({"a": 1, "b": object()}, path)
    assert json.loads(path.read_text()) == {"ok": 1}

    run = tmp_path / "run.trec"
    write_run({"q1": {"d1": 1.0}}, run)
    old = run.read_bytes()

    class Boom(dict):
        def items(self):
            yield "d2", 0.5
            raise OSError(5, "I/O error")

    with pytest.raises(OSError):
        write_run({"q1": Boom()}, run)
    assert run.read_bytes() == old

    md = tmp_path / "report.md"
    from dpo_retrieval import _io

    _io.write_text(md, "old report\n", fsync=True)

    def failing_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_io.os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        _io.write_text(md, "new report, half written", fsync=True)
    assert md.read_bytes() == b"old report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md", "results.json", "run.trec"]


def test_model_save_failure_leaves_no_loadable_half_model(tiny_model, tmp_path, monkeypatch):
    from dpo_retrieval.training import save as training_save
    from dpo_retrieval.models import load_model

    out = tmp_path / "model"
    out.mkdir()
    # 1. model.save itself fails after writing some files: nothing loadable, no temporary folder
    real_save = type(tiny_model).save

    def half_save(self, path, *args, **kwargs):
        real_save(self, path, *args, **kwargs)
        (Path(path) / "model.safetensors").write_bytes(b"trunc")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(tiny_model), "save", half_save)
    with pytest.raises(OSError):
        training_save.save_model_atomically(tiny_model, out, model_card=False)
    monkeypatch.undo()
    assert list(out.iterdir()) == []

    # 2. a save over an earlier model dies while moving files in (at each possible move): the
    #    mix of old and new files must not load
    training_save.save_model_atomically(tiny_model, out, model_card=False)
    assert load_model(str(out), device="cpu").encode(["hi"]).shape == (1, 32)
    moves = len(list(out.iterdir()))
    real_replace = os.replace
    for fail_at in range(1, moves + 1):
        calls = []

        def dying_replace(src, dst):
            calls.append(dst)
            if len(calls) == fail_at:
                raise OSError(5, "I/O error")
            return real_replace(src, dst)

        monkeypatch.setattr(training_save.os, "replace", dying_replace)
        with pytest.raises(OSError):
            training_save.save_model_atomically(tiny_model, out, model_card=False)
        monkeypatch.undo()
        with pytest.raises(UserInputError, match="not a model directory|cannot load"):
            load_model(str(out), device="cpu")
    training_save.save_model_atomically(tiny_model, out, model_card=False)  # a later save repairs it
    assert load_model(str(out), device="cpu").encode(["hi"]).shape == (1, 32)


# ----------------------------------------------------------------------------------------------
# 3. numerical safety
def _train_argv(tmp_path: Path, model: str, *extra: str) -> list[str]:
    data = tmp_path / "t.jsonl"
    data.write_bytes(jl(*GOOD))
    return ["--quiet", "train", "--triplets", str(data), "--output", str(tmp_path / "out"), "--model", model,
            "--batch-size", "2", "--max-seq-length", "16", "--precision", "fp32", "--logging-steps", "1",
            "--warmup", "0", "--lr", "1e-3", "--loss", "dpo+mnrl", *extra]


def _nonfinite_on_calls(monkeypatch, calls: dict[int, str]):
    """Make the DPO loss NaN ("loss") or its gradient NaN with a finite value ("grad") on given calls."""
    import torch

    from dpo_retrieval.losses import DPOLoss

    real = DPOLoss.forward
    count = {"n": 0}

    def forward(self, *args, **kwargs):
        loss = real(self, *args, **kwargs)
        count["n"] += 1
        what = calls.get(count["n"])
        if what == "loss":
            return loss * float("nan")
        if what == "grad":  # 0 * sqrt(0): the value is 0, the gradient 0 * inf = nan
            p = next(self.model.parameters())
            return loss + 0.0 * torch.sqrt(p.sum() * 0.0)
        return loss

    monkeypatch.setattr(DPOLoss, "forward", forward)


def _weights_finite(path: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    return all(torch.isfinite(t).all() for t in load_file(str(path / "model.safetensors")).values())


def test_nonfinite_loss_and_gradient_are_skipped_and_counted(tmp_path, tiny_model_path, monkeypatch):
    _nonfinite_on_calls(monkeypatch, {2: "loss", 3: "grad"})
    assert main(_train_argv(tmp_path, tiny_model_path, "--max-steps", "4", "--on-nonfinite", "skip")) == 0
    out = tmp_path / "out"
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 4 and summary["skipped_batches"] == 2
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r.get("skipped_batches", 0) for r in log if "loss" in r] == [0, 1, 2, 2]
    assert _weights_finite(out)


@pytest.mark.parametrize("what", ["loss", "grad"])
def test_nonfinite_stops_naming_the_step(tmp_path, tiny_model_path, monkeypatch, capsys, what):
    _nonfinite_on_calls(monkeypatch, {2: what})
    assert main(_train_argv(tmp_path, tiny_model_path, "--max-steps", "3")) == 2
    lines = error_lines(capsys.readouterr().err)
    expect = "non-finite loss (nan) at step 2" if what == "loss" else "non-finite gradient at step 2"
    assert len(lines) == 1 and expect in lines[0] and "nothing was saved" in lines[0], lines
    assert not (tmp_path / "out" / "modules.json").exists()


def test_nan_weights_are_never_saved(tiny_model, tmp_path):
    import torch

    from dpo_retrieval.training.save import NonFiniteError, save_model_atomically

    with torch.no_grad():
        next(tiny_model.parameters())[0].fill_(float("nan"))
    out = tmp_path / "m"
    out.mkdir()
    with pytest.raises(NonFiniteError, match="NaN/inf"):
        save_model_atomically(tiny_model, out)
    assert list(out.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# 4. safe loading
def test_no_unsafe_deserialization_in_the_package():
    """No torch.load without weights_only=True, no pickle, no np.load(allow_pickle=True)."""
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\s*\(", text):
            call = text[m.start():text.find(")", m.end()) + 1]
            if "weights_only=True" not in call:
                problems.append(f"{path.name}: {call}")
        for pattern in (r"\bpickle\.loads?\(", r"allow_pickle\s*=\s*True", r"\bjoblib\.load\(",
                        r"(?<![.\w])eval\(", r"(?<![.\w])exec\("):
            problems += [f"{path.name}: {m.group(0)}" for m in re.finditer(pattern, text)]
    assert not problems, problems


def test_trained_models_are_safetensors(tmp_path, tiny_model_path):
    assert main(_train_argv(tmp_path, tiny_model_path, "--max-steps", "1", "--loss", "contrastive")) == 0
    out = tmp_path / "out"
    assert (out / "model.safetensors").is_file() and (out / "checkpoints" / "checkpoint-1" / "model.safetensors").is_file()
    assert not list(out.rglob("pytorch_model*"))
    # the trainer's own checkpoint files are torch pickles, but transformers reads them back with
    # weights_only=True on --resume, and training_args.bin is never read back
    assert not [p for p in out.rglob("*.bin") if p.name != "training_args.bin"]


def test_remote_code_is_off_unless_asked(tmp_path, tiny_model_path, monkeypatch):
    import sentence_transformers

    from dpo_retrieval.cli import build_parser
    from dpo_retrieval.models import load_model

    seen = []
    real = sentence_transformers.SentenceTransformer

    def spy(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return real(*args, **kwargs)

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", spy)
    load_model(tiny_model_path, device="cpu")
    load_model(tiny_model_path, device="cpu", trust_remote_code=True)
    assert seen == [False, True]
    from dpo_retrieval.cli import train_parser

    train_cmd = ["--triplets", "t", "--output", "o"]  # train's parser is generated from its dataclasses
    assert train_parser().parse_args_into_dataclasses(train_cmd, look_for_args_file=False)[0].trust_remote_code is False
    assert train_parser().parse_args_into_dataclasses([*train_cmd, "--trust-remote-code"],
                                                      look_for_args_file=False)[0].trust_remote_code is True
    parser = build_parser()
    for cmd in (["index", "--corpus", "c", "--output", "o"],
                ["search", "--index", "i", "--query", "q"], ["evaluate", "--dataset", "d", "--output", "o"],
                ["mine", "--dataset", "d", "--output", "o"], ["compare", "--dataset", "d", "--output", "o"]):
        assert parser.parse_args(cmd).trust_remote_code is False
        assert parser.parse_args([*cmd, "--trust-remote-code"]).trust_remote_code is True


# ----------------------------------------------------------------------------------------------
# 5. fuzzing the BEIR readers
FUZZ = settings(max_examples=50, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
ids_ = st.one_of(st.sampled_from(["d1", "d2", "q1", "q2", "", " ", "1"]), st.integers(0, 3), st.none())
texts = st.one_of(st.sampled_from(["text", "", " ", "caf\u00e9", "\u2028"]), st.none(), st.integers(),
                  st.lists(st.text(max_size=2), max_size=1))
junk_obj = st.fixed_dictionaries({}, optional={"_id": ids_, "text": texts, "title": texts})
# mostly-valid documents and queries too, so that valid datasets are exercised, not only errors
doc = st.fixed_dictionaries({"_id": st.sampled_from(["d1", "d2", "d3"]), "text": st.sampled_from(["a text", "b", ""])},
                            optional={"title": st.sampled_from(["", "T", None])})
query = st.fixed_dictionaries({"_id": st.sampled_from(["q1", "q2"]), "text": st.sampled_from(["a query", "b"])})
bad_lines = st.sampled_from(["", "[1]", "null", "{", '{"_id": "d1"'])


def lines_of(*objects):
    line = st.one_of(*[o.map(json.dumps) for o in objects], bad_lines)
    return st.lists(line, max_size=4).map(lambda lines: "\n".join(lines).encode())


def valid_lines(obj):
    return st.lists(obj, min_size=1, max_size=3, unique_by=lambda o: o["_id"]).map(
        lambda objs: "".join(json.dumps(o) + "\n" for o in objs).encode())


qrels_rows = st.lists(st.lists(st.sampled_from(["q1", "q2", "d1", "d2", "1", "0", "x", "", '"']), max_size=4),
                      max_size=4).map(lambda rows: ("query-id\tcorpus-id\tscore\n"
                                                    + "".join("\t".join(r) + "\n" for r in rows)).encode())
good_qrels = st.lists(st.tuples(st.sampled_from(["q1", "q2"]), st.sampled_from(["d1", "d2", "d3"]),
                                st.sampled_from(["0", "1", "2"])), min_size=1, max_size=3).map(
    lambda rows: ("query-id\tcorpus-id\tscore\n" + "".join("\t".join(r) + "\n" for r in rows)).encode())
some_bytes = st.binary(max_size=60)


def _consistent(docs_queries):
    docs, queries = docs_queries
    rows = st.lists(st.tuples(st.sampled_from([q["_id"] for q in queries]), st.sampled_from([d["_id"] for d in docs]),
                              st.sampled_from(["0", "1", "2"])), min_size=1, max_size=3)
    return rows.map(lambda rs: tuple(
        "".join(json.dumps(o) + "\n" for o in objs).encode() for objs in (docs, queries)) + (
        ("query-id\tcorpus-id\tscore\n" + "".join("\t".join(r) + "\n" for r in rs)).encode(), True))


# a consistent dataset (which must load), or three files fuzzed independently
consistent = st.tuples(st.lists(doc, min_size=1, max_size=3, unique_by=lambda o: o["_id"]),
                       st.lists(query, min_size=1, max_size=2, unique_by=lambda o: o["_id"])).flatmap(_consistent)
independent = st.tuples(st.one_of(valid_lines(doc), lines_of(doc, junk_obj), some_bytes),
                        st.one_of(valid_lines(query), lines_of(query, junk_obj), some_bytes),
                        st.one_of(good_qrels, qrels_rows, some_bytes), st.just(False))


@FUZZ
@given(files=st.one_of(consistent, independent))
def test_fuzzed_beir_dataset_loads_or_fails_cleanly(files):
    from dpo_retrieval.data.beir import load_beir

    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "ds"
        (root / "qrels").mkdir(parents=True)
        corpus, queries, qrels, must_load = files
        (root / "corpus.jsonl").write_bytes(corpus)
        (root / "queries.jsonl").write_bytes(queries)
        (root / "qrels" / "test.tsv").write_bytes(qrels)
        try:
            ds = load_beir(root, "test", download=False)
        except UserInputError as err:
            msg = str(err)
            assert "\n" not in msg and msg.startswith(str(root)), msg
            assert not must_load, msg
            event("UserInputError")
            return
    event("valid dataset")
    assert ds.qrels and all(isinstance(k, str) and k for k in ds.corpus)
    for doc in ds.corpus.values():
        assert isinstance(doc.get("text") or "", str) and isinstance(doc.get("title") or "", str)
    assert all(isinstance(q, str) and isinstance(t, str) and t.strip() for q, t in ds.queries.items())
    for qid, rel in ds.qrels.items():
        assert qid in ds.queries
        assert all(d in ds.corpus and isinstance(g, int) for d, g in rel.items())
    assert math.isfinite(len(list(ds.doc_texts())))
