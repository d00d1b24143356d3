"""report.md: the report's tables as Markdown, and the number formats they use.

:func:`render_markdown` turns :func:`dpo_retrieval.experiment.report.build_report`'s content into
report.md: per dataset a table of the models (mean ± std over training seeds when there are several,
the harm rate) and a table of paired differences (Holm-corrected over the whole table).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from dpo_retrieval.experiment.stats import HARM_MARGIN

__all__ = ["METRICS", "METRIC_LABELS", "render_markdown", "fmt_metric", "fmt_diff", "fmt_p", "fmt_time", "fmt_pct"]

METRICS = ("NDCG@10", "Recall@100", "MAP@100", "MRR@10")  # BEIR's names, as in the results
METRIC_LABELS = {"NDCG@10": "nDCG@10", "Recall@100": "Recall@100", "MAP@100": "MAP@100", "MRR@10": "MRR@10"}
BASELINE = "base"
MISSING = "—"
MARGIN_KEY = "rewards/margins"


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


def fmt_metric_std(value: Any, std: Any) -> str:
    """``mean ± std`` to 4 decimals; the mean alone when there is no std (one seed, or the base)."""
    s = _number(std)
    return fmt_metric(value) if s is None or _number(value) is None else f"{fmt_metric(value)} ± {s:.4f}"


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


def fmt_pct(share: Any) -> str:
    """A share in [0, 1] as a percentage with one decimal."""
    v = _number(share)
    return MISSING if v is None else f"{100 * v:.1f}%"


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], align: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |",
             "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    return lines


def _models_table(ds: Mapping[str, Any]) -> list[str]:
    rows = ds.get("rows", [])
    multi = [r for r in rows if len(r.get("seeds") or []) > 1]
    out = []
    if multi:
        seeds = list(dict.fromkeys(s for r in multi for s in r["seeds"]))
        out += [f"Trained models: mean ± sample standard deviation over training seeds "
                f"{', '.join(str(s) for s in seeds)}; the base is evaluated once.", ""]
    header = ["Model"] + [METRIC_LABELS[m] for m in METRICS] + ["Harm rate", "Train time", "Eval time"]
    body = [[r["model"]] + [fmt_metric_std(r.get(m), (r.get("std") or {}).get(m)) for m in METRICS]
            + [fmt_pct(r.get("harm_rate")), fmt_time(r.get("train_time_s")), fmt_time(r.get("eval_time_s"))]
            for r in rows]
    out += _table(header, ["l"] + ["r"] * (len(header) - 1), body) + [""]
    if multi:  # every seed's nDCG@10, so a mean is never read without its parts
        seeds = list(dict.fromkeys(s for r in multi for s in r["seeds"]))
        body = [[r["model"]] + [fmt_metric(((r.get("per_seed") or {}).get(str(s)) or {}).get("NDCG@10"))
                                for s in seeds] for r in multi]
        out += ["nDCG@10 per training seed:", ""]
        out += _table(["Model"] + [f"seed {s}" for s in seeds], ["l"] + ["r"] * len(seeds), body) + [""]
    return out


def render_markdown(report: Mapping[str, Any]) -> str:
    """report.md: per dataset a table of the models and a table of paired differences; then the
    training summary, a legend and the config."""
    pct = round(100 * float(report.get("confidence", 0.95)))
    n_res = report.get("n_resamples", 10000)
    margin = report.get("harm_margin", HARM_MARGIN)
    datasets = report.get("datasets") or {}
    out = ["# Retrieval comparison: DPO vs contrastive fine-tuning", ""]
    names = list(dict.fromkeys(m for d in datasets.values() for m in d.get("models", [])))
    out += [f"Datasets: {', '.join(datasets) or MISSING}. Models: {', '.join(names) or MISSING}.", ""]

    for ds_name, ds in datasets.items():
        n_q = max([r.get("n_queries") or 0 for r in ds.get("rows", [])], default=0)
        out += [f"## {ds_name}" + (f" ({n_q} queries)" if n_q else ""), ""]
        out += _models_table(ds)
        comps = ds.get("comparisons") or []
        if comps:
            family = ("every pair and every metric" if str(report.get("holm_family", "")).startswith("all")
                      else "the listed pairs and metrics")
            out += [f"Paired differences A − B over queries, with {pct}% CI; p (Holm) is corrected over all "
                    f"{len(comps)} comparisons of this table ({family}):", ""]
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

    holm_family = report.get("holm_family") or "all comparisons of one dataset's table"
    out += [
        "## Legend", "",
        "- Metrics come from one pytrec_eval pass, averaged over the test queries as BEIR averages them: "
        "nDCG@10, Recall@100, MAP@100, MRR@10. Times: training and evaluation wall-clock (— = not applicable).",
        "- Several training seeds: each trained model's metric is the mean over its seeds ± the sample "
        "standard deviation (n − 1); its per-query scores are averaged over the seeds before every paired "
        "test, CI and harm rate (mining and the training triplets are the same for every seed).",
        f"- Harm rate: the share of queries where the model's nDCG@10 is below the base's by more than "
        f"{margin:g} (per-query scores averaged over seeds).",
        "- A − B: the mean over the queries both models were evaluated on of A's score minus B's; "
        "`base` is the model before fine-tuning.",
        f"- {pct}% CI: percentile bootstrap of the mean paired difference ({n_res} resamples of queries).",
        "- p (t-test): two-sided paired t-test over queries (t = 0, p = 1 when all differences are equal).",
        f"- p (randomization): two-sided paired randomization test — each query's difference gets a "
        f"random sign, {n_res} times; p = share with |mean| at least the observed one, counting the "
        f"observed (smallest possible p is 1/{n_res + 1 if isinstance(n_res, int) else 'n+1'}); exact "
        "over all sign patterns when there are few queries.",
        f"- p (Holm): the t-test p-value after Holm's step-down correction over {holm_family} (the "
        "family-wise error rate); call a "
        "difference significant only when this is below 0.05. The other p-values are uncorrected.",
        "- forest.png: each paired difference with its CI as a point and whiskers around zero.",
        "",
        "## Config", "",
        "```json",
        json.dumps(report.get("config") or {}, indent=2, sort_keys=True, default=str),
        "```", "",
    ]
    return "\n".join(out)
