"""The study's report (``python scripts/study.py report``): from what benchmarks/results/study/ records, the
final table (SciFact test, dev, dbpedia-entity-5k; seeds averaged; Holm over the tests against base and
against the best contrastive model), the data-efficiency curve, drift against beta, harm rates, and the
verdict on each criterion stated in configs/study/study.yaml before the finals ran.

Writes benchmarks/results/study_scifact.json and .md, benchmarks/results/study/final_report/ (compare's
report.json, report.md, forest.png ...), data_efficiency.png and drift_vs_beta.png.
"""

from __future__ import annotations

import json
from pathlib import Path

import study as S
from study_plots import plots

TEST, DEV, OOD = "scifact", "scifact-dev", "dbpedia-entity-5k"
METRIC = "NDCG@10"
OUT = Path("benchmarks") / "results"


def load_group(kept: Path, config_sha: str | None = None, seeds: list[int] | None = None) -> dict:
    """``{"base": entry or None, "models": {model: {seed: entry}}, "stale": [files]}`` from a folder of
    exports; with ``config_sha`` only those made from that config, with ``seeds`` only those seeds (the
    others are listed as stale: a hand-made export of another seed never enters a mean or a test). A base
    made from another config is stale too."""
    base_path = kept / "base.json"
    models: dict[str, dict] = {}
    stale = []
    for path in sorted(kept.glob("*/seed*.json")):
        entry = json.loads(path.read_text())
        if (config_sha is not None and entry.get("config_sha") != config_sha) or (
                seeds is not None and entry["seed"] not in seeds):
            stale.append(str(path))
            continue
        models.setdefault(entry["model"], {})[entry["seed"]] = entry
    base = json.loads(base_path.read_text()) if base_path.exists() else None
    if base is not None and config_sha is not None and base.get("config_sha") != config_sha:
        stale.append(str(base_path))
        base = None
    return {"base": base, "models": models, "stale": stale}


def group_complete(group: dict, models: list[str], seeds: list[int], datasets: tuple[str, ...], *,
                   with_base: bool = True) -> bool:
    """Whether ``group`` holds every model at every seed, each with every one of ``datasets``, and (``with_base``)
    the base with them (a missing base would drop every test against it from the Holm family; a seed without a
    dataset would average that dataset over fewer seeds)."""
    base = group["base"]
    if with_base and (base is None or not set(datasets) <= set(base["datasets"])):
        return False
    return bool(models) and all(
        s in group["models"].get(m, {}) and set(datasets) <= set(group["models"][m][s]["datasets"])
        for m in models for s in seeds)


def compare_results(group: dict, names: list[str] | None = None) -> dict:
    """The group as compare's ``results`` (``dataset_runs``: base + each model with its seeds)."""
    runs: dict[str, dict] = {}
    base = group["base"] or {"datasets": {}}
    for ds, entry in base["datasets"].items():
        runs.setdefault(ds, {"models": {}})["models"]["base"] = entry
    for name in names or sorted(group["models"]):
        for seed, e in sorted(group["models"].get(name, {}).items()):
            for ds, entry in e["datasets"].items():
                runs.setdefault(ds, {"models": {}})["models"].setdefault(name, {"seeds": {}})["seeds"][seed] = {
                    **entry, "train_time_s": e.get("train_seconds")}
    return {"dataset_runs": runs, "training_logs": {}, "config": {}}


def seed_mean(group: dict, name: str, ds: str, metric: str = METRIC) -> float | None:
    vals = [e["datasets"][ds]["metrics"][metric] for e in group["models"].get(name, {}).values() if ds in e["datasets"]]
    return sum(vals) / len(vals) if vals else None


def best_of(group: dict, candidates: list[str], ds: str = DEV) -> str | None:
    """The candidate with the highest mean (over seeds) nDCG@10 on the dev split: chosen without test."""
    scored = [(seed_mean(group, c, ds), c) for c in candidates if seed_mean(group, c, ds) is not None]
    return max(scored)[1] if scored else None


def final_pairs(models: list[str], best_contrastive: str | None) -> list[tuple[str, str]]:
    pairs = [(m, "base") for m in models]
    return pairs + [(m, best_contrastive) for m in models if best_contrastive and m != best_contrastive]


