"""The comparison report: report.json, report.md and a few PNG plots, from the compare command's results.

Input (built by the compare command)::

    results = {
        "dataset_runs": {
            "<dataset>": {"models": {            # "base" first, then each loss name
                "<model>": {"metrics": {"NDCG@10": .., "Recall@100": .., "MAP@100": .., "MRR@10": ..},
                            "per_query": {"NDCG@10": {qid: v}, ...},
                            "train_time_s": float | None, "eval_time_s": float | None},
                ...}},
            ...},
        "training_logs": {"<loss>": [{"step": 10, "loss": .., "rewards/margins": ..}, ...], ...},
        "config": {...},
    }

* :func:`build_report` - the report.json content (tables, paired comparisons via
  :func:`dpo_retrieval.experiment.stats.compare_paired`, training summary, config); JSON-safe.
* :func:`render_markdown` - report.md from that content.
* :func:`write_plots` - metric bars with CIs, per-query nDCG@10 differences, training curves.
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
from dpo_retrieval.experiment.stats import bootstrap_ci, compare_paired, holm

logger = logging.getLogger(__name__)

__all__ = ["METRICS", "build_report", "render_markdown", "write_plots", "write_report"]

METRICS = ("NDCG@10", "Recall@100", "MAP@100", "MRR@10")  # BEIR's names, as in the results
METRIC_LABELS = {"NDCG@10": "nDCG@10", "Recall@100": "Recall@100", "MAP@100": "MAP@100", "MRR@10": "MRR@10"}
BASELINE = "base"
SCHEMA_VERSION = 1
MISSING = "—"
MARGIN_KEY = "rewards/margins"


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


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def fmt_metric(value: Any) -> str:
    """A metric value to 4 decimals (``—`` when missing)."""
    v = _number(value)
    return MISSING if v is None else f"{v:.4f}"


def fmt_diff(value: Any) -> str:
    """A signed difference to 4 decimals, with a real minus sign."""
    v = _number(value)
    if v is None:
        return MISSING
    text = f"{v:+.4f}"
    return text.replace("-", "−")


def fmt_p(value: Any) -> str:
    """A p-value to 3 significant figures."""
    v = _number(value)
    if v is None:
        return MISSING
    return f"{v:#.3g}" if v >= 1e-4 or v == 0 else f"{v:.2e}"


def fmt_time(seconds: Any) -> str:
    """Seconds as ``12.3 s`` below a minute, else ``4.5 min``."""
    v = _number(seconds)
    if v is None:
        return MISSING
    return f"{v:.1f} s" if v < 60 else f"{v / 60:.1f} min"


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


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
# report.json
def _row(name: str, model: Mapping[str, Any], *, seed: int, n_resamples: int,
         confidence: float) -> dict[str, Any]:
    metrics = model.get("metrics") or {}
    row: dict[str, Any] = {"model": name}
    ci: dict[str, Any] = {}
    n_queries = 0
    for m in METRICS:
        pq = _per_query(model, m)
        value = _number(metrics.get(m))
        if pq is not None:
            boot = bootstrap_ci(pq, n_resamples=n_resamples, confidence=confidence, seed=seed)
            ci[m] = {"low": boot["low"], "high": boot["high"]}
            n_queries = max(n_queries, len(pq))
            if value is None:  # no aggregate given: the mean over queries is the same thing
                value = boot["mean"]
        row[m] = value
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


def build_report(results: Mapping[str, Any], *, seed: int = 0, n_resamples: int = 10000,
                 confidence: float = 0.95) -> dict[str, Any]:
    """The report.json content for ``results`` (see the module docstring for its shape).

    Per dataset: ``models`` (order: base first), ``rows`` (one per model: the four metrics,
    ``train_time_s``, ``eval_time_s``, ``n_queries`` and ``ci`` - a bootstrap CI of each metric's
    mean), and ``comparisons`` - for each model vs base and each pair of the other models, for
    each metric with per-query values on both sides, ``{"a", "b", "metric"}`` plus the fields of
    :func:`~dpo_retrieval.experiment.stats.compare_paired` (``diff`` is A - B). Also ``training`` (a summary
    of each training log) and ``config``. Deterministic for a seed; NaN/inf become null.
    """
    runs = _dataset_runs(results)
    datasets: dict[str, Any] = {}
    for ds_name, run in runs.items():
        models = (run or {}).get("models") or {}
        if not models:
            logger.warning("dataset %s has no models; left out of the report", ds_name)
            continue
        order = _model_order(models)
        rows = [_row(m, models[m], seed=seed, n_resamples=n_resamples, confidence=confidence)
                for m in order]
        comparisons = []
        for a, b in _pairs(order):
            for metric in METRICS:
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
                comparisons.append({"a": a, "b": b, "metric": metric, **stats})
        # Holm over the comparisons of one metric on one dataset (the rows of one table), t-test p-values.
        for metric in METRICS:
            family = [c for c in comparisons if c["metric"] == metric]
            for c, adjusted in zip(family, holm([c.get("p_ttest") for c in family])):
                c["p_holm"] = adjusted
        datasets[str(ds_name)] = {"models": order, "rows": rows, "comparisons": comparisons}

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
        "datasets": datasets,
        "training": training,
        "config": results.get("config") or {},
    }
    return _jsonable(report)


# ----------------------------------------------------------------------------------------------
# report.md
def _table(header: list[str], align: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |",
             "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    return lines


def render_markdown(report: Mapping[str, Any]) -> str:
    """report.md: per dataset a table of the models and a table of paired differences; then the
    training summary, a legend and the config."""
    pct = round(100 * float(report.get("confidence", 0.95)))
    n_res = report.get("n_resamples", 10000)
    datasets = report.get("datasets") or {}
    out = ["# Retrieval comparison: DPO vs contrastive fine-tuning", ""]
    names = list(dict.fromkeys(m for d in datasets.values() for m in d.get("models", [])))
    out += [f"Datasets: {', '.join(datasets) or MISSING}. Models: {', '.join(names) or MISSING}.", ""]

    for ds_name, ds in datasets.items():
        n_q = max([r.get("n_queries") or 0 for r in ds.get("rows", [])], default=0)
        out += [f"## {ds_name}" + (f" ({n_q} queries)" if n_q else ""), ""]
        header = ["Model"] + [METRIC_LABELS[m] for m in METRICS] + ["Train time", "Eval time"]
        rows = [[r["model"]] + [fmt_metric(r.get(m)) for m in METRICS]
                + [fmt_time(r.get("train_time_s")), fmt_time(r.get("eval_time_s"))]
                for r in ds.get("rows", [])]
        out += _table(header, ["l"] + ["r"] * (len(header) - 1), rows) + [""]

        comps = ds.get("comparisons") or []
        if comps:
            out += [f"Paired differences A − B over queries, with {pct}% CI:", ""]
            header = ["A − B", "Metric", "A", "B", "Diff", f"{pct}% CI", "p (t-test)",
                      "p (Holm)", "p (randomization)", "Queries"]
            rows = [[f"{c['a']} − {c['b']}", METRIC_LABELS.get(c["metric"], c["metric"]),
                     fmt_metric(c.get("mean_a")), fmt_metric(c.get("mean_b")), fmt_diff(c.get("diff")),
                     f"[{fmt_diff(c.get('ci_low'))}, {fmt_diff(c.get('ci_high'))}]",
                     fmt_p(c.get("p_ttest")), fmt_p(c.get("p_holm")), fmt_p(c.get("p_randomization")),
                     str(c.get("n_queries"))]
                    for c in comps]
            out += _table(header, ["l", "l"] + ["r"] * 8, rows) + [""]

    training = report.get("training") or {}
    if training:
        out += ["## Training", ""]
        rows = [[loss, str(t.get("n_logged", 0)), str(t.get("last_step") if t.get("last_step") is not None
                                                      else MISSING),
                 fmt_metric(t.get("final_loss")), fmt_metric(t.get("final_reward_margin"))]
                for loss, t in training.items()]
        out += _table(["Loss", "Log entries", "Last step", "Final loss", "Final reward margin"],
                      ["l", "r", "r", "r", "r"], rows) + [""]

    out += [
        "## Legend", "",
        "- Metrics are BEIR's (pytrec_eval) means over the test queries: nDCG@10, Recall@100, "
        "MAP@100, MRR@10. Times: training and evaluation wall-clock (— = not applicable).",
        "- A − B: the mean over the queries both models were evaluated on of A's score minus B's; "
        "`base` is the model before fine-tuning.",
        f"- {pct}% CI: percentile bootstrap of the mean paired difference ({n_res} resamples of queries).",
        "- p (t-test): two-sided paired t-test over queries (t = 0, p = 1 when all differences are equal).",
        f"- p (randomization): two-sided paired randomization test — each query's difference gets a "
        f"random sign, {n_res} times; p = share with |mean| at least the observed one, counting the "
        f"observed (smallest possible p is 1/{n_res + 1 if isinstance(n_res, int) else 'n+1'}); exact "
        "over all sign patterns when there are few queries.",
        "- p (Holm): the t-test p-value after Holm's step-down correction over the comparisons of the "
        "same metric on the same dataset (the family-wise error rate); call a difference significant "
        "only when this is below 0.05. The other p-values are uncorrected.",
        "",
        "## Config", "",
        "```json",
        json.dumps(report.get("config") or {}, indent=2, sort_keys=True, default=str),
        "```", "",
    ]
    return "\n".join(out)


def write_report(results: Mapping[str, Any], out_dir, *, seed: int = 0,
                 n_resamples: int = 10000) -> dict[str, Any]:
    """Build the report and write ``report.json``, ``report.md`` and the plots into ``out_dir``.

    Returns ``{"report_json": Path, "report_md": Path, "plots": [Path, ...], "report": dict}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = build_report(results, seed=seed, n_resamples=n_resamples)
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    write_text(json_path, json.dumps(report, indent=2, allow_nan=False) + "\n", fsync=True)
    write_text(md_path, render_markdown(report), fsync=True)
    from dpo_retrieval.experiment.plots import write_plots

    plots = write_plots(results, report, out_dir)
    logger.info("report written to %s (%d plots)", out_dir, len(plots))
    return {"report_json": json_path, "report_md": md_path, "plots": plots, "report": report}
