"""Paired significance tests over queries, as small pure functions.

Every function takes per-query metric values as ``{qid: score}`` dicts (e.g. nDCG@10 of each test
query). Two dicts are *paired* on the intersection of their qids, in sorted qid order, so the
result never depends on dict order; an empty intersection is an error. All results are plain
Python floats/ints (JSON-serialisable) and, for the resampling tests, deterministic for a seed.

* :func:`paired_ttest` - two-sided paired t-test (the same numbers as ``scipy.stats.ttest_rel``).
* :func:`randomization_test` - two-sided paired sign-flip permutation test on the mean difference.
* :func:`bootstrap_ci` - percentile bootstrap CI of a mean (or of the mean paired difference).
* :func:`compare_paired` - all of the above for one pair of systems, as one flat dict.
* :func:`holm` - Holm's step-down adjustment of a family of p-values (multiple comparisons).
* :func:`harm_rate` - share of queries where a model falls below a baseline by more than a margin.
* :func:`mean_std` / :func:`average_per_query` - aggregation over training seeds.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["paired_ttest", "randomization_test", "bootstrap_ci", "compare_paired", "holm", "harm_rate",
           "mean_std", "average_per_query"]

#: a query is "harmed" when the model's score is below the baseline's by more than this (nDCG@10)
HARM_MARGIN = 0.05

# Resampling works in chunks of about this many matrix cells, so memory stays bounded
# (10,000 resamples x 7,000 queries would otherwise be a 560 MB matrix).
_CHUNK_CELLS = 2_000_000


# ----------------------------------------------------------------------------------------------
# input handling
def _sorted_qids(qids) -> list:
    """Sorted qids (natively when comparable, else by type name and text), so order never depends
    on dict order or on string hashing."""
    qids = list(qids)
    try:
        return sorted(qids)
    except TypeError:
        return sorted(qids, key=lambda q: (type(q).__name__, str(q)))


def _values(scores: Mapping[Any, float], qids: list, name: str) -> np.ndarray:
    x = np.asarray([scores[q] for q in qids], dtype=np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        q = qids[int(np.flatnonzero(bad)[0])]
        raise ValueError(f"{name}: non-finite score {scores[q]!r} for query {q!r}")
    return x


def _check_mapping(scores: Any, name: str) -> None:
    if not isinstance(scores, Mapping):
        raise TypeError(f"{name} must be a dict {{qid: score}}, got {type(scores).__name__}")


def _align(a: Mapping[Any, float], b: Mapping[Any, float]) -> tuple[np.ndarray, np.ndarray]:
    """The two score vectors over the sorted common qids; ValueError when nothing is shared."""
    _check_mapping(a, "a")
    _check_mapping(b, "b")
    common = _sorted_qids(set(a).intersection(b))
    if not common:
        raise ValueError(f"no common queries to pair (a has {len(a)} qids, b has {len(b)})")
    if len(common) < max(len(a), len(b)):
        logger.warning("pairing on %d common queries (a has %d, b has %d); the others are ignored",
                       len(common), len(a), len(b))
    return _values(a, common, "a"), _values(b, common, "b")


def _one_sample(a: Mapping[Any, float]) -> np.ndarray:
    _check_mapping(a, "a")
    if not a:
        raise ValueError("no queries: the score dict is empty")
    return _values(a, _sorted_qids(a), "a")


def _check_n_resamples(n_resamples: int) -> int:
    if isinstance(n_resamples, bool) or int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    return int(n_resamples)


def _is_constant(d: np.ndarray) -> bool:
    """All values equal, up to rounding in the subtraction that made them."""
    scale = float(np.max(np.abs(d)))
    return float(np.ptp(d)) <= 16 * np.finfo(np.float64).eps * scale


# ----------------------------------------------------------------------------------------------
# tests
def paired_ttest(a: Mapping[Any, float], b: Mapping[Any, float]) -> dict[str, float]:
    """Two-sided paired t-test of mean(a - b) = 0 over the common queries.

    Returns ``{"t": t, "p": p}`` with the values of ``scipy.stats.ttest_rel(a, b)``. When the test is
    undefined - every difference equal (e.g. ``a == b``), or a single query - it returns
    ``t = 0.0, p = 1.0`` instead of scipy's NaN/inf, logging a warning if the differences are not
    all zero (the randomization test still says something in that case).
    """
    return _ttest(*_align(a, b))


def _ttest(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    d = x - y
    if d.size < 2 or _is_constant(d):
        if np.any(d != 0):
            logger.warning("paired t-test undefined: %s; reporting t=0, p=1",
                           "a single query" if d.size < 2 else "all differences are equal")
        return {"t": 0.0, "p": 1.0}
    from scipy import stats

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_rel(x, y)
    t, p = float(res.statistic), float(res.pvalue)
    if not (math.isfinite(t) and math.isfinite(p)):  # cannot happen for non-constant finite data
        logger.warning("paired t-test gave t=%r, p=%r; reporting t=0, p=1", t, p)
        return {"t": 0.0, "p": 1.0}
    return {"t": t, "p": p}


def randomization_test(
    a: Mapping[Any, float], b: Mapping[Any, float], *, n_resamples: int = 10000, seed: int = 0
) -> dict[str, float]:
    """Two-sided paired randomization (sign-flip permutation) test on the mean difference.

    Under the null hypothesis the two systems are exchangeable on each query, so each difference
    ``a_i - b_i`` is equally likely to have either sign. The p-value is the share of sign flips
    whose ``|mean|`` is at least the observed ``|mean(a - b)|``:

    * Monte Carlo (``2**n > n_resamples``): ``n_resamples`` random flips, ``p = (count + 1) /
      (n_resamples + 1)`` (the observed assignment counts as one; p is never 0);
    * exact (``2**n <= n_resamples``): all ``2**n`` flips are enumerated, ``p = count / 2**n``.

    This matches ``scipy.stats.permutation_test((a, b), lambda x, y: mean(x - y),
    permutation_type="samples")`` (exactly in the exact case; within Monte-Carlo error otherwise).
    Returns ``{"p": p}``.
    """
    n_resamples = _check_n_resamples(n_resamples)
    x, y = _align(a, b)
    return _randomization(x - y, n_resamples, seed)


def _randomization(d: np.ndarray, n_resamples: int, seed: int) -> dict[str, float]:
    """``scipy.stats.permutation_test`` on one sample (``permutation_type="samples"`` flips signs) with
    the statistic ``|mean|`` and ``alternative="greater"``: the share of sign patterns whose ``|mean|``
    is at least the observed one; exact when ``2**n <= n_resamples``, else Monte Carlo with
    ``p = (count + 1) / (n_resamples + 1)``."""
    from scipy import stats

    res = stats.permutation_test((d,), lambda x, axis: np.abs(np.mean(x, axis=axis)), vectorized=True,
                                 permutation_type="samples", n_resamples=n_resamples, alternative="greater",
                                 batch=max(1, _CHUNK_CELLS // d.size), rng=np.random.default_rng(seed))
    return {"p": float(min(1.0, res.pvalue))}


def bootstrap_ci(
    a: Mapping[Any, float],
    b: Mapping[Any, float] | None = None,
    *,
    n_resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Percentile bootstrap confidence interval of a mean over queries.

    With ``b=None`` it is the mean of ``a``; otherwise the mean paired difference ``a - b`` over
    the common queries. Queries are resampled with replacement ``n_resamples`` times; the interval
    is the ``(1 - confidence)/2`` and ``(1 + confidence)/2`` percentiles of the resampled means
    (``scipy.stats.bootstrap(..., method="percentile")`` up to Monte-Carlo error).
    Returns ``{"mean": observed mean, "low": ..., "high": ...}``.
    """
    n_resamples = _check_n_resamples(n_resamples)
    _check_confidence(confidence)
    if b is None:
        x = _one_sample(a)
    else:
        xa, xb = _align(a, b)
        x = xa - xb
    return _bootstrap(x, n_resamples, confidence, seed)