def _comparison(report: dict, ds: str, a: str, b: str) -> dict | None:
    for c in (report["datasets"].get(ds) or {}).get("comparisons", []):
        if (c["a"], c["b"], c["metric"]) == (a, b, METRIC):
            return c
    return None


def harm_tests(results: dict, ds: str, models: list[str], reference: str) -> dict:
    """Per model: paired test of its per-query harm indicators (nDCG@10 below base by more than the margin,
    seed-averaged scores) against ``reference``'s, Holm over the models."""
    from dpo_retrieval.experiment.report import collapse_seeds
    from dpo_retrieval.experiment.stats import compare_paired, harm_indicators, holm

    run = results["dataset_runs"].get(ds, {}).get("models", {})
    if "base" not in run or reference not in run:
        return {}
    base = run["base"]["per_query"][METRIC]

    def harmed(name):
        return harm_indicators(collapse_seeds(run[name])["per_query"][METRIC], base)

    out = {m: compare_paired(harmed(m), harmed(reference)) for m in models if m in run and m != reference}
    for m, p in zip(out, holm([r["p_ttest"] for r in out.values()])):
        out[m]["p_holm"] = p
    return out


def verdicts(report: dict, harm: dict, data: dict, dpo_models: list[str], best_c: str | None) -> dict:
    """Each criterion of configs/study/study.yaml, evaluated; ``closest``: the DPO-family model with the
    highest SciFact test nDCG@10 difference from the best contrastive model."""
    def diff(ds, m):
        return _comparison(report, ds, m, best_c) if best_c else None

    a, aim, c, closest = [], [], [], None
    for m in dpo_models:
        t, o = diff(TEST, m), diff(OOD, m)
        if t is None:
            continue
        if closest is None or t["diff"] > closest[1]:
            closest = (m, t["diff"])
        ood_better = o is not None and o["diff"] > 0 and o["p_holm"] < 0.05
        ood_not_worse = o is not None and (o["diff"] >= 0 or o["p_holm"] >= 0.05)
        if t["ci_high"] >= 0 and ood_better:
            a.append(m)
        if t["diff"] > 0 and t["p_holm"] < 0.05 and ood_not_worse:
            aim.append(m)
        h = harm.get(m)
        if h and h["diff"] < 0 and h["p_holm"] < 0.05 and t["p_holm"] >= 0.05:
            c.append(m)
    b = [f"{r['model']} at {r['size']}" for r in data.get("comparisons", [])
         if r["size"] <= 200 and r["model"] in dpo_models and r["diff"] > 0 and r["p_holm"] < 0.05]
    return {"best_contrastive": best_c,
            "a_in_domain_within_ci_and_better_out_of_domain": {"holds": bool(a), "models": a},
            "b_better_at_200_or_fewer_triplets": {"holds": bool(b), "models": b},
            "c_lower_harm_at_equal_mean": {"holds": bool(c), "models": c},
            "aim_beats_best_contrastive_with_ood_retention": {"holds": bool(aim), "models": aim},
            "closest": {"model": closest[0], "scifact_test_diff": closest[1]} if closest else None}


def data_section(p: dict, finals: dict, sha: str | None, models: list[str] | None = None) -> dict:
    """Mean ± std over seeds of SciFact test nDCG@10 per model and size ("all" from the finals' seeds in
    data_seeds), and each DPO-family model against the contrastive one at each size (paired over queries,
    seed-averaged, Holm over the section). A model a size has not recorded yet (the best DPO variant joins
    after the finals) is a row with no seeds and no mean, and in no comparison."""
    from dpo_retrieval.experiment.report import collapse_seeds
    from dpo_retrieval.experiment.stats import compare_paired, holm, mean_std

    groups = {n: load_group(S.KEPT / "data" / f"n{n}", sha, p["data_seeds"]) for n in p["data_sizes"]}
    names = list(models or p["data_models"])  # an export of another model never enters the section's Holm family
    groups["all"] = {"base": finals["base"], "models": {m: {s: e for s, e in finals["models"].get(m, {}).items()
                                                            if s in p["data_seeds"]} for m in names}}
    rows, comps = [], []
    reference = p["data_models"][0]
    for size, g in groups.items():
        res = compare_results(g, names).get("dataset_runs", {}).get(TEST, {}).get("models", {})
        for m in names:
            vals = [e["datasets"][TEST]["metrics"][METRIC] for e in g["models"].get(m, {}).values()
                    if TEST in e["datasets"]]
            mean, std = mean_std(vals)
            rows.append({"size": size, "model": m, "mean": mean, "std": std, "seeds": sorted(g["models"].get(m, {}))})
            if m != reference and m in res and reference in res:
                r = compare_paired(collapse_seeds(res[m])["per_query"][METRIC],
                                   collapse_seeds(res[reference])["per_query"][METRIC])
                comps.append({"size": size if size != "all" else 10**9, "label": str(size), "model": m,
                              "against": reference, **r})
    for c, ph in zip(comps, holm([c["p_ttest"] for c in comps])):
        c["p_holm"] = ph
    return {"rows": rows, "comparisons": comps, "reference": reference,
            "complete": all(group_complete(groups[n], names, p["data_seeds"], (TEST,), with_base=False)
                            for n in p["data_sizes"]),
            "left_out": sorted({*(f for n in p["data_sizes"] for f in groups[n]["stale"]),
                                *(f"{n}: {m}" for n in p["data_sizes"] for m in groups[n]["models"] if m not in names)})}


