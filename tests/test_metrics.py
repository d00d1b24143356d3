"""Metrics (dpo_retrieval.evaluation.metrics): hand-computed values, BEIR's means from one pytrec_eval pass."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dpo_retrieval.evaluation import metrics as metrics_mod

TOY_QRELS = {"q1": {"a": 1, "b": 1}, "q2": {"c": 2, "d": 1}}
TOY_RUN = {"q1": {"x": 0.9, "a": 0.8, "y": 0.7, "b": 0.6, "q1": 5.0},  # "q1" is a self-hit, ignored
           "q2": {"c": 0.9, "z": 0.5}}


def test_metrics_match_hand_computed():
    m = metrics_mod.evaluate_run(TOY_QRELS, TOY_RUN, [1, 3, 10])
    lg = math.log2
    # q1: relevant at ranks 2 and 4; q2: grade-2 doc at rank 1, the grade-1 doc never retrieved
    ndcg_q1 = (1 / lg(3) + 1 / lg(5)) / (1 + 1 / lg(3))
    ndcg_q2 = (2 / lg(2)) / (2 + 1 / lg(3))
    assert m["ndcg@10"] == pytest.approx((ndcg_q1 + ndcg_q2) / 2, abs=1e-5)
    assert m["ndcg@1"] == pytest.approx((0 + 2 / 2) / 2, abs=1e-5)
    assert m["recall@1"] == pytest.approx((0 + 0.5) / 2)
    assert m["recall@3"] == pytest.approx((0.5 + 0.5) / 2)
    assert m["recall@10"] == pytest.approx((1.0 + 0.5) / 2)
    assert m["mrr@10"] == pytest.approx((1 / 2 + 1) / 2)
    assert m["map@10"] == pytest.approx(((1 / 2 + 2 / 4) / 2 + (1 / 1) / 2) / 2)
    assert m["p@3"] == pytest.approx((1 / 3 + 1 / 3) / 2, abs=1e-5)
    assert "q1" in TOY_RUN["q1"]  # inputs untouched

    per_q = metrics_mod.per_query_metrics(TOY_QRELS, TOY_RUN, [1, 3, 10])
    assert per_q["q1"]["ndcg@10"] == pytest.approx(ndcg_q1, abs=1e-6)
    assert per_q["q2"]["ndcg@10"] == pytest.approx(ndcg_q2, abs=1e-6)
    assert per_q["q1"]["mrr@10"] == pytest.approx(0.5) and per_q["q2"]["recall@10"] == pytest.approx(0.5)
    for key in ("ndcg@10", "recall@3", "map@10", "mrr@10"):
        assert np.mean([v[key] for v in per_q.values()]) == pytest.approx(m[key], abs=1e-5)


def test_self_hits_count_when_asked():
    with_self = metrics_mod.evaluate_run({"q1": {"q1": 1}}, {"q1": {"q1": 1.0, "x": 0.5}}, [10], ignore_identical_ids=False)
    without = metrics_mod.evaluate_run({"q1": {"q1": 1}}, {"q1": {"q1": 1.0, "x": 0.5}}, [10])
    assert with_self["ndcg@10"] == pytest.approx(1.0) and without["ndcg@10"] == 0.0


def _random_judged_run(seed: int, *, ties: bool = False):
    import random

    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(300)]
    qrels = {f"q{q}": {d: rng.choice([0, 1, 1, 2]) for d in rng.sample(docs, rng.randint(1, 6))} for q in range(30)}
    run = {f"q{q}": {d: (round(rng.random(), 1) if ties else rng.random()) for d in rng.sample(docs, rng.randint(0, 150))}
           for q in range(33)}  # q30..q32 have no judgments; one query may retrieve nothing
    return qrels, run


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_means_equal_beirs_evaluate_retrieval(seed):
    """Without ties in score, the one-pass means are BEIR's EvaluateRetrieval.evaluate and its
    evaluate_custom MRR to the last digit (both rounded to 5 decimals)."""
    from beir.retrieval.evaluation import EvaluateRetrieval

    qrels, run = _random_judged_run(seed)
    ks = list(metrics_mod.K_VALUES)
    judged = {q: dict(h) for q, h in run.items() if q in qrels}
    blocks = EvaluateRetrieval.evaluate(qrels, judged, ks, ignore_identical_ids=False)
    mrr = EvaluateRetrieval.evaluate_custom({q: qrels[q] for q in judged}, judged, ks, metric="mrr")
    beir = {k.lower(): v for block in (*blocks, mrr) for k, v in block.items()}
    assert metrics_mod.evaluate_run(qrels, run, ks) == beir


def test_one_pytrec_eval_pass_gives_means_and_per_query(monkeypatch):
    import pytrec_eval

    made = []

    class Counting(pytrec_eval.RelevanceEvaluator):
        def __init__(self, *args, **kwargs):
            made.append(args[1])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(pytrec_eval, "RelevanceEvaluator", Counting)
    means, per_q = metrics_mod.score_run(TOY_QRELS, TOY_RUN, [1, 3, 10])
    assert len(made) == 1 and "recip_rank" in made[0]
    assert means == metrics_mod.evaluate_run(TOY_QRELS, TOY_RUN, [1, 3, 10])
    assert per_q == metrics_mod.per_query_metrics(TOY_QRELS, TOY_RUN, [1, 3, 10])
    assert set(per_q["q1"]) == {"ndcg@1", "ndcg@3", "ndcg@10", "map@1", "map@3", "map@10",
                                "recall@1", "recall@3", "recall@10", "mrr@10"}


def test_tied_scores_rank_alike_for_every_metric():
    """Tied documents are ranked as trec_eval ranks them (doc id descending) for MRR too, so MRR@1
    agrees with nDCG@1 and the mean MRR is the mean of the per-query values."""
    qrels = {"q": {"b": 1}}
    m = metrics_mod.evaluate_run(qrels, {"q": {"a": 1.0, "b": 1.0}}, [1, 10])
    assert m["ndcg@1"] == 1.0 and m["mrr@1"] == 1.0 and m["mrr@10"] == 1.0
    m = metrics_mod.evaluate_run({"q": {"a": 1}}, {"q": {"a": 1.0, "b": 1.0}}, [1, 10])
    assert m["ndcg@1"] == 0.0 and m["mrr@1"] == 0.0 and m["mrr@10"] == 0.5
    qrels, run = _random_judged_run(5, ties=True)
    means, per_q = metrics_mod.score_run(qrels, run, [1, 10, 100])
    assert means["mrr@10"] == pytest.approx(np.mean([v["mrr@10"] for v in per_q.values()]), abs=1e-5)
