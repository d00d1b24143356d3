"""dpo_retrieval.data: every triplet format round-trips; every bad input gives one `path:line: problem`."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from dpo_retrieval.data.fields import join_title_text
from dpo_retrieval.data.triplets import (load_beir_corpus, load_beir_queries, save_triplets,
                                triplet_columns)
from dpo_retrieval.errors import UserInputError

# texts with commas, quotes, non-ASCII and surrounding spaces; no tabs or newlines (TSV cannot hold them)
ROWS = [
    {"anchor": "what causes anaemia?", "positive": "Iron deficiency, mostly.",
     "negative_1": 'The "white matter" of the brain.', "negative_2": "Vitamin D and sleep ."},
    {"anchor": "Größe des Herzens", "positive": "  The heart is a fist-sized organ  ",
     "negative_1": "Insulin, glucose; diabetes", "negative_2": "日本語のテキスト"},
    {"anchor": "q3", "positive": "p3 'quoted'", "negative_1": "n3a", "negative_2": "n3b ✓"},
]
K = 2


def rows_of(ds) -> list[dict]:
    return [dict(r) for r in ds]


def negs(r: dict) -> list[str]:
    return [r[f"negative_{i}"] for i in range(1, K + 1)]


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------
# writers: each writes ROWS in one format and returns the path
def w_jsonl_negatives_list(d):
    return write_jsonl(d / "t.jsonl", [{"query": r["anchor"], "positive": r["positive"], "negatives": negs(r)}
                                       for r in ROWS])


def w_jsonl_st_columns(d):
    return write_jsonl(d / "t.jsonl", ROWS)


def w_json_array(d):
    p = d / "t.json"
    p.write_text(json.dumps([{"anchor": r["anchor"], "positive": r["positive"], "negative": negs(r)}
                             for r in ROWS], ensure_ascii=False, indent=2), encoding="utf-8")
    return p


def w_json_lines(d):
    return write_jsonl(d / "t.json", ROWS)


def w_tsv_no_header(d):
    p = d / "triples.train.small.tsv"
    p.write_text("".join("\t".join(r.values()) + "\n" for r in ROWS), encoding="utf-8")
    return p


def w_tsv_header(d):
    p = d / "t.tsv"
    p.write_text("query\tpositive\tnegative\tnegative\r\n"
                 + "".join("\t".join(r.values()) + "\r\n" for r in ROWS), encoding="utf-8")
    return p


def w_txt_numbered_header(d):
    p = d / "t.txt"
    p.write_text("\t".join(triplet_columns(K)) + "\n" + "".join("\t".join(r.values()) + "\n" for r in ROWS),
                 encoding="utf-8")
    return p


def w_csv_header(d):
    p = d / "t.csv"
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["Query", "Positive", "Negative_1", "Negative_2"])
        w.writerows(r.values() for r in ROWS)
    return p


def w_csv_no_header(d):
    p = d / "t.csv"
    with open(p, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(r.values() for r in ROWS)
    return p


def w_parquet(d):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = d / "t.parquet"
    pq.write_table(pa.table({"query": [r["anchor"] for r in ROWS], "positive": [r["positive"] for r in ROWS],
                             "negatives": [negs(r) for r in ROWS]}), p, row_group_size=2)
    return p


def w_saved_dataset(d):
    import datasets

    p = d / "saved"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(p))
    return p


def w_saved_dataset_dict(d):
    import datasets

    p = d / "saved-dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS),
                          "test": datasets.Dataset.from_list(ROWS[:1])}).save_to_disk(str(p))
    return p


def w_save_triplets(d):
    p = d / "mined" / "triplets.jsonl"
    assert save_triplets(ROWS, p) == len(ROWS)
    return p


WRITERS = [w_jsonl_negatives_list, w_jsonl_st_columns, w_json_array, w_json_lines, w_tsv_no_header,
           w_tsv_header, w_txt_numbered_header, w_csv_header, w_csv_no_header, w_parquet, w_saved_dataset,
           w_saved_dataset_dict, w_save_triplets]


@pytest.mark.parametrize("writer", WRITERS, ids=lambda w: w.__name__[2:])
def test_every_format_round_trips(writer, tmp_path, load):
    path = writer(tmp_path)
    ds = load(path)
    assert ds.column_names == triplet_columns(K)
    assert all(ds.features[c].dtype == "string" for c in ds.column_names)
    assert rows_of(ds) == ROWS


def test_csv_quoted_fields_keep_commas_quotes_and_newlines(tmp_path, load):
    rows = [{"anchor": "a, b", "positive": 'say "hi"\nthen leave', "negative_1": "x\ty"}]
    p = tmp_path / "t.csv"
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["anchor", "positive", "negative"])
        w.writerows(r.values() for r in rows)
    assert rows_of(load(p)) == rows


def test_single_negative_and_one_negatives_list_give_k1(tmp_path, load):
    p = write_jsonl(tmp_path / "t.jsonl", [{"query": "q", "positive": "p", "negative": "n"},
                                           {"query": "q2", "positive": "p2", "negatives": ["n2"]}])
    ds = load(p)
    assert ds.column_names == ["anchor", "positive", "negative_1"]
    assert ds["negative_1"] == ["n", "n2"]


def test_extra_fields_are_ignored_and_blank_lines_skipped(tmp_path, load):
    p = tmp_path / "t.jsonl"
    p.write_text('\n{"query": "q", "positive": "p", "negative": "n", "score": 0.3, "meta": {}}\n  \n',
                 encoding="utf-8")
    assert rows_of(load(p)) == [{"anchor": "q", "positive": "p", "negative_1": "n"}]


def test_save_triplets_round_trips_a_loaded_dataset_and_is_atomic(tmp_path, load):
    ds = load(w_jsonl_negatives_list(tmp_path))
    out = tmp_path / "triplets.jsonl"
    assert save_triplets(ds, out) == len(ROWS)
    assert rows_of(load(out)) == ROWS
    before = out.read_bytes()
    bad = list(ROWS) + [{"anchor": "q", "positive": "p", "negative_1": "n"}]  # k changes on row 4
    with pytest.raises(ValueError, match="row 4"):
        save_triplets(bad, out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["t.jsonl", "triplets.jsonl"]
    with pytest.raises(ValueError, match="no triplets"):
        save_triplets([], tmp_path / "empty.jsonl")
    assert not (tmp_path / "empty.jsonl").exists()


def test_first_negatives_cuts_columns_and_refuses_more_than_the_file_has(tmp_path, load):
    from dpo_retrieval.data.triplets import first_negatives
    from dpo_retrieval.training.args import TrainArgs

    p = w_jsonl_st_columns(tmp_path)
    ds = load(p)
    assert rows_of(first_negatives(ds, 1, p)) == [{k: r[k] for k in ("anchor", "positive", "negative_1")} for r in ROWS]
    assert first_negatives(ds, 2, p) is ds and first_negatives(ds, None, p) is ds
    with pytest.raises(UserInputError) as info:
        first_negatives(ds, 3, p)
    assert str(info.value) == f"negatives: 3 asked for, but {p} has 2 negatives per triplet"
    for bad in (0, -1, 1.5, True):
        with pytest.raises(UserInputError, match="negatives: must be an integer > 0"):
            TrainArgs(triplets=str(p), negatives=bad).check()


def test_an_edited_file_is_not_served_from_the_cache(tmp_path, load):
    p = write_jsonl(tmp_path / "t.jsonl", [{"query": "q", "positive": "p", "negative": "old"}])
    assert load(p)["negative_1"] == ["old"]
    write_jsonl(p, [{"query": "q", "positive": "p", "negative": "new"}])
    assert load(p)["negative_1"] == ["new"]
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert load(p)["negative_1"] == ["new"]


# ----------------------------------------------------------------------------------------------
# id triplets against a tiny BEIR corpus + queries
@pytest.fixture()
def beir(tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [
        {"_id": "d1", "title": "Iron", "text": "Iron deficiency causes anaemia."},
        {"_id": "d2", "title": "", "text": "White matter develops in newborns."},
        {"_id": "d3", "text": "No title here."},
        {"_id": 42, "title": "Numeric id", "text": "Doc with an integer id."},
        {"_id": "empty", "title": " ", "text": ""},
    ])
    queries = write_jsonl(tmp_path / "queries.jsonl", [
        {"_id": "q1", "text": "what causes anaemia?", "metadata": {}},
        {"_id": "7", "text": "newborn brain"},
    ])
    return corpus, queries


ID_EXPECTED = [
    {"anchor": "what causes anaemia?", "positive": "Iron Iron deficiency causes anaemia.",
     "negative_1": "White matter develops in newborns.", "negative_2": "No title here."},
    {"anchor": "newborn brain", "positive": "White matter develops in newborns.",
     "negative_1": "Numeric id Doc with an integer id.", "negative_2": "Iron Iron deficiency causes anaemia."},
]


def test_id_triplets_jsonl_resolve_against_beir(tmp_path, beir, load):
    corpus, queries = beir
    p = write_jsonl(tmp_path / "ids.jsonl", [
        {"query_id": "q1", "positive_id": "d1", "negative_ids": ["d2", "d3"]},
        {"qid": 7, "pos_id": "d2", "negative_id_1": 42, "negative_id_2": "d1"},
    ])
    ds = load(p, corpus=corpus, queries=queries)
    assert ds.column_names == triplet_columns(2)
    assert rows_of(ds) == ID_EXPECTED


def test_id_triplets_tsv_with_header(tmp_path, beir, load):
    corpus, queries = beir
    p = tmp_path / "ids.tsv"
    p.write_text("query-id\tpositive_id\tnegative_id\tnegative_id\nq1\td1\td2\td3\n7\td2\t42\td1\n")
    assert rows_of(load(p, corpus=str(corpus), queries=str(queries))) == ID_EXPECTED


def test_text_and_ids_mix_per_field(tmp_path, beir, load):
    corpus, queries = beir
    p = write_jsonl(tmp_path / "mixed.jsonl", [{"query": "free text", "positive_id": "d3", "negative": "n"}])
    assert rows_of(load(p, corpus=corpus, queries=queries)) == [
        {"anchor": "free text", "positive": "No title here.", "negative_1": "n"}]


def test_beir_readers(beir):
    corpus, queries = beir
    docs = load_beir_corpus(corpus)
    assert docs["d1"] == "Iron Iron deficiency causes anaemia."
    assert docs["42"] == "Numeric id Doc with an integer id." and docs["empty"] == ""
    assert load_beir_corpus(corpus, ids={"d3"}) == {"d3": "No title here."}
    assert load_beir_queries(queries) == {"q1": "what causes anaemia?", "7": "newborn brain"}


@pytest.mark.parametrize("content, line, problem", [
    (b'{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n', 2, "duplicate _id 'a'"),
    (b'{"_id": "a", "text": "x"}\n{"text": "y"}\n', 2, "missing field '_id'"),
    (b'{"_id": "a"}\n', 1, "missing field 'text'"),
    (b'{"_id": "a", "text": 5}\n', 1, "'text' must be text, got a number (5)"),
    (b'{"_id": "a", "text": "x"\n', 1, "invalid JSON"),
    (b'{"_id": "a", "text": "\xff"}\n', 1, "not valid UTF-8"),
    (b"", 1, "empty file"),
])
def test_beir_reader_errors(tmp_path, content, line, problem):
    p = tmp_path / "corpus.jsonl"
    p.write_bytes(content)
    with pytest.raises(UserInputError) as info:
        load_beir_corpus(p)
    assert str(info.value).startswith(f"{p}:{line}: ") and problem in str(info.value)


@pytest.mark.slow
def test_real_scifact_id_triplets(beir_data, tmp_path, load):
    scifact = beir_data / "scifact"
    pairs = []
    with open(scifact / "qrels" / "train.tsv") as f:
        next(f)
        for line in f:
            qid, did, score = line.rstrip("\n").split("\t")
            if int(score) > 0 and qid not in {q for q, _ in pairs}:
                pairs.append((qid, did))
            if len(pairs) == 21:
                break
    # the negative of each query is the next query's positive
    records = [{"query_id": q, "positive_id": d, "negative_id": pairs[i + 1][1]} for i, (q, d) in enumerate(pairs[:20])]
    p = write_jsonl(tmp_path / "scifact-ids.jsonl", records)
    ds = load(p, corpus=scifact / "corpus.jsonl", queries=scifact / "queries.jsonl")
    assert ds.num_rows == 20 and ds.column_names == triplet_columns(1)
    wanted = {d for _, d in pairs}
    docs = {}
    with open(scifact / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            if doc["_id"] in wanted:
                docs[doc["_id"]] = (doc["title"] + " " + doc["text"]).strip()
    qtext = {}
    with open(scifact / "queries.jsonl", encoding="utf-8") as f:
        for line in f:
            q = json.loads(line)
            qtext[q["_id"]] = q["text"]
    for row, rec in zip(ds, records):
        assert row == {"anchor": qtext[rec["query_id"]], "positive": docs[rec["positive_id"]],
                       "negative_1": docs[rec["negative_id"]]}


# ----------------------------------------------------------------------------------------------
# bad input: one line, `path:LINE: problem`
GOOD = b'{"query": "q", "positive": "p", "negative": "n"}\n'
BAD_INPUTS = [
    # name, file name, content, line, problem (a substring of the message)
    ("invalid json", "t.jsonl", GOOD + b'{"query": "q", "positive": "p",\n', 2, "invalid JSON"),
    ("missing field", "t.jsonl", GOOD + GOOD + b'{"query": "q", "negative": "n"}\n', 3,
     "missing the positive: expected a field 'positive'"),
    ("missing negatives", "t.jsonl", b'{"query": "q", "positive": "p"}\n', 1, "missing the negatives"),
    ("empty text", "t.jsonl", GOOD + b'{"query": "", "positive": "p", "negative": "n"}\n', 2, "'query' is empty"),
    ("whitespace text", "t.jsonl", b'{"query": "q", "positive": " \\t\\n ", "negative": "n"}\n', 1,
     "'positive' is only whitespace"),
    ("number for text", "t.jsonl", b'{"query": "q", "positive": "p", "negative": 17}\n', 1,
     "'negative' must be text, got a number (17)"),
    ("null for text", "t.jsonl", b'{"query": null, "positive": "p", "negative": "n"}\n', 1,
     "'query' must be text, got null"),
    ("number in negatives list", "t.jsonl", b'{"query": "q", "positive": "p", "negatives": ["n", 2]}\n', 1,
     "'negatives[1]' must be text, got a number (2)"),
    ("empty negatives list", "t.jsonl", b'{"query": "q", "positive": "p", "negatives": []}\n', 1,
     "'negatives' is an empty list"),
    ("not an object", "t.jsonl", b'["q", "p", "n"]\n', 1, "expected an object"),
    ("query and anchor", "t.jsonl", b'{"query": "q", "anchor": "a", "positive": "p", "negative": "n"}\n', 1,
     "both 'query' and 'anchor' given"),
    ("gap in numbered negatives", "t.jsonl",
     b'{"query": "q", "positive": "p", "negative_1": "a", "negative_3": "c"}\n', 1,
     "'negative_3' given without a negative number 2"),
    ("ragged negatives", "t.jsonl", GOOD + b'{"query": "q", "positive": "p", "negatives": ["a", "b"]}\n', 2,
     "2 negatives, but line 1 has 1"),
    ("non-utf8", "t.jsonl", GOOD + b'{"query": "caf\xe9", "positive": "p", "negative": "n"}\n', 2,
     "not valid UTF-8: byte 0xe9"),
    ("empty file", "t.jsonl", b"", 1, "empty file"),
    ("blank lines only", "t.jsonl", b"\n  \n\n", 1, "only blank lines"),
    ("ids without a corpus", "t.jsonl", b'{"query": "q", "positive_id": "d1", "negative": "n"}\n', 1,
     "'positive_id' is an id, but no BEIR corpus file was given"),
    ("json array bad element", "t.json", b'[\n  {"query": "q", "positive": "p", "negative": "n"},\n  {"query": "q"}\n]',
     3, "missing the positive"),
    ("json array unclosed", "t.json", b'[\n  {"query": "q", "positive": "p", "negative": "n"}\n', 3,
     "not closed"),
    ("json array empty", "t.json", b"[]", 1, "empty JSON array"),
    ("json array trailing comma", "t.json", b'[{"query": "q", "positive": "p", "negative": "n"},\n]', 2,
     "expected a value after ','"),
    ("json array non-utf8", "t.json", b'[\n{"query": "\xff", "positive": "p", "negative": "n"}]', 2,
     "not valid UTF-8"),
    ("json single object", "t.json", b'{\n "query": "q"\n}', 1, "invalid JSON"),
    ("tsv ragged", "t.tsv", b"q\tp\tn\nq\tp\tn\tm\n", 2, "expected 3 columns like line 1, got 4"),
    ("tsv too few columns", "t.tsv", b"q,p,n\n", 1, "expected at least 3 tab-separated columns"),
    ("tsv empty cell", "t.tsv", b"query\tpositive\tnegative\nq\t\tn\n", 2, "'positive' is empty"),
    ("tsv header only", "t.tsv", b"query\tpositive\tnegative\n", 1, "only a header row"),
    ("tsv non-utf8", "t.tsv", b"q\tp\tn\nq\tp\xc3\x28\tn\n", 2, "not valid UTF-8"),
    ("tsv duplicate header", "t.tsv", b"query\tquery\tpositive\tnegative\n", 1, "names column 'query' twice"),
    ("csv bad quoting", "t.csv", b'q,p,n\nq,"p"x,n\n', 2, "malformed CSV"),
    ("csv unterminated quote", "t.csv", b'q,p,n\nq,"p,n\n', 2, "malformed CSV"),
    ("txt ragged", "t.txt", b"q\tp\tn\n\nq\tp\n", 3, "got 2"),
]


@pytest.mark.parametrize("name, filename, content, line, problem", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_names_file_line_and_problem(name, filename, content, line, problem, tmp_path, load):
    path = tmp_path / filename
    path.write_bytes(content)
    with pytest.raises(UserInputError) as info:
        load(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:{line}: "), msg
    assert problem in msg, msg
    assert "\n" not in msg


def _unknown_query(d, beir):
    return write_jsonl(d / "ids.jsonl", [{"query_id": "q1", "positive_id": "d1", "negative_id": "d2"},
                                         {"query_id": "nope", "positive_id": "d1", "negative_id": "d2"}]), 2, \
        "query_id 'nope' is not in"


def _unknown_doc(d, beir):
    return write_jsonl(d / "ids.jsonl", [{"query_id": "q1", "positive_id": "d1", "negative_ids": ["d2", "zz"]}]), \
        1, "negative_ids[1] 'zz' is not in"


def _empty_passage(d, beir):
    return write_jsonl(d / "ids.jsonl", [{"query_id": "q1", "positive_id": "empty", "negative_id": "d2"}]), 1, \
        "positive_id 'empty' has empty text"


def _parquet_row(d, beir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = d / "t.parquet"
    pq.write_table(pa.table({"anchor": ["a", "b", "c"], "positive": ["p", None, "p"], "negative": ["n"] * 3}), p)
    return p, 2, "'positive' must be text, got null"


def _parquet_number(d, beir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = d / "t.parquet"
    pq.write_table(pa.table({"anchor": ["a"], "positive": ["p"], "negative": [3]}), p)
    return p, 1, "'negative' must be text, got a number (3)"


def _saved_row(d, beir):
    import datasets

    p = d / "saved"
    datasets.Dataset.from_list(ROWS[:2] + [{**ROWS[0], "negative_2": "  "}]).save_to_disk(str(p))
    return p, 3, "'negative_2' is only whitespace"


@pytest.mark.parametrize("make", [_unknown_query, _unknown_doc, _empty_passage, _parquet_row, _parquet_number,
                                  _saved_row], ids=lambda f: f.__name__[1:])
def test_bad_ids_and_rows(make, tmp_path, beir, load):
    corpus, queries = beir
    path, line, problem = make(tmp_path, beir)
    with pytest.raises(UserInputError) as info:
        load(path, corpus=corpus, queries=queries)
    msg = str(info.value)
    assert msg.startswith(f"{path}:{line}: ") and problem in msg and "\n" not in msg, msg


def _missing(d):
    return d / "missing.jsonl", "no such file or directory"


def _unknown_extension(d):
    p = d / "t.xlsx"
    p.write_bytes(GOOD)
    return p, "unknown file type '.xlsx'"


def _plain_directory(d):
    p = d / "some-dir"
    p.mkdir()
    return p, "is a directory but not a saved HF datasets dataset"


def _not_parquet(d):
    p = d / "t.parquet"
    p.write_bytes(GOOD)
    return p, "not a readable Parquet file"


def _dict_without_train(d):
    import datasets

    p = d / "saved-dict"
    datasets.DatasetDict({"test": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(p))
    return p, "no 'train' split (splits: test)"


@pytest.mark.parametrize("make", [_missing, _unknown_extension, _plain_directory, _not_parquet, _dict_without_train],
                         ids=lambda f: f.__name__[1:])
def test_bad_paths_name_the_file_and_problem(make, tmp_path, load):
    path, problem = make(tmp_path)
    with pytest.raises(UserInputError) as info:
        load(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and problem in msg and "\n" not in msg, msg


def test_missing_corpus_file(tmp_path, load):
    p = write_jsonl(tmp_path / "ids.jsonl", [{"query_id": "q", "positive_id": "d", "negative_id": "e"}])
    with pytest.raises(UserInputError, match=r"corpus\.jsonl: no such file"):
        load(p, corpus=tmp_path / "corpus.jsonl")


def test_nothing_is_written_next_to_the_input(tmp_path, load):
    d = tmp_path / "in"
    d.mkdir()
    w_tsv_header(d)
    load(d / "t.tsv")
    (d / "bad.jsonl").write_bytes(b"{oops\n")
    with pytest.raises(UserInputError):
        load(d / "bad.jsonl")
    assert sorted(p.name for p in d.iterdir()) == ["bad.jsonl", "t.tsv"]


def test_join_title_text():
    assert join_title_text("Title", "Body.") == "Title Body."
    assert join_title_text("", "Body.") == "Body."
    assert join_title_text(None, " Body ") == "Body"
    assert join_title_text("T", None) == "T"