def drift_section(finals: dict) -> dict:
    """Drift against beta from the DPO sweep's grid (only beta and the learning rate vary there), every
    tuning point's drift, and each final model's mean over its seeds."""
    from dpo_retrieval.experiment.stats import mean_std

    rows = []
    for path in sorted(S.KEPT.glob("tune_*.json")):
        for r in json.loads(path.read_text()).get("points", []):
            if r.get("drift_dev"):
                rows.append({"sweep": path.stem[5:], "options": r["options"], "beta": r["options"].get("beta"),
                             "learning_rate": r["options"].get("learning_rate"), "drift": r["drift_dev"],
                             "fast_dev_ndcg@10": r["fast_dev"]["ndcg@10"]})
    final = {}
    for m, seeds in finals["models"].items():
        vals = [e["drift_dev"]["pool"] for e in seeds.values() if (e.get("drift_dev") or {}).get("pool") is not None]
        if vals:
            mean, std = mean_std(vals)
            final[m] = {"pool_mean": mean, "pool_std": std, "seeds": len(vals)}
    return {"tuning_points": rows, "beta_curve": [r for r in rows if r["sweep"] == "dpo"], "final_models": final}


def base_score(report: dict) -> float | None:
    """The base model's SciFact test nDCG@10 in the finals' report (None before it is evaluated)."""
    rows = (report.get("datasets") or {}).get(TEST, {}).get("rows") or []
    return next((r.get(METRIC) for r in rows if r.get("model") == "base"), None)


def tuning_entry(recorded: dict) -> dict:
    """A sweep's results file in the report: its points, whether it ran to its end (``best`` set), its best
    fast dev nDCG@10 so far and that row's options (``best_options``; ``best``: the sweep's own, once finished)."""
    rows = recorded.get("points", [])
    top = max(rows, key=lambda r: r["fast_dev"]["ndcg@10"], default=None)
    return {"points": len(rows), "finished": bool(recorded.get("best")), "best": recorded.get("best"),
            "best_fast_dev_ndcg@10": top["fast_dev"]["ndcg@10"] if top else None,
            "best_options": top["options"] if top else None}


#: options every tuning point shares (left out of the report's tuning table)
_SHARED = {"max_seq_length": 128, "per_device_train_batch_size": 32, "warmup_steps": 0.1, "seed": 42}


def _options(options: dict | None) -> str:
    if not options:
        return "—"
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in options.items()
                     if _SHARED.get(k, object()) != v)


def best_per_model() -> dict:
    """Each final model's best fast dev row so far over its sweeps (study_freeze.FINALS, what freeze takes once
    every sweep is finished): ``{model: {"fast_dev": score, "options": ..., "finished": all its sweeps ran}}``."""
    from study_freeze import FINALS, model_sweeps

    out = {}
    for name, (_, keep) in FINALS.items():
        sweeps = model_sweeps(name)
        recorded = [json.loads(f.read_text()) for sw in sweeps if (f := S.KEPT / f"tune_{sw}.json").exists()]
        rows = [r for rec in recorded for r in rec.get("points", []) if keep(r["options"])]
        top = max(rows, key=lambda r: r["fast_dev"]["ndcg@10"], default=None)
        out[name] = {"fast_dev": top["fast_dev"]["ndcg@10"] if top else None, "options": top["options"] if top else None,
                     "finished": len(recorded) == len(sweeps) and all(rec.get("best") for rec in recorded)}
    return out


