"""The comparison report: report.json, report.md and a few PNG plots, from the compare command's results.

Input (built by the compare command)::

    results = {
        "dataset_runs": {
            "<dataset>": {"models": {            # "base" first, then each loss name
                "<model>": {"metrics": {"NDCG@10": .., "Recall@100": .., "MAP@100": .., "MRR@10": ..},
                            "per_query": {"NDCG@10": {qid: v}, ...},
                            "train_time_s": float | None, "eval_time_s": float | None},
                # or, for a model trained with several seeds, one such entry per training seed:
                "<model>": {"seeds": {1: {...}, 2: {...}}},
                ...}},
            ...},
        "training_logs": {"<loss>": [{"step": 10, "loss": .., "rewards/margins": ..}, ...], ...},
        "config": {...},
    }

* :func:`collapse_seeds` - a model's seeds folded into one entry (mean metrics, per-query means, std).
* :func:`build_report` - the report.json content (tables, paired comparisons via
  :func:`dpo_retrieval.experiment.stats.compare_paired`, training summary, config); JSON-safe.
* :func:`~dpo_retrieval.experiment.tables.render_markdown` - report.md from that content.
* :func:`~dpo_retrieval.experiment.plots.write_plots` - metric bars, a forest plot of the paired
  differences, per-query nDCG@10 differences, training curves.
* :func:`write_report` - all of the above into a folder, each file written atomically.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from dpo_retrieval._io import write_text
from dpo_retrieval.experiment.stats import (HARM_MARGIN, average_per_query, bootstrap_ci, compare_paired, harm_rate,
                                            holm, mean_std)
from dpo_retrieval.experiment.tables import (BASELINE, MARGIN_KEY, METRIC_LABELS, METRICS, MISSING,  # noqa: F401
                                             _number, fmt_diff, fmt_metric, fmt_p, fmt_pct, fmt_time,
                                             render_markdown)

logger = logging.getLogger(__name__)

__all__ = ["METRICS", "build_report", "collapse_seeds", "render_markdown", "write_report"]

SCHEMA_VERSION = 2  # 2: Holm over all comparisons of a dataset; seeds (std, per_seed), harm_rate
HOLM_FAMILY = "all comparisons of one dataset's table (every pair of models and every metric), t-test p-values"


# ----------------------------------------------------------------------------------------------
# small helpers
def _jsonable(obj: Any) -> Any:
    """A copy of ``obj`` that ``json.dumps(..., allow_nan=False)`` accepts: str keys, plain numbers,
    NaN/inf -> None, paths and other objects -> str."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, np.bool_):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    return str(obj)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "dataset"


def _model_order(models: Mapping[str, Any]) -> list[str]:
    names = [str(m) for m in models]
    return ([BASELINE] if BASELINE in names else []) + [m for m in names if m != BASELINE]


def _per_query(model: Mapping[str, Any], metric: str) -> dict | None:
    pq = (model.get("per_query") or {}).get(metric)
    return pq if isinstance(pq, Mapping) and pq else None


def _dataset_runs(results: Mapping[str, Any]) -> Mapping[str, Any]:
    if not isinstance(results, Mapping) or not isinstance(results.get("dataset_runs"), Mapping):
        raise ValueError("results must be a dict with a 'dataset_runs' dict")
    return results["dataset_runs"]


# ----------------------------------------------------------------------------------------------
# training seeds
def _metric(model: Mapping[str, Any], metric: str) -> float | None:
    value = _number((model.get("metrics") or {}).get(metric))
    pq = _per_query(model, metric)
    if value is None and pq is not None:  # no aggregate given: the mean over queries is the same thing
        value = mean_std(pq.values())[0]
    return value


