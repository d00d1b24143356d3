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


@pytest.mark.parametrize("length", [5, 15, 21, 22, 40, 100])
def test_more_negatives_start_with_the_one_negative_draw(length):
    """select_negatives draws with rng.sample from a seeded rng: both of random.sample's branches (a pool for
    short populations, rejection sampling for long ones, the switch at 21 for k <= 5) begin with
    randbelow(len), so k = 1..4 give the same first negative, and k <= 5 the same first k of a longer draw: a
    file mined with 4 negatives per positive holds the 1-negative file's negative_1 (and the 2-negative
    file's first two)."""
    import random

    from dpo_retrieval.mining import MineArgs, select_negatives

    candidates = [(f"d{i}", 1.0 - i / 1000) for i in range(length + 12)]
    judged = {"d3", f"d{length // 2}"}  # judged documents leave the window before the draw
    window = MineArgs(rank_min=2, rank_max=length + 2)
    for seed in (42, 1, 7):
        for q, pos in (("q1", "d0"), ("1290", "4711"), ("x", "y")):
            def draw(k, sampling="random"):
                cfg = MineArgs(negatives=k, rank_min=window.rank_min, rank_max=window.rank_max, sampling=sampling)
                return select_negatives(candidates, judged, cfg, random.Random(f"{seed}:{q}:{pos}"))

            ks = [k for k in (1, 2, 3, 4, 5) if k <= length - 2]
            draws = {k: draw(k) for k in ks}
            assert all(len(draws[k]) == k and not set(draws[k]) & judged for k in ks)
            for k in ks:
                assert draws[k] == draws[max(ks)][:k], (seed, q, k)
                assert draw(k, "top") == draw(max(ks), "top")[:k]


def test_negatives_1_of_a_4_negative_file_is_the_1_negative_file(tmp_path, load):
    """Mined with 4 negatives per positive (same seed and source), the triplets cut to their first N
    (training's ``negatives``) are the triplets mined with N, row for row."""
    from dpo_retrieval.data.beir import load_beir
    from dpo_retrieval.data.triplets import first_negatives
    from dpo_retrieval.mining import MineArgs, mine

    train = load_beir(write_beir(tmp_path / "ds"), "train")
    files = {}
    for k in (1, 2, 4):
        mine(None, train, tmp_path / f"neg{k}", MineArgs(source="bm25", negatives=k, rank_min=1, rank_max=40))
        files[k] = tmp_path / f"neg{k}" / "triplets.jsonl"
        assert (tmp_path / f"neg{k}" / "dev_qrels.tsv").read_bytes() == (tmp_path / "neg1" / "dev_qrels.tsv").read_bytes()
    four = load(files[4])
    assert four.column_names == ["anchor", "positive", "negative_1", "negative_2", "negative_3", "negative_4"]
    for k in (1, 2):
        cut, mined = first_negatives(four, k, files[4]), load(files[k])
        assert cut.column_names == mined.column_names and cut.features == mined.features
        assert cut.to_list() == mined.to_list() and len(cut) > 10
    assert first_negatives(four, 4, files[4]) is four and first_negatives(four, None, files[4]) is four