def write_study_report() -> dict:
    from study_finals import data_models, final_models

    from dpo_retrieval.experiment.report import write_report

    p = S.plan()
    config = S.CONFIGS / "final.yaml"
    sha = S.config_sha(config) if config.exists() else None
    finals = load_group(S.KEPT / "final", sha, p["seeds"])
    models = list(finals["models"])
    best_c = best_of(finals, [m for m in p["contrastive_models"] if m in finals["models"]])
    results = compare_results(finals, models)
    report = (write_report(results, S.KEPT / "final_report", pairs=final_pairs(models, best_c), metrics=[METRIC])["report"]
              if finals["models"] else {"datasets": {}})
    harm = harm_tests(results, TEST, [m for m in p["dpo_models"] if m in models], best_c) if best_c else {}
    variant_known = True
    try:  # the data models, the finals' DPO variant included (its rows stay empty until recorded)
        dmodels = data_models(p) if config.exists() else list(p["data_models"])
    except SystemExit as err:  # no variant chosen yet: the plan's models, said (and the report is not complete)
        print(err)
        dmodels, variant_known = list(p["data_models"]), False
    data = data_section(p, finals, sha, dmodels)
    drift = drift_section(finals)
    from study_ablation import ablation_section

    ablations = ablation_section(p, finals, sha)  # post hoc: no verdict reads it
    expected = final_models(config) if config.exists() else list(finals["models"])  # every name, every seed
    # every name at every seed with every evaluation set, and the base with them (else a Holm family is short)
    finals_done = group_complete(finals, expected, p["seeds"], (TEST, DEV, OOD))
    # criterion (b) and the data section's Holm family need every data run too, the variant's included
    data_done = variant_known and data["complete"]
    complete = finals_done and data_done
    tuning = {path.stem[5:]: tuning_entry(json.loads(path.read_text())) for path in sorted(S.KEPT.glob("tune_*.json"))}
    per_model = best_per_model()
    out = {"command": "python scripts/study.py report", "plan": str(S.CONFIGS / "study.yaml"), "tuning": tuning,
           "best_dev_per_model": per_model,
           "final": {"best_contrastive": best_c, "seeds": {m: sorted(s) for m, s in finals["models"].items()},
                     "report": str(S.KEPT / "final_report" / "report.json"),
                     "rows": {ds: d["rows"] for ds, d in report["datasets"].items()},
                     "comparisons": {ds: d["comparisons"] for ds, d in report["datasets"].items()}},
           "harm_vs_best_contrastive": harm, "data_efficiency": data, "drift": drift, "ablations": ablations,
           "complete": complete, "finals_complete": finals_done, "data_complete": data_done,
           "stale_exports_left_out": finals["stale"] + data["left_out"] + ablations["left_out"],
           "verdicts": ({**verdicts(report, harm, data, p["dpo_models"], best_c), "provisional": not complete}
                        if finals["models"] else None),
           "plots": plots(data, drift, base_score(report))}
    S._write(OUT / "study_scifact.json", out)
    (OUT / "study_scifact.results.md").write_text(render(out))
    from study_readme import readme_block, update_readme

    update_readme(readme_block(out, S.plan()["seeds"]))
    print(render(out))
    return out


def _f(x, nd=4):
    return "—" if x is None else f"{x:.{nd}f}"


def _pm(mean, std) -> str:
    """"mean ± std" (just the mean when there is no spread: one seed)."""
    return _f(mean) + ("" if std is None else " ± " + _f(std))


def _diff_cells(c: dict) -> str:
    """A paired comparison's "diff | 95% CI | p (Holm)" cells."""
    return f"{c['diff']:+.4f} | [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] | {c['p_holm']:.3g}"


