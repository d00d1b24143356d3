"""score_drift: the movement of a model's scores from the reference's on held-out pairs."""

from __future__ import annotations

import pytest

from dpo_retrieval.experiment.fast_dev import score_drift


def test_score_drift_against_a_hand_computed_example():
    ref = {"q1": {"a": 0.5, "b": 0.2, "c": 0.1}, "q2": {"d": 0.4, "e": 0.3}}
    run = {"q1": {"a": 0.7, "b": 0.1, "c": 0.1}, "q2": {"d": 0.1, "e": 0.5, "x": 0.9}}  # x: not in the reference
    qrels = {"q1": {"a": 1}, "q2": {"d": 1, "e": 0}}
    got = score_drift(run, ref, qrels)
    # deltas: q1 a +0.2 (judged), b -0.1, c 0; q2 d -0.3 (judged), e +0.2
    assert got["pairs"] == 5
    assert got["pool"] == pytest.approx((0.2 + 0.1 + 0 + 0.3 + 0.2) / 5)
    assert got["judged"] == pytest.approx((0.2 + 0.3) / 2)
    assert got["judged_signed"] == pytest.approx((0.2 - 0.3) / 2)
    assert got["unjudged"] == pytest.approx((0.1 + 0 + 0.2) / 3)
    assert got["pool_signed"] == pytest.approx((0.2 - 0.1 + 0 - 0.3 + 0.2) / 5)


def test_score_drift_of_the_reference_itself_is_zero_and_empty_sets_are_none():
    ref = {"q": {"a": 0.3, "b": 0.1}}
    same = score_drift(ref, ref, {"q": {"a": 1}})
    assert same["pool"] == same["judged"] == same["unjudged"] == 0.0
    none = score_drift(ref, ref)  # no qrels: nothing judged
    assert none["judged"] is None and none["unjudged"] == 0.0
    assert score_drift({"q": {"z": 1.0}}, ref)["pairs"] == 0
