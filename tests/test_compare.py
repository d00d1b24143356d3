"""`dpo-retrieval compare` end to end on a tiny BEIR-format dataset with the tiny BERT, and stage skipping."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from dpo_retrieval.cli import main
from dpo_retrieval.compare import Stage, fingerprint

TOPICS = ["cancer", "sleep", "insulin", "virus", "brain", "heart", "vitamin", "diabetes", "infants", "tumor",
          "immune", "blood", "fiber", "water", "rna", "dna", "mice", "drug", "dose", "gene"]


def write_tiny_beir(root: Path, *, seed: int = 0, with_train: bool = True) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True)
    (root / "qrels").mkdir()
    docs, queries, train, test = [], [], [], []
    for i, topic in enumerate(TOPICS):
        for j in range(2):
            other = rng.choice(TOPICS)
            docs.append({"_id": f"d{i}-{j}", "title": f"{topic} study", "text": f"the {topic} effect on {other} cells"})
        q = {"_id": f"q{i}", "text": f"what is the {topic} effect"}
        queries.append(q)
        (train if i % 3 else test).append((q["_id"], f"d{i}-0"))
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    for split, rows in (("train", train), ("test", test)):
        if split == "train" and not with_train:
            continue
        (root / "qrels" / f"{split}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in rows))
    return root


def compare_args(tiny_model_path, data: Path, out: Path, *extra):
    return ["--quiet", "compare", "--dataset", str(data), "--output", str(out), "--model", tiny_model_path,
            "--max-triplets", "10", "--batch-size", "4", "--train-max-seq-length", "32", "--eval-max-seq-length", "32",
            "--precision", "fp32", "--top-k", "20", "--rank-window", "2-12", "--dev-fraction", "0.2", *extra]


def test_compare_end_to_end_then_skips_every_stage(tmp_path, tiny_model_path, capsys):
    data = write_tiny_beir(tmp_path / "tiny")
    ood = write_tiny_beir(tmp_path / "other", seed=1)
    out = tmp_path / "run"
    assert main(compare_args(tiny_model_path, data, out, "--eval-datasets", str(ood))) == 0
    printed = capsys.readouterr().out
    assert "| base" in printed and "dpo" in printed and "contrastive" in printed

    report = json.loads((out / "report.json").read_text())
    assert set(report["datasets"]) == {"tiny", "tiny-dev", "other"}
    for name, ds in report["datasets"].items():
        assert [r["model"] for r in ds["rows"]] == ["base", "dpo", "contrastive"], name
        for row in ds["rows"]:
            assert {"NDCG@10", "Recall@100", "MAP@100", "MRR@10", "train_time_s", "eval_time_s"} <= set(row)
            assert 0.0 <= row["NDCG@10"] <= 1.0
        pairs = {(c["a"], c["b"]) for c in ds["comparisons"]}
        assert {("dpo", "base"), ("contrastive", "base"), ("dpo", "contrastive")} <= pairs
    assert (out / "report.md").read_text().count("| base") >= 3
    assert (out / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    mining = json.loads((out / "mine" / "mining.json").read_text())
    assert mining["train_queries"] + mining["dev_queries"] == 13 and mining["dev_queries"] == 3
    # never one of the query's own judged documents as a negative
    queries = {json.loads(l)["text"]: json.loads(l)["_id"] for l in (data / "queries.jsonl").read_text().splitlines()}
    qrels = {l.split("\t")[0]: l.split("\t")[1] for l in (data / "qrels" / "train.tsv").read_text().splitlines()[1:]}
    corpus = {json.loads(l)["_id"]: json.loads(l) for l in (data / "corpus.jsonl").read_text().splitlines()}
    triplets = [json.loads(l) for l in (out / "mine" / "triplets.jsonl").read_text().splitlines()]
    assert triplets
    for t in triplets:
        judged = corpus[qrels[queries[t["anchor"]]]]
        assert t["positive"] == f"{judged['title']} {judged['text']}" != t["negative_1"]

    # Re-run: every stage is up to date, nothing is retrained or re-encoded.
    model_file = out / "models" / "dpo" / "model.safetensors"
    before = {p: p.stat().st_mtime_ns for p in [model_file, *out.glob("eval/*/*.json"), *out.glob("embeddings/*/*.npy")]}
    assert main(compare_args(tiny_model_path, data, out, "--eval-datasets", str(ood))) == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before

    # A moved run directory is still up to date (no stage key holds a path inside the run).
    moved = tmp_path / "moved"
    out.rename(moved)
    before = {moved / p.relative_to(out): t for p, t in before.items()}
    out, model_file = moved, moved / model_file.relative_to(out)
    assert main(compare_args(tiny_model_path, data, out, "--eval-datasets", str(ood))) == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before

    # Changing a training setting retrains the losses but keeps the mined triplets and base evaluation.
    triplets_mtime = (out / "mine" / "triplets.jsonl").stat().st_mtime_ns
    base_eval = out / "eval" / "base" / "tiny.json"
    base_mtime = base_eval.stat().st_mtime_ns
    assert main(compare_args(tiny_model_path, data, out, "--eval-datasets", str(ood), "--lr", "1e-4")) == 0
    assert (out / "mine" / "triplets.jsonl").stat().st_mtime_ns == triplets_mtime
    assert base_eval.stat().st_mtime_ns == base_mtime
    assert model_file.stat().st_mtime_ns != before[model_file]


def test_compare_bad_dataset_fails_before_writing(tmp_path, tiny_model_path, capsys):
    data = write_tiny_beir(tmp_path / "notrain", with_train=False)
    out = tmp_path / "run"
    assert main(compare_args(tiny_model_path, data, out)) == 2
    err = capsys.readouterr().err
    assert "train" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_stage_records_hash_and_status(tmp_path):
    stage = Stage(tmp_path / "x.stage.json", {"a": 1})
    assert not stage.done() and not stage.started_same()
    stage.start()
    assert stage.started_same() and not stage.done()
    stage.finish(rows=3)
    assert stage.done() and stage.info()["rows"] == 3
    assert not Stage(tmp_path / "x.stage.json", {"a": 2}).done()
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