def render(out: dict) -> str:
    lines = ["# Study results (generated by `python scripts/study.py report`; do not edit)", ""]
    lines += ["## Tuning on dev (fast dev nDCG@10, seed 42, one run per point)", "",
              "Options shared by every point are left out (max length 128, batch 32, warm-up 0.1, seed 42).", "",
              "| sweep | points | finished | best fast dev | its options |", "|---|---:|---|---:|---|"]
    lines += [f"| {k} | {v['points']} | {'yes' if v.get('finished') else 'no'} | {_f(v['best_fast_dev_ndcg@10'])} | "
              f"{_options(v.get('best_options'))} |" for k, v in out["tuning"].items()]
    if out.get("best_dev_per_model"):
        lines += ["", "Each final model's best point so far over its sweeps (what `freeze` takes once they are finished):",
                  "", "| model | sweeps finished | best fast dev | its options |", "|---|---|---:|---|"]
        lines += [f"| {m} | {'yes' if v['finished'] else 'no'} | {_f(v['fast_dev'])} | {_options(v['options'])} |"
                  for m, v in out["best_dev_per_model"].items()]
    fin = out["final"]
    for ds, rows in fin["rows"].items():
        lines += ["", f"## Finals: {ds} (mean ± std over seeds)", "", "| model | seeds | nDCG@10 | harm rate |",
                  "|---|---:|---:|---:|"]
        for r in rows:
            std = (r.get("std") or {}).get(METRIC)
            harm = "—" if r.get("harm_rate") is None else f"{100 * r['harm_rate']:.1f}%"
            lines.append(f"| {r['model']} | {len(r['seeds'])} | {_pm(r[METRIC], std)} | {harm} |")
        lines += ["", "| A − B | diff | 95% CI | p (Holm) |", "|---|---:|---:|---:|"]
        lines += [f"| {c['a']} − {c['b']} | {_diff_cells(c)} |" for c in fin["comparisons"].get(ds, [])]
    lines += ["", "## Data efficiency (SciFact test nDCG@10)", "", "| triplets | model | mean ± std | seeds |",
              "|---|---|---:|---|"]
    lines += [f"| {r['size']} | {r['model']} | {_pm(r['mean'], r['std'])} | {r['seeds'] or 'not recorded'} |"
              for r in out["data_efficiency"]["rows"]]
    comps = out["data_efficiency"].get("comparisons") or []
    if comps:
        lines += ["", f"Each DPO-family model against {out['data_efficiency']['reference']} at each size "
                  "(paired over queries, Holm over the section):", "",
                  "| triplets | A − B | diff | 95% CI | p (Holm) |", "|---|---|---:|---:|---:|"]
        lines += [f"| {c['label']} | {c['model']} − {c['against']} | {_diff_cells(c)} |" for c in comps]
    harm = out.get("harm_vs_best_contrastive") or {}
    if harm:
        lines += ["", f"## Harm on SciFact test against the best contrastive model ({out['final']['best_contrastive']})",
                  "", "Harm: a query's seed-averaged nDCG@10 below the base's by more than 0.05; paired t-test on the "
                  "0/1 indicators, Holm over the DPO-family models.", "",
                  "| model | harm rate | best contrastive's | diff | 95% CI | p (Holm) |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {m} | {100 * h['mean_a']:.1f}% | {100 * h['mean_b']:.1f}% | {_diff_cells(h)} |"
                  for m, h in harm.items()]
    drift = (out.get("drift") or {}).get("final_models") or {}
    if drift:
        lines += ["", "## Drift of the final models (mean |s − s_ref| of cosine scores on the dev pool pairs, "
                  "against the base; mean ± std over seeds)", "", "| model | seeds | drift |", "|---|---:|---:|"]
        lines += [f"| {m} | {d['seeds']} | {_pm(d['pool_mean'], d['pool_std'])} |"
                  for m, d in drift.items()]
    from study_ablation import render_lines

    lines += render_lines(out.get("ablations") or {})
    if out.get("stale_exports_left_out"):
        lines += ["", "Left out (outside the plan's seeds or models): " + ", ".join(out["stale_exports_left_out"])]
    v = out.get("verdicts")
    if v:
        state = ("PROVISIONAL: not every final and data-efficiency seed is recorded" if v.get("provisional")
                 else "all final and data-efficiency seeds")
        lines += ["", f"## Criteria ({state}; best contrastive model, chosen on dev: {v['best_contrastive']})", ""]
        lines += [f"- {k}: {'holds' if x['holds'] else 'does not hold'} {x['models'] or ''}"
                  for k, x in v.items() if isinstance(x, dict) and "holds" in x]
        if v.get("closest"):
            lines.append(f"- closest DPO-family model: {v['closest']['model']} "
                         f"({v['closest']['scifact_test_diff']:+.4f} nDCG@10 against the best contrastive model)")
    return "\n".join(lines) + "\n"
