"""Mining splits (issue 10): no test query and no dev query is ever trained on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpo_retrieval.cli import main

TOPICS = ["cancer", "sleep", "insulin", "virus", "brain", "heart", "vitamin", "diabetes", "infants", "tumor",
          "immune", "blood", "fiber", "water", "rna", "dna", "mice", "drug", "dose", "gene"]


def write_beir(root: Path) -> Path:
    """40 train queries in 20 pairs of identical text (so the dev split cuts some pairs), 5 test queries;
    train query t-dup has the text of test query x0, in other case and spacing."""
    (root / "qrels").mkdir(parents=True)
    docs, queries, train, test = [], [], [], []
    for i, topic in enumerate(TOPICS):
        for j in range(4):
            docs.append({"_id": f"d{i}-{j}", "title": f"{topic} study", "text": f"the {topic} effect on cells {j}"})
        for k in range(2):
            queries.append({"_id": f"t{i}-{k}", "text": f"what is the {topic} effect"})
            train.append((f"t{i}-{k}", f"d{i}-{k}"))
    for i in range(5):
        queries.append({"_id": f"x{i}", "text": f"does {TOPICS[i]} cause {TOPICS[i + 5]}"})
        test.append((f"x{i}", f"d{i}-2"))
    queries.append({"_id": "t-dup", "text": " Does CANCER cause heart  "})
    train.append(("t-dup", "d0-3"))
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    for split, rows in (("train", train), ("test", test)):
        (root / "qrels" / f"{split}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in rows))
    return root


def _texts(data: Path, qrels: Path) -> set[str]:
    queries = {json.loads(l)["_id"]: json.loads(l)["text"] for l in (data / "queries.jsonl").read_text().splitlines()}
    return {queries[l.split("\t")[0]].strip().casefold() for l in qrels.read_text().splitlines()[1:]}


def _anchors(out: Path) -> set[str]:
    return {json.loads(l)["anchor"].strip().casefold() for l in (out / "triplets.jsonl").read_text().splitlines()}


def test_overlapping_queries_match_lightly_normalised_text():
    from dpo_retrieval.mining import overlapping_queries

    queries = {"a": "Obesity decreases life quality.", "b": "  obesity DECREASES life quality. ", "c": "Other."}
    assert overlapping_queries(["a", "b", "c"], queries, ["OBESITY decreases life quality.\n"]) == ["a", "b"]
    assert overlapping_queries(["a", "b", "c"], queries, []) == []


def test_mine_drops_test_and_dev_duplicates(tmp_path):
    from dpo_retrieval.data.beir import load_beir
    from dpo_retrieval.mining import MineArgs, mine

    data = write_beir(tmp_path / "ds")
    train, test = load_beir(data, "train"), load_beir(data, "test")
    out = tmp_path / "mine"
    cfg = MineArgs(source="bm25", rank_min=0, rank_max=10, dev_fraction=0.25)
    info = mine(None, train, out, cfg, exclude_texts=test.queries.values())
    assert info["dropped_test_overlap"] == {"count": 1, "query_ids": ["t-dup"]}
    assert info["dropped_dev_overlap"]["count"] > 0  # the split did cut pairs of identical queries
    assert json.loads((out / "mining.json").read_text())["dropped_test_overlap"]["query_ids"] == ["t-dup"]
    dev = _texts(data, out / "dev_qrels.tsv")
    anchors = _anchors(out)
    assert dev and anchors and not anchors & dev
    assert not anchors & {t.strip().casefold() for t in test.queries.values()}
    assert "t-dup" not in (out / "train_qrels.tsv").read_text() + (out / "dev_qrels.tsv").read_text()
    ids = {l.split("\t")[0] for l in (out / "train_qrels.tsv").read_text().splitlines()[1:]}
    assert not ids & set(info["dropped_dev_overlap"]["query_ids"])


def test_cli_mine_drops_the_test_split_queries(tmp_path, tiny_model_path):
    data = write_beir(tmp_path / "ds")
    out = tmp_path / "mine"
    assert main(["--quiet", "mine", "--dataset", str(data), "--output", str(out), "--model", tiny_model_path,
                 "--source", "bm25", "--rank-window", "0-10", "--dev-fraction", "0.25"]) == 0
    info = json.loads((out / "mining.json").read_text())
    assert info["dropped_test_overlap"] == {"count": 1, "query_ids": ["t-dup"]}
    assert not _anchors(out) & (_texts(data, data / "qrels" / "test.tsv") | _texts(data, out / "dev_qrels.tsv"))


def test_scifact_train_queries_that_are_test_queries(beir_data):
    """SciFact's test query 870 is train query 871 verbatim (and test 1292 is train 1291)."""
    from dpo_retrieval.data.beir import load_beir
    from dpo_retrieval.mining import overlapping_queries

    train, test = load_beir(beir_data / "scifact", "train"), load_beir(beir_data / "scifact", "test")
    assert test.queries["870"] == train.queries["871"]
    dropped = overlapping_queries(sorted(train.queries), train.queries, test.queries.values())
    assert "871" in dropped and set(dropped) == {"871", "1291"}