def collapse_seeds(model: Mapping[str, Any]) -> dict[str, Any]:
    """One model entry from ``{"seeds": {seed: entry}}``: each metric the mean over the seeds (``std``: the
    sample std, None with one seed), each per-query score the mean over the seeds (the input of every
    paired test), train and eval time the mean, and ``per_seed``: ``{seed: {metric: value, "train_time_s"}}``.
    An entry without seeds comes back as it is."""
    seeds = model.get("seeds")
    if not isinstance(seeds, Mapping) or not seeds:
        return dict(model)
    entries = list(seeds.values())
    out: dict[str, Any] = {"metrics": {}, "per_query": {}, "std": {}, "seeds": list(seeds),
                           "per_seed": {s: {**{m: _metric(e, m) for m in METRICS},
                                            "train_time_s": _number(e.get("train_time_s"))}
                                        for s, e in seeds.items()}}
    for m in METRICS:
        mean, std = mean_std(_metric(e, m) for e in entries)
        if mean is not None:
            out["metrics"][m], out["std"][m] = mean, std
        pqs = [_per_query(e, m) for e in entries]
        if all(pq is not None for pq in pqs):
            try:
                out["per_query"][m] = average_per_query(pqs)
            except ValueError as err:
                logger.warning("per-query %s not averaged over seeds: %s", m, err)
    for key in ("train_time_s", "eval_time_s"):
        out[key] = mean_std(_number(e.get(key)) for e in entries)[0]
    return out


