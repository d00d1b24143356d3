"""Inputs from neighbouring tools (issue 15, item 3), one BOM behaviour, and input checks before the model.

Every format is tested on a file the test writes: FlagEmbedding and Tevatron JSON Lines,
sentence-transformers' mined datasets (``anchor/positive/negative_1..k``, ``query/answer/negative*``,
Parquet), a dataset name for ``datasets.load_dataset``; BEIR files that start with a UTF-8 BOM; and the
CLI reporting bad input before any model loads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpo_retrieval.errors import UserInputError

BOM = b"\xef\xbb\xbf"
REPO = Path(__file__).resolve().parents[1]


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def rows_of(ds) -> list[dict]:
    return [dict(r) for r in ds]


def one_line_error(info, path, line) -> str:
    msg = str(info.value)
    where = f"{path}:{line}: " if line is not None else f"{path}: "
    assert msg.startswith(where) and "\n" not in msg, msg
    return msg


# ----------------------------------------------------------------------------------------------
# FlagEmbedding: {"query", "pos": [...], "neg": [...]} (+ prompt, pos_scores, neg_scores, type, ignored)
def test_flagembedding_one_row_per_positive_with_the_same_negatives(tmp_path, load):
    p = write_jsonl(tmp_path / "fe.jsonl", [
        {"query": "what causes anaemia", "pos": ["iron deficiency", "blood loss"], "neg": ["sleep", "vitamin D"],
         "prompt": "Represent this sentence for searching relevant passages: ", "pos_scores": [0.9, 0.8],
         "neg_scores": [0.1, 0.2], "type": "normal"},
        {"query": "insulin", "pos": ["insulin signal pathway"], "neg": ["white matter", "birth weight"]},
    ])
    ds = load(p)
    assert ds.column_names == ["anchor", "positive", "negative_1", "negative_2"]
    assert rows_of(ds) == [
        {"anchor": "what causes anaemia", "positive": "iron deficiency", "negative_1": "sleep", "negative_2": "vitamin D"},
        {"anchor": "what causes anaemia", "positive": "blood loss", "negative_1": "sleep", "negative_2": "vitamin D"},
        {"anchor": "insulin", "positive": "insulin signal pathway", "negative_1": "white matter",
         "negative_2": "birth weight"},
    ]


def test_save_triplets_writes_one_row_per_positive(tmp_path, load):
    from dpo_retrieval.data.triplets import save_triplets

    p = tmp_path / "saved.jsonl"
    assert save_triplets([{"query": "q", "pos": ["a", "b"], "neg": ["n"]}], p) == 2
    assert rows_of(load(p)) == [{"anchor": "q", "positive": "a", "negative_1": "n"},
                                {"anchor": "q", "positive": "b", "negative_1": "n"}]


def test_flagembedding_rows_with_different_negative_counts_are_refused(tmp_path, load):
    p = write_jsonl(tmp_path / "fe.jsonl", [{"query": "q1", "pos": ["p1"], "neg": ["a", "b"]},
                                            {"query": "q2", "pos": ["p2"], "neg": ["a", "b", "c"]}])
    with pytest.raises(UserInputError) as info:
        load(p)
    assert "3 negatives, but line 1 has 2" in one_line_error(info, p, 2)


@pytest.mark.parametrize("record, problem", [
    ({"query": "q", "pos": [], "neg": ["n"]}, "'pos' is an empty list; at least one positive is needed"),
    ({"query": "q", "pos": ["p", 3], "neg": ["n"]}, "'pos[1]' must be text, got a number (3)"),
    ({"query": "q", "pos": ["p"], "neg": []}, "'neg' is an empty list"),
], ids=["no positives", "number in pos", "no negatives"])
def test_flagembedding_bad_lists(tmp_path, load, record, problem):
    p = write_jsonl(tmp_path / "fe.jsonl", [record])
    with pytest.raises(UserInputError) as info:
        load(p)
    assert problem in one_line_error(info, p, 1)


# ----------------------------------------------------------------------------------------------
# Tevatron: query_id + query, positive_passages / negative_passages of {docid, title, text}
def test_tevatron_passages_join_title_and_text_one_row_per_positive(tmp_path, load):
    p = write_jsonl(tmp_path / "tevatron.jsonl", [
        {"query_id": "3", "query": "what causes cancer",
         "positive_passages": [{"docid": "d1", "title": "Cancer", "text": "mutation causes cancer cells"},
                               {"docid": "d2", "title": "", "text": "tumor growth"}],
         "negative_passages": [{"docid": "d3", "title": "Water", "text": "the water fiber"},
                               {"docid": "d4", "text": "  vitamin and infants "}]},
    ])
    ds = load(p)
    assert rows_of(ds) == [
        {"anchor": "what causes cancer", "positive": "Cancer mutation causes cancer cells",
         "negative_1": "Water the water fiber", "negative_2": "vitamin and infants"},
        {"anchor": "what causes cancer", "positive": "tumor growth",
         "negative_1": "Water the water fiber", "negative_2": "vitamin and infants"},
    ]


def test_tevatron_passage_text_is_the_beir_join():
    from dpo_retrieval.data.fields import _passage
    from dpo_retrieval.data.fields import join_title_text

    obj = {"title": " T ", "text": "body "}
    assert _passage(obj, ValueError) == join_title_text(obj["title"], obj["text"]) == "T  body"


@pytest.mark.parametrize("passage, problem", [
    ({"docid": "d1", "title": "t"}, "'positive_passages[0]' has no 'text'"),
    ({"docid": "d1", "title": "t", "text": 5}, "'positive_passages[0].text' must be text, got a number (5)"),
    ({"docid": "d1", "title": "", "text": "  "}, "'positive_passages[0]' is only whitespace"),
], ids=["no text", "number text", "blank"])
def test_tevatron_bad_passages(tmp_path, load, passage, problem):
    p = write_jsonl(tmp_path / "tevatron.jsonl", [
        {"query": "q", "positive_passages": [passage], "negative_passages": [{"docid": "x", "text": "n"}]}])
    with pytest.raises(UserInputError) as info:
        load(p)
    assert problem in one_line_error(info, p, 1)


# ----------------------------------------------------------------------------------------------
# sentence-transformers' mined datasets
def test_sentence_transformers_anchor_positive_negative_n_jsonl(tmp_path, load):
    rows = [{"anchor": "q1", "positive": "p1", "negative_1": "a", "negative_2": "b", "negative_3": "c"}]
    assert rows_of(load(write_jsonl(tmp_path / "st.jsonl", rows))) == rows


def test_sentence_transformers_query_answer_negatives(tmp_path, load):
    p = write_jsonl(tmp_path / "qa.jsonl", [{"query": "q1", "answer": "a1", "negative_1": "n1", "negative_2": "n2"},
                                            {"query": "q2", "answer": "a2", "negative_1": "m1", "negative_2": "m2"}])
    assert rows_of(load(p)) == [{"anchor": "q1", "positive": "a1", "negative_1": "n1", "negative_2": "n2"},
                                {"anchor": "q2", "positive": "a2", "negative_1": "m1", "negative_2": "m2"}]


def _parquet(path: Path, columns: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


def test_mine_hard_negatives_triplet_parquet(tmp_path, load):
    # output_format="triplet" from a (query, answer) dataset: query, answer, negative (+ nothing else)
    p = _parquet(tmp_path / "triplet.parquet", {"query": ["q1", "q1"], "answer": ["a1", "a1"],
                                                "negative": ["n1", "n2"]})
    assert rows_of(load(p)) == [{"anchor": "q1", "positive": "a1", "negative_1": "n1"},
                                {"anchor": "q1", "positive": "a1", "negative_1": "n2"}]


def test_mine_hard_negatives_n_tuple_parquet_with_scores(tmp_path, load):
    # output_format="n-tuple" (output_scores=True): anchor, positive, negative_1..k, scores
    p = _parquet(tmp_path / "ntuple.parquet", {"anchor": ["q1", "q2"], "positive": ["p1", "p2"],
                                               "negative_1": ["a1", "a2"], "negative_2": ["b1", "b2"],
                                               "scores": [[0.9, 0.3, 0.2], [0.8, 0.5, 0.1]]})
    assert rows_of(load(p)) == [{"anchor": "q1", "positive": "p1", "negative_1": "a1", "negative_2": "b1"},
                                {"anchor": "q2", "positive": "p2", "negative_1": "a2", "negative_2": "b2"}]


# ----------------------------------------------------------------------------------------------
# a dataset name for datasets.load_dataset
@pytest.mark.parametrize("spec, name, config", [
    ("someorg/mined-triplets", "someorg/mined-triplets", None),
    ("hf://someorg/mined-triplets", "someorg/mined-triplets", None),
    ("hf://someorg/mined-triplets:triplet-hard", "someorg/mined-triplets", "triplet-hard"),
])
def test_a_dataset_name_goes_to_load_dataset(monkeypatch, tmp_path, load, spec, name, config):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, *, split=None, **kw):
        calls.append((path, name, split))
        return datasets.Dataset.from_list([{"query": "q1", "answer": "a1", "negative": "n1", "score": 0.5},
                                           {"query": "q2", "answer": "a2", "negative": "n2", "score": 0.1}])

    monkeypatch.chdir(tmp_path)  # the name is not a path here
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = load(spec)
    assert set(calls) == {(name, config, "train")}
    assert rows_of(ds) == [{"anchor": "q1", "positive": "a1", "negative_1": "n1"},
                           {"anchor": "q2", "positive": "a2", "negative_1": "n2"}]


def test_a_bad_row_in_a_named_dataset_names_the_row(monkeypatch, tmp_path, load):
    import datasets

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **kw: datasets.Dataset.from_list(
        [{"anchor": "q", "positive": "p", "negative": "n"}, {"anchor": "q", "positive": "", "negative": "n"}]))
    with pytest.raises(UserInputError) as info:
        load("someorg/triplets")
    assert "'positive' is empty" in one_line_error(info, "someorg/triplets", 2)


def test_a_missing_dataset_offline_is_one_line_naming_it(monkeypatch, tmp_path, load):
    monkeypatch.chdir(tmp_path)
    started = time.perf_counter()
    with pytest.raises(UserInputError) as info:
        load("nobody-xyz/no-such-dataset")
    msg = one_line_error(info, "nobody-xyz/no-such-dataset", None)
    assert "not in the local" in msg and "cache" in msg and "offline" in msg, msg
    assert "no such file" in msg  # a mistyped path reads right too
    assert time.perf_counter() - started < 30  # no network wait


def test_a_missing_file_is_still_a_missing_file(tmp_path, load):
    with pytest.raises(UserInputError) as info:
        load(tmp_path / "data" / "triplets.jsonl")
    assert "no such file or directory" in one_line_error(info, tmp_path / "data" / "triplets.jsonl", None)


# ----------------------------------------------------------------------------------------------
# one line decoder: a UTF-8 BOM is accepted by the BEIR reader as by the triplet reader
CORPUS = [{"_id": "d1", "title": "Insulin", "text": "insulin response in mice"},
          {"_id": "d2", "title": "", "text": "heart disease risk"}]
QUERIES = [{"_id": "q1", "text": "how does insulin work"}, {"_id": "q2", "text": "heart risk"}]
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n"


def _bom_dataset(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_bytes(BOM + "".join(json.dumps(r) + "\n" for r in CORPUS).encode())
    (root / "queries.jsonl").write_bytes(BOM + "".join(json.dumps(r) + "\n" for r in QUERIES).encode())
    (root / "qrels" / "test.tsv").write_bytes(BOM + QRELS.encode())
    return root


def test_beir_files_with_a_bom_load(tmp_path):
    from dpo_retrieval.data.beir import iter_corpus, load_beir, read_qrels, read_queries

    root = _bom_dataset(tmp_path / "ds")
    ds = load_beir(root, "test", download=False)
    assert ds.corpus == {"d1": {"title": "Insulin", "text": "insulin response in mice"},
                         "d2": {"title": "", "text": "heart disease risk"}}
    assert ds.queries == {"q1": "how does insulin work", "q2": "heart risk"}
    assert ds.qrels == {"q1": {"d1": 1}, "q2": {"d2": 1}}
    assert [d for d, _, _ in iter_corpus(root / "corpus.jsonl")] == ["d1", "d2"]
    assert read_queries(root / "queries.jsonl") == ds.queries
    assert read_qrels(root / "qrels" / "test.tsv") == ds.qrels


def test_beir_and_triplet_readers_share_one_line_decoder(tmp_path):
    from dpo_retrieval.data import beir as evaluation, lines, readers
    from dpo_retrieval.data.triplets import load_beir_corpus

    root = _bom_dataset(tmp_path / "ds")
    assert load_beir_corpus(root / "corpus.jsonl") == {"d1": "Insulin insulin response in mice",
                                                       "d2": "heart disease risk"}
    # one line decoder, and one JSON Lines reader on top of it, for BEIR files and triplet files
    assert evaluation.iter_lines is lines.iter_lines and evaluation._iter_jsonl is readers._iter_jsonl
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(json.dumps(CORPUS[0]).encode() + b'\n{"_id": "d2", "text": "caf\xe9"}\n')
    with pytest.raises(UserInputError) as a:
        list(evaluation.iter_corpus(bad))
    with pytest.raises(UserInputError) as b:
        load_beir_corpus(bad)
    assert str(a.value) == str(b.value) == f"{bad}:2: not valid UTF-8: byte 0xe9 at byte 27 of the line " \
                                           "(save the file as UTF-8)"


# ----------------------------------------------------------------------------------------------
# every input file is checked before the model loads
@pytest.fixture()
def no_model(monkeypatch):
    """Loading any model fails the test: the data error must come first."""
    import sentence_transformers

    from dpo_retrieval import models

    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(models, "load_model", boom)
    monkeypatch.setattr(sentence_transformers.SentenceTransformer, "__init__", boom)


def _cli(argv, capsys) -> tuple[int, list[str]]:
    from dpo_retrieval.cli import main

    code = main(argv)
    # what a terminal shows, without progress bars (as test_reliability.error_lines)
    visible = (line.rsplit("\r", 1)[-1] for line in capsys.readouterr().err.split("\n"))
    return code, [line for line in visible if line.strip() and "it/s" not in line]


def _bad_dataset(root: Path) -> Path:
    _bom_dataset(root)
    with open(root / "corpus.jsonl", "ab") as f:
        f.write(b'{"_id": "d3", "te\n')
    return root


def test_train_reports_a_header_only_file_before_the_model(tmp_path, no_model, capsys):
    ho = tmp_path / "header_only.tsv"
    ho.write_text("query\tpositive\tnegative\n")
    code, err = _cli(["--quiet", "train", "--triplets", str(ho), "--output", str(tmp_path / "out")], capsys)
    assert (code, err) == (2, [f"dpo-retrieval train: error: {ho}:1: no triplets: only a header row"])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["evaluate", "mine", "index", "compare"])
def test_beir_commands_report_a_bad_corpus_before_the_model(tmp_path, no_model, capsys, command):
    root = _bad_dataset(tmp_path / "ds")
    for split in ("train", "dev"):
        (root / "qrels" / f"{split}.tsv").write_text(QRELS)
    argv = {"evaluate": ["evaluate", "--dataset", str(root), "--output", str(tmp_path / "res.json")],
            "mine": ["mine", "--dataset", str(root), "--output", str(tmp_path / "mined")],
            "index": ["index", "--corpus", str(root / "corpus.jsonl"), "--output", str(tmp_path / "idx")],
            "compare": ["compare", "--dataset", str(root), "--output", str(tmp_path / "run")]}[command]
    code, err = _cli(["--quiet", *argv], capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"dpo-retrieval {command}: error: {root / 'corpus.jsonl'}:3: invalid JSON"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


@pytest.fixture()
def built_index(tiny_model_path, tmp_path) -> Path:
    from dpo_retrieval.retrieval.search import index_corpus
    from dpo_retrieval.models import load_model

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CORPUS))
    index_corpus(load_model(tiny_model_path, device="cpu"), tmp_path / "src" / "idx",
                 corpus=tmp_path / "src" / "corpus.jsonl", precision="fp32", model_name=tiny_model_path,
                 show_progress_bar=False)
    return tmp_path / "src" / "idx"


def test_search_reads_the_queries_file_before_the_model(tmp_path, built_index, no_model, capsys):
    queries = tmp_path / "queries.jsonl"
    queries.write_bytes(b'{"_id": "q1", "text": "x"}\n{"_id": "q2"\n')
    code, err = _cli(["--quiet", "search", "--index", str(built_index), "--queries", str(queries),
                      "--output", str(tmp_path / "run.trec")], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith(
        f"dpo-retrieval search: error: {queries}:2: invalid JSON"), err


_PROBE = """
import sys
from dpo_retrieval.cli import main
code = main(sys.argv[1:])
heavy = sorted(m for m in ("torch", "transformers", "sentence_transformers") if m in sys.modules)
print(code, ",".join(heavy) or "-")
"""


@pytest.mark.parametrize("content, line", [
    (b"query\tpositive\tnegative\n", 1),
    (b"q\tp\tn\n" * 3 + b"q\tp\n", 4),
], ids=["header only", "bad line 4"])
def test_train_checks_triplets_without_importing_torch(tmp_path, content, line):
    path = tmp_path / "t.tsv"
    path.write_bytes(content)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_DATASETS_CACHE": str(tmp_path / "hf-cache")}
    proc = subprocess.run([sys.executable, "-c", _PROBE, "--quiet", "train", "--triplets", str(path),
                           "--output", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.stdout.split() == ["2", "-"], (proc.stdout, proc.stderr)
    assert proc.stderr.strip().startswith(f"dpo-retrieval train: error: {path}:{line}: "), proc.stderr
    assert not (tmp_path / "out").exists()
