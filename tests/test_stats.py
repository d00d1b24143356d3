"""dpo_retrieval.stats against scipy on known inputs, plus the degenerate cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from dpo_retrieval.experiment.stats import bootstrap_ci, compare_paired, paired_ttest, randomization_test


def _mean_diff(x, y, axis=-1):
    return np.mean(x - y, axis=axis)


@pytest.fixture(scope="module")
def paired():
    """300 queries, B a little worse than A with noise (p around 0.01-0.05)."""
    rng = np.random.default_rng(1234)
    x = rng.uniform(0.0, 1.0, 300)
    y = np.clip(x - 0.015 + rng.normal(0.0, 0.12, 300), 0.0, 1.0)
    a = {f"q{i}": float(v) for i, v in enumerate(x)}
    b = {f"q{i}": float(v) for i, v in enumerate(y)}
    return a, b, x, y


# ---------------------------------------------------------------------------- t-test
def test_ttest_matches_scipy(paired):
    a, b, x, y = paired
    res = paired_ttest(a, b)
    ref = sps.ttest_rel(x, y)
    assert res["t"] == pytest.approx(float(ref.statistic), rel=1e-12)
    assert res["p"] == pytest.approx(float(ref.pvalue), rel=1e-10)
    assert type(res["t"]) is float and type(res["p"]) is float


def test_ttest_aligns_on_common_qids_in_any_order():
    a = {"q1": 0.5, "q2": 0.7, "q3": 0.2, "q4": 0.9, "only_a": 0.0}
    b = {"q4": 0.6, "q3": 0.3, "q2": 0.5, "q1": 0.4, "only_b": 1.0}
    ref = sps.ttest_rel([0.5, 0.7, 0.2, 0.9], [0.4, 0.5, 0.3, 0.6])
    res = paired_ttest(a, b)
    assert res["t"] == pytest.approx(float(ref.statistic))
    assert res["p"] == pytest.approx(float(ref.pvalue))


@pytest.mark.parametrize("b", [
    {"q1": 0.5, "q2": 0.7, "q3": 0.2},            # identical scores: all differences 0
    {"q1": 0.3, "q2": 0.5, "q3": 0.0},            # all differences 0.2 (up to rounding)
])
def test_ttest_all_equal_differences_gives_t0_p1(b):
    a = {"q1": 0.5, "q2": 0.7, "q3": 0.2}
    assert paired_ttest(a, b) == {"t": 0.0, "p": 1.0}


def test_ttest_single_query_is_not_nan():
    assert paired_ttest({"q": 0.9}, {"q": 0.1}) == {"t": 0.0, "p": 1.0}


@pytest.mark.parametrize("fn", [paired_ttest, randomization_test, compare_paired,
                                lambda a, b: bootstrap_ci(a, b)])
def test_no_common_queries_is_an_error(fn):
    with pytest.raises(ValueError, match="no common queries"):
        fn({"q1": 0.1}, {"q2": 0.2})
    with pytest.raises(ValueError):
        fn({}, {})


def test_non_finite_scores_are_rejected():
    with pytest.raises(ValueError, match="non-finite"):
        paired_ttest({"q1": float("nan"), "q2": 0.1}, {"q1": 0.2, "q2": 0.3})


# ---------------------------------------------------------------------------- randomization
def test_randomization_matches_scipy_monte_carlo(paired):
    a, b, x, y = paired
    p = randomization_test(a, b, n_resamples=10000, seed=0)["p"]
    ref = sps.permutation_test((x, y), _mean_diff, permutation_type="samples", vectorized=True,
                               n_resamples=10000, alternative="two-sided", rng=0).pvalue
    assert 0.001 < ref < 0.2  # a p-value where Monte-Carlo error matters
    se = math.sqrt(2 * ref * (1 - ref) / 10000)  # sd of the difference of two MC estimates
    assert abs(p - ref) < 5 * se + 1e-3


def test_randomization_exact_small_case_matches_scipy():
    x = np.array([0.5, 0.7, 0.2, 0.9, 0.4, 0.6, 0.3])
    y = np.array([0.4, 0.5, 0.3, 0.6, 0.4, 0.2, 0.1])
    ref = sps.permutation_test((x, y), _mean_diff, permutation_type="samples", vectorized=True)
    assert ref.null_distribution.size == 2**7  # scipy enumerated every sign pattern
    p = randomization_test(dict(enumerate(x)), dict(enumerate(y)))["p"]
    assert p == pytest.approx(float(ref.pvalue), abs=1e-12)


def test_randomization_exact_by_hand():
    # differences +1, +1, +1: of the 8 sign patterns only all-plus and all-minus reach |mean| = 1
    p = randomization_test({1: 1.0, 2: 1.0, 3: 1.0}, {1: 0.0, 2: 0.0, 3: 0.0})["p"]
    assert p == pytest.approx(2 / 8)
    # differences +1, -1, +2 (sum 2): the signed sums over the 8 patterns are
    # +-2, +-2, +-4, 0, 0 - six of them reach |sum| >= 2
    p = randomization_test({1: 1.0, 2: 0.0, 3: 2.0}, {1: 0.0, 2: 1.0, 3: 0.0})["p"]
    assert p == pytest.approx(6 / 8)


def test_randomization_identical_gives_p1_and_p_is_never_zero(paired):
    a, b, _, _ = paired
    assert randomization_test(a, a, n_resamples=500)["p"] == 1.0
    far = {q: v + 10.0 for q, v in a.items()}
    p = randomization_test(far, a, n_resamples=999)["p"]
    assert p == pytest.approx(1 / 1000)


def test_randomization_is_deterministic_and_seeded(paired):
    a, b, _, _ = paired
    p0 = randomization_test(a, b, n_resamples=2000, seed=7)["p"]
    assert randomization_test(a, b, n_resamples=2000, seed=7)["p"] == p0
    reordered = dict(reversed(list(b.items())))
    assert randomization_test(a, reordered, n_resamples=2000, seed=7)["p"] == p0
    with pytest.raises(ValueError):
        randomization_test(a, b, n_resamples=0)


# ---------------------------------------------------------------------------- bootstrap
@pytest.mark.parametrize("paired_diff", [False, True])
def test_bootstrap_matches_scipy(paired, paired_diff):
    a, b, x, y = paired
    data = x - y if paired_diff else x
    res = bootstrap_ci(a, b if paired_diff else None, n_resamples=10000, confidence=0.95, seed=0)
    ref = sps.bootstrap((data,), np.mean, method="percentile", n_resamples=10000,
                        confidence_level=0.95, rng=0).confidence_interval
    assert res["mean"] == pytest.approx(float(data.mean()), rel=1e-12)
    se = float(data.std(ddof=1) / math.sqrt(data.size))
    # both are Monte-Carlo estimates of the same percentiles: agree to a fraction of a standard error
    assert res["low"] == pytest.approx(float(ref.low), abs=0.1 * se)
    assert res["high"] == pytest.approx(float(ref.high), abs=0.1 * se)
    assert res["low"] < res["mean"] < res["high"]


def test_bootstrap_confidence_widens_interval(paired):
    a, _, _, _ = paired
    narrow = bootstrap_ci(a, confidence=0.5, n_resamples=2000)
    wide = bootstrap_ci(a, confidence=0.99, n_resamples=2000)
    assert wide["low"] < narrow["low"] < narrow["high"] < wide["high"]
    with pytest.raises(ValueError):
        bootstrap_ci(a, confidence=1.0)


def test_bootstrap_degenerate():
    a = {"q1": 0.5, "q2": 0.7}
    assert bootstrap_ci(a, a) == {"mean": 0.0, "low": 0.0, "high": 0.0}
    assert bootstrap_ci({"q": 0.25}) == {"mean": 0.25, "low": 0.25, "high": 0.25}
    with pytest.raises(ValueError):
        bootstrap_ci({})


# ---------------------------------------------------------------------------- compare_paired
def test_compare_paired_fields_types_and_json(paired):
    a, b, x, y = paired
    res = compare_paired(a, b, seed=3)
    assert set(res) == {"mean_a", "mean_b", "diff", "ci_low", "ci_high", "t", "p_ttest",
                        "p_randomization", "n_queries"}
    assert type(res["n_queries"]) is int and res["n_queries"] == 300
    for k, v in res.items():
        if k != "n_queries":
            assert type(v) is float and math.isfinite(v), k
    assert json.loads(json.dumps(res, allow_nan=False)) == res
    assert res["mean_a"] == pytest.approx(x.mean()) and res["mean_b"] == pytest.approx(y.mean())
    assert res["diff"] == pytest.approx(res["mean_a"] - res["mean_b"])
    assert res["ci_low"] < res["diff"] < res["ci_high"]
    assert res["p_ttest"] == pytest.approx(paired_ttest(a, b)["p"])
    assert res["p_randomization"] == randomization_test(a, b, seed=3)["p"]
    assert (res["ci_low"], res["ci_high"]) == tuple(bootstrap_ci(a, b, seed=3)[k] for k in ("low", "high"))
    assert compare_paired(a, b, seed=3) == res  # deterministic


def test_compare_paired_identical_systems():
    a = {f"q{i}": i / 10 for i in range(10)}
    res = compare_paired(a, dict(a))
    assert res["diff"] == 0.0 and res["ci_low"] == 0.0 and res["ci_high"] == 0.0
    assert res["t"] == 0.0 and res["p_ttest"] == 1.0 and res["p_randomization"] == 1.0
    json.dumps(res, allow_nan=False)


def test_holm_matches_the_step_down_definition():
    from dpo_retrieval.experiment.stats import holm

    # Sorted p 0.01, 0.02, 0.04 -> 3*0.01, max(0.03, 2*0.02), max(0.04, 1*0.04)
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    # Monotone and capped at 1; a lone p-value is unchanged.
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([0.03]) == pytest.approx([0.03])
    # A p that is significant alone need not survive the correction.
    assert holm([0.046, 0.002, 0.45])[0] > 0.05
    assert holm([None, 0.01]) == [None, pytest.approx(0.01)]
    with pytest.raises(ValueError):
        holm([1.5])


# ---------------------------------------------------------------------------- harm rate and seeds
def test_harm_rate_counts_queries_below_base_by_more_than_the_margin():
    from dpo_retrieval.experiment.stats import harm_rate

    base = {"q1": 0.50, "q2": 0.50, "q3": 0.50, "q4": 0.50, "q5": 0.9, "only_base": 1.0}
    model = {"q1": 0.40,   # 0.10 below: harmed
             "q2": 0.46,   # 0.04 below: within the margin
             "q3": 0.60,   # better
             "q4": 0.449,  # 0.051 below: harmed
             "q5": 0.85,   # 0.05 below (up to rounding, not more): not harmed
             "only_model": 0.0}
    assert harm_rate(model, base) == pytest.approx(2 / 5)
    assert harm_rate(model, base, margin=0.0) == pytest.approx(4 / 5)
    assert harm_rate(base, base) == 0.0
    with pytest.raises(ValueError, match="no common queries"):
        harm_rate({"a": 1.0}, {"b": 1.0})
    from dpo_retrieval.experiment.stats import harm_indicators

    assert harm_indicators(model, base) == {"q1": 1.0, "q2": 0.0, "q3": 0.0, "q4": 1.0, "q5": 0.0}


def test_mean_std_over_seeds():
    from dpo_retrieval.experiment.stats import mean_std

    mean, std = mean_std([0.30, 0.32, 0.37])
    assert mean == pytest.approx(0.33) and std == pytest.approx(float(np.std([0.30, 0.32, 0.37], ddof=1)))
    assert mean_std([0.4]) == (pytest.approx(0.4), None)  # one seed: no std
    assert mean_std([None, 0.2, float("nan"), 0.4]) == (pytest.approx(0.3), pytest.approx(math.sqrt(0.02)))
    assert mean_std([]) == (None, None)


def test_average_per_query_over_seeds():
    from dpo_retrieval.experiment.stats import average_per_query

    seed1 = {"q1": 0.2, "q2": 1.0, "q3": 0.0}
    seed2 = {"q2": 0.5, "q1": 0.4, "q3": 0.3, "extra": 1.0}
    avg = average_per_query([seed1, seed2])
    assert avg == {"q1": pytest.approx(0.3), "q2": pytest.approx(0.75), "q3": pytest.approx(0.15)}
    assert average_per_query([seed1]) == seed1
    with pytest.raises(ValueError):
        average_per_query([])
    with pytest.raises(ValueError):
        average_per_query([{"a": 1.0}, {"b": 1.0}])