def collapsed_models(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{dataset: {model: entry}}`` with every multi-seed entry collapsed by :func:`collapse_seeds`."""
    return {str(ds): {str(name): collapse_seeds(entry) for name, entry in ((run or {}).get("models") or {}).items()}
            for ds, run in _dataset_runs(results).items()}


# ----------------------------------------------------------------------------------------------
# report.json
def _row(name: str, model: Mapping[str, Any], base: Mapping[str, Any] | None, *, seed: int, n_resamples: int,
         confidence: float) -> dict[str, Any]:
    row: dict[str, Any] = {"model": name}
    ci: dict[str, Any] = {}
    n_queries = 0
    for m in METRICS:
        pq = _per_query(model, m)
        if pq is not None:
            boot = bootstrap_ci(pq, n_resamples=n_resamples, confidence=confidence, seed=seed)
            ci[m] = {"low": boot["low"], "high": boot["high"]}
            n_queries = max(n_queries, len(pq))
        row[m] = _metric(model, m)
    row["std"] = {m: (model.get("std") or {}).get(m) for m in METRICS}
    row["seeds"] = list(model.get("seeds") or [])
    row["per_seed"] = model.get("per_seed") or {}
    pq, pq_base = _per_query(model, "NDCG@10"), None if base is None else _per_query(base, "NDCG@10")
    row["harm_rate"] = None
    if name != BASELINE and pq is not None and pq_base is not None:
        try:
            row["harm_rate"] = harm_rate(pq, pq_base)
        except ValueError as err:
            logger.warning("%s: no harm rate: %s", name, err)
    row["train_time_s"] = _number(model.get("train_time_s"))
    row["eval_time_s"] = _number(model.get("eval_time_s"))
    row["n_queries"] = n_queries
    row["ci"] = ci
    return row


def _pairs(order: list[str]) -> list[tuple[str, str]]:
    """(A, B) for "A - B": every model against the baseline, then every pair of the others."""
    others = [m for m in order if m != BASELINE]
    pairs = [(m, BASELINE) for m in others] if BASELINE in order else []
    return pairs + list(combinations(others, 2))


def _per_seed_diff(a: Mapping[str, Any], b: Mapping[str, Any], metric: str) -> dict:
    """A's metric on each of its seeds minus B's (B's same seed when B has seeds, else B's value)."""
    out = {}
    for s, values in (a.get("per_seed") or {}).items():
        other = ((b.get("per_seed") or {}).get(s) or {}).get(metric) if b.get("per_seed") else _metric(b, metric)
        if values.get(metric) is not None and other is not None:
            out[s] = values[metric] - other
    return out


def build_report(results: Mapping[str, Any], *, seed: int = 0, n_resamples: int = 10000,
                 confidence: float = 0.95, pairs=None, metrics=None) -> dict[str, Any]:
    """The report.json content for ``results`` (see the module docstring for its shape).

    Per dataset: ``models`` (order: base first), ``rows`` (one per model: the four metrics - the mean
    over training seeds -, ``std`` (sample std over seeds, null with one), ``seeds`` and ``per_seed``
    (each seed's metrics and train time), ``harm_rate`` (share of queries with nDCG@10 below the base's
    by more than 0.05), ``train_time_s``, ``eval_time_s``, ``n_queries`` and ``ci`` - a bootstrap CI of
    each metric's mean), and ``comparisons`` - for each model vs base and each pair of the other models,
    for each metric with per-query values on both sides (averaged over seeds), ``{"a", "b", "metric"}``
    plus the fields of :func:`~dpo_retrieval.experiment.stats.compare_paired` (``diff`` is A - B),
    ``per_seed_diff`` and ``p_holm`` (Holm over all comparisons of the dataset). Also ``training`` (a
    summary of each training log) and ``config``. Deterministic for a seed; NaN/inf become null.

    ``pairs`` (``[(A, B), ...]``) and ``metrics`` narrow the tested family to those comparisons and
    metrics (pairs naming a model a dataset lacks are skipped there); Holm then runs over that family
    only, and ``holm_family`` says so.
    """
    tested = list(metrics or METRICS)
    datasets: dict[str, Any] = {}
    for ds_name, models in collapsed_models(results).items():
        if not models:
            logger.warning("dataset %s has no models; left out of the report", ds_name)
            continue
        order = _model_order(models)
        rows = [_row(m, models[m], models.get(BASELINE), seed=seed, n_resamples=n_resamples, confidence=confidence)
                for m in order]
        comparisons = []
        for a, b in (_pairs(order) if pairs is None else [(a, b) for a, b in pairs if a in models and b in models]):
            for metric in tested:
                pa, pb = _per_query(models[a], metric), _per_query(models[b], metric)
                if pa is None or pb is None:
                    logger.warning("%s: no per-query %s for %s; %s vs %s not compared", ds_name,
                                   metric, a if pa is None else b, a, b)
                    continue
                try:
                    stats = compare_paired(pa, pb, seed=seed, n_resamples=n_resamples,
                                           confidence=confidence)
                except ValueError as err:
                    logger.warning("%s: %s vs %s on %s not compared: %s", ds_name, a, b, metric, err)
                    continue
                comparisons.append({"a": a, "b": b, "metric": metric, **stats,
                                    "per_seed_diff": _per_seed_diff(models[a], models[b], metric)})
        # Holm over every comparison of the dataset's table (all pairs, all metrics), t-test p-values.
        for c, adjusted in zip(comparisons, holm([c.get("p_ttest") for c in comparisons])):
            c["p_holm"] = adjusted
        datasets[ds_name] = {"models": order, "rows": rows, "comparisons": comparisons}

    training = {}
    for loss, log in (results.get("training_logs") or {}).items():
        log = [e for e in (log or []) if isinstance(e, Mapping)]
        with_loss = [e for e in log if _number(e.get("loss")) is not None]
        with_margin = [e for e in log if _number(e.get(MARGIN_KEY)) is not None]
        steps = [_number(e.get("step")) for e in log if _number(e.get("step")) is not None]
        training[str(loss)] = {
            "n_logged": len(log),
            "last_step": int(max(steps)) if steps else None,
            "final_loss": _number(with_loss[-1]["loss"]) if with_loss else None,
            "final_reward_margin": _number(with_margin[-1][MARGIN_KEY]) if with_margin else None,
        }

    report = {
        "schema_version": SCHEMA_VERSION,
        "metrics": list(METRICS),
        "seed": seed,
        "n_resamples": n_resamples,
        "confidence": confidence,
        "holm_family": HOLM_FAMILY if pairs is None and metrics is None else (
            "the listed comparisons of one dataset (" + ", ".join(f"{a} - {b}" for a, b in pairs or []) +
            ("" if pairs is not None else "every pair of models") + f"; metrics: {', '.join(tested)}), t-test p-values"),
        "harm_margin": HARM_MARGIN,
        "datasets": datasets,
        "training": training,
        "config": results.get("config") or {},
    }
    return _jsonable(report)


def write_report(results: Mapping[str, Any], out_dir, *, seed: int = 0,
                 n_resamples: int = 10000, pairs=None, metrics=None) -> dict[str, Any]:
    """Build the report (``pairs``, ``metrics``: see :func:`build_report`) and write ``report.json``, ``report.md`` and the plots into ``out_dir``.

    Returns ``{"report_json": Path, "report_md": Path, "plots": [Path, ...], "report": dict}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = build_report(results, seed=seed, n_resamples=n_resamples, pairs=pairs, metrics=metrics)
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    write_text(json_path, json.dumps(report, indent=2, allow_nan=False) + "\n", fsync=True)
    write_text(md_path, render_markdown(report), fsync=True)
    from dpo_retrieval.experiment.plots import write_plots

    plots = write_plots(results, report, out_dir)
    logger.info("report written to %s (%d plots)", out_dir, len(plots))
    return {"report_json": json_path, "report_md": md_path, "plots": plots, "report": report}
