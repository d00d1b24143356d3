"""Evaluation during training (dpo_retrieval/training/dev.py): the dev split scored by sentence-transformers'
InformationRetrievalEvaluator, eval_* lines in train_log.jsonl, eval_rewards/* kept apart from training
lines, the best checkpoint kept at the end, early stopping, and the inputs checked before the model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpo_retrieval.cli import main
from _triplets import TRIPLETS as SHARED_TRIPLETS

TRIPLETS = SHARED_TRIPLETS[:6]
NDCG = "eval_dev_cosine_ndcg@10"
REWARDS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


def write_triplets(path: Path, rows=TRIPLETS) -> Path:
    path.write_text("".join(json.dumps({"query": q, "positive": p, "negative": n}) + "\n" for q, p, n in rows))
    return path


def write_beir(root: Path) -> Path:
    """A tiny BEIR dataset: the triplets' passages as the corpus, their queries as dev queries."""
    (root / "qrels").mkdir(parents=True)
    docs = [t for _, p, n in TRIPLETS for t in (p, n)]
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n"
                                               for i, t in enumerate(docs)))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": q}) + "\n"
                                                for i, (q, _, _) in enumerate(TRIPLETS)))
    (root / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\td{2 * i}\t1\n" for i in range(len(TRIPLETS))))
    return root


def args(tiny_model_path, triplets, out, *extra) -> list[str]:
    return ["--quiet", "train", "--triplets", str(triplets), "--output", str(out), "--model", tiny_model_path,
            "--batch-size", "2", "--max-seq-length", "32", "--logging-steps", "1", "--precision", "fp32",
            "--device", "cpu", "--seed", "7", "--loss", "dpo+mnrl", *extra]


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_eval_strategy_logs_the_dev_splits_metrics(tmp_path, tiny_model_path):
    out = tmp_path / "out"
    assert main(args(tiny_model_path, write_triplets(tmp_path / "t.jsonl"), out, "--max-steps", "3",
                     "--save-steps", "3", "--eval_strategy", "steps", "--eval_steps", "1",
                     "--eval_data", str(write_beir(tmp_path / "beir")))) == 0
    log = read_log(out)
    evals = [r for r in log if NDCG in r]
    assert [r["step"] for r in evals] == [1, 2, 3]
    assert all(0 <= r[NDCG] <= 1 and "eval_dev_cosine_recall@10" in r and "loss" not in r for r in evals)
    training = [r for r in log if "loss" in r]
    assert [r["step"] for r in training] == [1, 2, 3]
    assert not any(k.startswith("eval_") for r in training for k in r)
    # the file is the trainer's log_history, entry for entry
    state = json.loads((out / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())
    assert log[:len(state["log_history"])] == state["log_history"]
    assert len(log) == len(state["log_history"]) + 1 and "train_runtime" in log[-1]  # the final summary


def test_eval_rewards_are_logged_apart_from_training_rewards(tmp_path, tiny_model_path):
    # reference-free DPO: a reward is 20 * cos(q, p). Training rows reject the query's own text (cos 1 beats
    # any other passage: accuracy 0), held-out rows choose it (accuracy 1); a training line that took in
    # the evaluation's batches would show an accuracy above 0.
    train_rows = [(q, n, q) for q, _, n in TRIPLETS]
    eval_rows = [(q, q, n) for q, _, n in TRIPLETS[:4]]
    out = tmp_path / "out"
    assert main(args(tiny_model_path, write_triplets(tmp_path / "t.jsonl", train_rows), out, "--max-steps", "4",
                     "--lr", "1e-7", "--reference_free", "--beta", "1", "--dropout", "off", "--logging-steps", "2", "--eval_strategy", "steps",
                     "--eval_steps", "1", "--eval_triplets", str(write_triplets(tmp_path / "e.jsonl", eval_rows)))) == 0
    log = read_log(out)
    evals = [r for r in log if "eval_loss" in r]
    training = [r for r in log if "loss" in r]
    assert [r["step"] for r in evals] == [1, 2, 3, 4] and [r["step"] for r in training] == [2, 4]
    for r in evals:
        assert {f"eval_{k}" for k in REWARDS} <= set(r) and not set(REWARDS) & set(r)
        assert r["eval_rewards/accuracies"] == 1.0 and r["eval_rewards/chosen"] == pytest.approx(20.0, abs=1e-3)
    for r in training:
        assert set(REWARDS) <= set(r) and not any(k.startswith("eval_") for k in r)
        assert r["rewards/accuracies"] == 0.0 and r["rewards/rejected"] == pytest.approx(20.0, abs=1e-3)


def test_early_stopping_keeps_the_best_checkpoint(tmp_path, tiny_model_path):
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "out"
    # lr 1e-12: nDCG cannot improve after the first evaluation, so patience 1 stops at step 2 of 10
    assert main(args(tiny_model_path, write_triplets(tmp_path / "t.jsonl"), out, "--max-steps", "10",
                     "--lr", "1e-12", "--warmup", "0", "--eval_strategy", "steps", "--eval_steps", "1",
                     "--save-steps", "1", "--load_best_model_at_end", "--early_stopping_patience", "1",
                     "--eval_data", str(write_beir(tmp_path / "beir")))) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 2
    assert summary["config"]["metric_for_best_model"] == NDCG and summary["config"]["early_stopping_patience"] == 1
    assert Path(summary["best_model_checkpoint"]).name == "checkpoint-1"
    evals = [r[NDCG] for r in read_log(out) if NDCG in r]
    assert len(evals) == 2 and evals[1] == evals[0] == summary["best_metric"]
    saved = load_file(str(out / "model.safetensors"))
    best = load_file(str(out / "checkpoints" / "checkpoint-1" / "model.safetensors"))
    last = load_file(str(out / "checkpoints" / "checkpoint-2" / "model.safetensors"))
    assert all(torch.equal(saved[k], best[k]) for k in best)
    assert not all(torch.equal(saved[k], last[k]) for k in last)  # step 2 did move the weights


def test_bad_eval_inputs_fail_before_the_model_loads(tmp_path, tiny_model_path, capsys, monkeypatch):
    import dpo_retrieval.models

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(dpo_retrieval.models, "load_model", no_model)
    triplets = write_triplets(tmp_path / "t.jsonl")
    beir = write_beir(tmp_path / "beir")
    no_dev = tmp_path / "nodev"
    write_beir(no_dev)
    (no_dev / "qrels" / "dev.tsv").rename(no_dev / "qrels" / "test.tsv")
    (tmp_path / "bad.tsv").write_text("query-id\tcorpus-id\tscore\nq0\tnope\t1\n")
    cases = [
        ((), "--eval-strategy: steps needs something to evaluate"),
        (("--eval_data", str(no_dev)), "--eval-qrels: " + str(no_dev) + " has no qrels/dev.tsv"),
        (("--eval_data", str(beir), "--eval_qrels", str(tmp_path / "bad.tsv")),
         "--eval-qrels: " + str(tmp_path / "bad.tsv") + ":2: corpus-id 'nope' is not in the corpus"),
        (("--eval_data", str(tmp_path / "missing")), "--eval-data: " + str(tmp_path / "missing")),
        (("--eval_qrels", str(beir / "qrels" / "dev.tsv")), "--eval-qrels: needs eval_data"),
        (("--eval_triplets", str(tmp_path / "missing.jsonl")), "--eval-triplets: " + str(tmp_path / "missing.jsonl")),
    ]
    for extra, message in cases:
        out = tmp_path / "out"
        assert main(args(tiny_model_path, triplets, out, "--eval_strategy", "steps", *extra)) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (extra, err)
        assert not out.exists()
    out = tmp_path / "out"
    assert main(args(tiny_model_path, triplets, out, "--early_stopping_patience", "2")) == 2
    assert "--early-stopping-patience: needs eval_strategy steps or epoch" in capsys.readouterr().err
    assert not out.exists()


def test_an_unknown_best_model_metric_is_refused_before_training(tmp_path, tiny_model_path, capsys):
    out = tmp_path / "out"
    assert main(args(tiny_model_path, write_triplets(tmp_path / "t.jsonl"), out, "--max-steps", "2",
                     "--eval_strategy", "steps", "--save-steps", "1", "--eval_steps", "1", "--load_best_model_at_end",
                     "--metric_for_best_model", "ndcg", "--eval_data", str(write_beir(tmp_path / "beir")))) == 2
    err = capsys.readouterr().err
    assert "--metric-for-best-model: 'ndcg' is not logged by this run's evaluation" in err and NDCG in err
    assert not out.exists()
