"""The report's PNG plots (matplotlib's Agg canvas, never pyplot's global state)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dpo_retrieval._io import atomic_path
from dpo_retrieval.experiment.report import (MARGIN_KEY, METRIC_LABELS, METRICS, _number, _per_query, _safe_name,
                                             collapsed_models)

logger = logging.getLogger(__name__)


def _new_figure(width: float, height: float, nrows: int = 1, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)  # Agg, without touching pyplot's global backend
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save_figure(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path, suffix=".png", fsync=True) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _plot_metrics(ds_name: str, ds: Mapping[str, Any], path: Path, confidence: float) -> Path:
    rows = ds.get("rows") or []
    fig, axes = _new_figure(7.5, 4.2)
    ax = axes[0][0]
    x = np.arange(len(METRICS))
    width = 0.8 / max(1, len(rows))
    for i, row in enumerate(rows):
        heights = np.array([np.nan if row.get(m) is None else row[m] for m in METRICS], dtype=float)
        err = np.zeros((2, len(METRICS)))
        for j, m in enumerate(METRICS):
            ci = (row.get("ci") or {}).get(m)
            if ci and ci.get("low") is not None and not np.isnan(heights[j]):
                err[0, j] = max(0.0, heights[j] - ci["low"])
                err[1, j] = max(0.0, ci["high"] - heights[j])
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, np.nan_to_num(heights), width,
               yerr=err, capsize=3, label=row["model"])
    ax.set_xticks(x)
    ax.set_xticklabels([METRIC_LABELS[m] for m in METRICS])
    ax.set_ylabel("score")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{ds_name}: metrics with {round(100 * confidence)}% bootstrap CI")
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.08),
              ncol=max(1, len(rows)), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _save_figure(fig, path)


def _plot_per_query_diff(ds_name: str, a: Mapping, b: Mapping, names: tuple[str, str],
                         path: Path) -> Path | None:
    common = [q for q in a if q in b]
    diffs = np.array([float(a[q]) - float(b[q]) for q in common], dtype=float)
    diffs = diffs[np.isfinite(diffs)]
    if diffs.size == 0:
        logger.warning("%s: no common queries for the per-query plot", ds_name)
        return None
    diffs = np.sort(diffs)[::-1]
    better, worse = int((diffs > 0).sum()), int((diffs < 0).sum())
    fig, axes = _new_figure(7.5, 4.0)
    ax = axes[0][0]
    idx = np.arange(diffs.size)
    ax.bar(idx, diffs, width=1.0, color=np.where(diffs >= 0, "tab:green", "tab:red"), linewidth=0)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.axhline(float(diffs.mean()), color="tab:blue", linestyle="--", linewidth=1,
               label=f"mean {diffs.mean():+.4f}")
    ax.set_xlim(-0.5, diffs.size - 0.5)
    ax.set_xlabel("queries, sorted by difference")
    ax.set_ylabel(f"nDCG@10 {names[0]} − {names[1]}")
    ax.set_title(f"{ds_name}: {names[0]} better on {better}, worse on {worse}, "
                 f"tied on {diffs.size - better - worse} queries")
    ax.legend(fontsize="small")
    return _save_figure(fig, path)


def _plot_forest(report: Mapping[str, Any], path: Path) -> Path | None:
    """Every paired difference A − B as a point with its CI as whiskers, around a zero line: one row per
    dataset and pair, one panel per metric; a filled marker when Holm's p is below 0.05."""
    found = {}
    for ds_name, ds in (report.get("datasets") or {}).items():
        for c in ds.get("comparisons") or []:
            if None not in (_number(c.get("diff")), _number(c.get("ci_low")), _number(c.get("ci_high"))):
                found[(ds_name, f"{c['a']} − {c['b']}", c["metric"])] = c
    if not found:
        return None
    labels = list(dict.fromkeys((ds, pair) for ds, pair, _ in found))
    metrics = [m for m in METRICS if any(k[2] == m for k in found)]
    datasets = list(dict.fromkeys(ds for ds, _ in labels))
    colors = {ds: f"C{i % 10}" for i, ds in enumerate(datasets)}
    fig, axes = _new_figure(2.0 + 3.0 * len(metrics), 1.4 + 0.32 * len(labels), 1, len(metrics))
    pct = round(100 * float(report.get("confidence") or 0.95))
    for col, m in enumerate(metrics):
        ax = axes[0][col]
        for i, (ds, pair) in enumerate(labels):
            c = found.get((ds, pair, m))
            if c is None:
                continue
            y = len(labels) - 1 - i
            sig = _number(c.get("p_holm")) is not None and c["p_holm"] < 0.05
            ax.errorbar([c["diff"]], [y], xerr=[[c["diff"] - c["ci_low"]], [c["ci_high"] - c["diff"]]], fmt="o",
                        color=colors[ds], mfc=colors[ds] if sig else "white", capsize=3, markersize=5)
        ax.axvline(0.0, color="black", linewidth=0.8)
        for k in range(1, len(labels)):  # a rule between datasets
            if labels[k][0] != labels[k - 1][0]:
                ax.axhline(len(labels) - k - 0.5, color="grey", linewidth=0.5, alpha=0.6)
        ax.set_ylim(-0.7, len(labels) - 0.3)
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels([f"{ds}: {pair}" for ds, pair in reversed(labels)] if col == 0 else [])
        ax.set_title(METRIC_LABELS[m])
        ax.set_xlabel(f"A − B, {pct}% bootstrap CI")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("Paired differences (filled: Holm-corrected p < 0.05)", fontsize="medium")
    return _save_figure(fig, path)