def _check_confidence(confidence: float) -> None:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) \
            or not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def _bootstrap(x: np.ndarray, n_resamples: int, confidence: float, seed: int) -> dict[str, float]:
    """``scipy.stats.bootstrap`` with ``method="percentile"`` on the mean."""
    from scipy import stats

    mean = float(x.mean())
    if _is_constant(x):  # every resample has the same mean (scipy would warn about a degenerate sample)
        return {"mean": mean, "low": mean, "high": mean}
    res = stats.bootstrap((x,), np.mean, n_resamples=n_resamples, confidence_level=confidence,
                          method="percentile", vectorized=True, batch=max(1, _CHUNK_CELLS // x.size),
                          rng=np.random.default_rng(seed))
    ci = res.confidence_interval
    return {"mean": mean, "low": float(ci.low), "high": float(ci.high)}


def compare_paired(
    a: Mapping[Any, float],
    b: Mapping[Any, float],
    *,
    seed: int = 0,
    n_resamples: int = 10000,
    confidence: float = 0.95,
) -> dict[str, float | int]:
    """Everything the report says about "system A vs system B" on one metric.

    Returns plain floats/ints: ``mean_a``, ``mean_b`` and ``diff`` (the mean of ``a - b``, i.e.
    ``mean_a - mean_b`` up to rounding) over the common queries, ``ci_low``/``ci_high`` (percentile bootstrap CI of the mean difference), ``t`` and
    ``p_ttest`` (paired t-test), ``p_randomization`` (paired sign-flip test) and ``n_queries``.
    Deterministic for a given ``seed``.
    """
    n_resamples = _check_n_resamples(n_resamples)
    _check_confidence(confidence)
    x, y = _align(a, b)
    d = x - y
    tt = _ttest(x, y)
    rt = _randomization(d, n_resamples, seed)
    ci = _bootstrap(d, n_resamples, confidence, seed)
    return {
        "mean_a": float(x.mean()),
        "mean_b": float(y.mean()),
        "diff": ci["mean"],
        "ci_low": ci["low"],
        "ci_high": ci["high"],
        "t": tt["t"],
        "p_ttest": tt["p"],
        "p_randomization": rt["p"],
        "n_queries": int(x.size),
    }


def holm(pvalues) -> list[float]:
    """Holm's (1979) step-down adjusted p-values, in the input order.

    The family's p-values sorted ascending, p_(i) is multiplied by (m - i) (i from 0), the running
    maximum is taken and capped at 1. A comparison is significant at level alpha after correction
    when its adjusted p is below alpha; this controls the family-wise error rate without assuming
    independence. ``None``/NaN entries are left out of the family and come back as ``None``.
    """
    values = [None if p is None or not math.isfinite(float(p)) else float(p) for p in pvalues]
    present = sorted((p, i) for i, p in enumerate(values) if p is not None)
    for p, _ in present:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p-values must be in [0, 1], got {p}")
    m = len(present)
    out: list[float | None] = [None] * len(values)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def harm_indicators(a: Mapping[Any, float], base: Mapping[Any, float], *,
                    margin: float = HARM_MARGIN) -> dict[Any, float]:
    """``{query: 1.0 or 0.0}`` over the common queries: 1 where ``a`` is below ``base`` by more than
    ``margin`` (``base - a > margin``; a difference equal to the margin up to rounding is not counted).
    The input of a paired test of two models' harm; ValueError when no query is shared."""
    _align(a, base)  # the same checks (and error) as every paired statistic
    return {q: float(base[q] - a[q] > margin + 1e-9) for q in a if q in base}


def harm_rate(a: Mapping[Any, float], base: Mapping[Any, float], *, margin: float = HARM_MARGIN) -> float:
    """Share of the common queries where ``a`` is below ``base`` by more than ``margin`` (the mean of
    :func:`harm_indicators`); ValueError when no query is shared."""
    flags = harm_indicators(a, base, margin=margin)
    return float(np.mean(list(flags.values())))


def mean_std(values) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1) of the finite ``values`` (e.g. one metric over
    training seeds); the std is None with fewer than two values, both are None with none."""
    x = np.asarray([float(v) for v in values if v is not None and math.isfinite(float(v))], dtype=np.float64)
    if x.size == 0:
        return None, None
    return float(x.mean()), (float(x.std(ddof=1)) if x.size > 1 else None)


def average_per_query(runs) -> dict:
    """``{qid: mean score}`` over several ``{qid: score}`` dicts (one per training seed), on the qids
    every dict holds (a warning when some are dropped); ValueError when none is shared."""
    runs = list(runs)
    if not runs:
        raise ValueError("no runs to average")
    for r in runs:
        _check_mapping(r, "runs")
    common = _sorted_qids(set(runs[0]).intersection(*runs[1:]))
    if not common:
        raise ValueError("no query is common to every run")
    if any(len(r) > len(common) for r in runs):
        logger.warning("averaging over seeds on the %d queries every seed has (up to %d in one)",
                       len(common), max(len(r) for r in runs))
    stacked = np.stack([_values(r, common, "runs") for r in runs])
    return {q: float(v) for q, v in zip(common, stacked.mean(axis=0))}