def _plot_training(logs: Mapping[str, Any], path: Path) -> Path | None:
    series = {}
    for loss, log in logs.items():
        log = [e for e in (log or []) if isinstance(e, Mapping)]
        for key in ("loss", MARGIN_KEY):
            pts = [(_number(e.get("step")), _number(e.get(key))) for e in log]
            pts = [(s, v) for s, v in pts if s is not None and v is not None]
            if pts:
                series[(str(loss), key)] = pts
    if not series:
        return None
    has_margin = any(key == MARGIN_KEY for _, key in series)
    fig, axes = _new_figure(11 if has_margin else 6, 4.0, 1, 2 if has_margin else 1)
    for col, key in enumerate(["loss", MARGIN_KEY] if has_margin else ["loss"]):
        ax = axes[0][col]
        for (loss, k), pts in series.items():
            if k == key:
                s, v = zip(*pts)
                ax.plot(s, v, marker="." if len(pts) < 50 else None, label=loss)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss" if key == "loss" else "reward margin")
        ax.set_title("Training loss" if key == "loss" else "DPO reward margin (rewards/margins)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    return _save_figure(fig, path)


def write_plots(results: Mapping[str, Any], report: Mapping[str, Any], out_dir) -> list[Path]:
    """Write the PNGs into ``out_dir`` and return their paths:

    * ``metrics_<dataset>.png`` - each model's four metrics as bars with the report's CI;
    * ``forest.png`` - every paired difference of the report with its CI, around zero;
    * ``per_query_diff_<dataset>.png`` - per-query nDCG@10 of dpo − contrastive, sorted (only when
      both models have per-query nDCG@10 on that dataset);
    * ``training_curves.png`` - training loss and DPO reward margin against step (when logged).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = collapsed_models(results)  # several training seeds: per-query scores averaged over them
    written: list[Path] = []
    for ds_name, ds in (report.get("datasets") or {}).items():
        safe = _safe_name(ds_name)
        written.append(_plot_metrics(ds_name, ds, out_dir / f"metrics_{safe}.png",
                                     float(report.get("confidence") or 0.95)))
        models = runs.get(ds_name) or {}
        dpo = next((name for name in ("dpo+mnrl", "dpo") if name in models), None)  # the default's DPO model
        if dpo and "contrastive" in models:
            a, b = _per_query(models[dpo], "NDCG@10"), _per_query(models["contrastive"], "NDCG@10")
            if a is not None and b is not None:
                p = _plot_per_query_diff(ds_name, a, b, (dpo, "contrastive"),
                                         out_dir / f"per_query_diff_{safe}.png")
                if p is not None:
                    written.append(p)
    p = _plot_forest(report, out_dir / "forest.png")
    if p is not None:
        written.append(p)
    p = _plot_training(results.get("training_logs") or {}, out_dir / "training_curves.png")
    if p is not None:
        written.append(p)
    return written
