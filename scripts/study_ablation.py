"""The study's post-hoc ablations (``python scripts/study.py ablation``; amendment 7 of the plan): a final model
trained again with some options changed (study.yaml's ``ablations``: ``{name: {of: <final model>, set: {...}}}``),
at ``ablation_seeds``, and scored against that final model at the same seeds, and against each final model of its
optional ``against`` list (e.g. the best contrastive model). They enter no criterion and no verdict: they say where
a final model's gain comes from (dpo-mnrl at mnrl_weight 1 is its contrastive term alone).

Runs in runs/study/ablation (a copy of the finals' mining and base evaluation), one compare call per missing
(seed, ablation), each kept as benchmarks/results/study/ablation/<name>/seed<k>.json like a final.
"""

from __future__ import annotations

import json
from pathlib import Path

import study as S

DATASETS = ("scifact", "scifact-dev", "dbpedia-entity-5k")  # study_report's TEST, DEV, OOD
METRIC = "NDCG@10"


def ablation_variants(config: Path, p: dict) -> dict:
    """``--variants`` of the ablation units: each ablation is its final model's variant in ``config`` (without
    WiSE-FT) with its ``set`` options on top."""
    import yaml

    variants = yaml.safe_load(config.read_text()).get("variants") or {}
    out = {}
    for name, a in (p.get("ablations") or {}).items():
        if a.get("of") not in variants:
            raise SystemExit(f"ablation {name}: its model {a.get('of')!r} is not a variant of {config}")
        unknown = [b for b in a.get("against") or [] if b not in variants]
        if unknown:
            raise SystemExit(f"ablation {name}: against {unknown} is not a variant of {config}")
        out[name] = {**{o: v for o, v in variants[a["of"]].items() if o != "wise_ft"}, **(a.get("set") or {})}
    return out


def ablation(jobs: int = 1) -> None:
    """Each missing (seed, ablation) of study.yaml, ``jobs`` side by side (study_finals.run_units), each final-like:
    every evaluation set of the finals and the drift on the dev pool."""
    from study_finals import pending_units, run_units

    p = S.plan()
    names = list(p.get("ablations") or {})
    if not names:
        print("ablation: configs/study/study.yaml lists no ablations")
        return
    config = S.CONFIGS / "final.yaml"
    units = pending_units(config, S.RUN / "ablation", S.KEPT / "ablation", p["ablation_seeds"],
                          ["--variants", json.dumps(ablation_variants(config, p))], names, drift=True)
    if not units:
        print(f"ablation: seeds {p['ablation_seeds']} of {', '.join(names)} recorded")
    run_units(units, jobs)


def ablation_section(p: dict, finals: dict, sha: str | None) -> dict:
    """Each ablation and the final models it is tested against (the one it changes, then its ``against`` list), each
    pair at the seeds both have of ``ablation_seeds``: nDCG@10 mean ± std per evaluation set, drift, and the
    ablation against the model paired over queries (seed-averaged), Holm over the section's tests. ``complete``:
    every ablation at every ablation seed with every evaluation set."""
    from study_report import compare_results, group_complete, load_group

    from dpo_retrieval.experiment.report import collapse_seeds
    from dpo_retrieval.experiment.stats import compare_paired, holm, mean_std

    ablations, seeds = p.get("ablations") or {}, list(p.get("ablation_seeds") or [])
    group = load_group(S.KEPT / "ablation", sha, seeds)
    rows, comps = [], []
    for name, a in ablations.items():
        mine = group["models"].get(name, {})
        for b in [a["of"], *(a.get("against") or [])]:
            theirs = finals["models"].get(b, {})
            common = sorted(set(mine) & set(theirs))
            pair = {"base": None, "models": {name: {s: mine[s] for s in common}, b: {s: theirs[s] for s in common}}}
            runs = compare_results(pair, [name, b])["dataset_runs"]
            for m in (name, b) if b == a["of"] else (b,):
                row = {"ablation": name, "model": m, "seeds": common,
                       "drift": mean_std(pair["models"][m][s].get("drift_dev", {}).get("pool") for s in common)[0]}
                for ds in DATASETS:
                    row[ds] = mean_std(e["datasets"][ds]["metrics"][METRIC] for e in pair["models"][m].values()
                                       if ds in e["datasets"])
                rows.append(row)
            for ds in DATASETS:
                models = runs.get(ds, {}).get("models", {})
                if name in models and b in models:
                    comps.append({"ablation": name, "dataset": ds, "a": name, "b": b,
                                  **compare_paired(collapse_seeds(models[name])["per_query"][METRIC],
                                                   collapse_seeds(models[b])["per_query"][METRIC])})
    for c, ph in zip(comps, holm([c["p_ttest"] for c in comps])):
        c["p_holm"] = ph
    return {"ablations": ablations, "seeds": seeds, "rows": rows, "comparisons": comps, "left_out": group["stale"],
            "complete": bool(ablations) and group_complete(group, list(ablations), seeds, DATASETS, with_base=False)}


def describe(ablations: dict) -> list[str]:
    """One markdown bullet per ablation: its name, the final model it changes and the options it changes."""
    return [f"- {name}: {a['of']} with " + ", ".join(f"{k} {v}" for k, v in (a.get("set") or {}).items())
            + (f"; also tested against {', '.join(a['against'])}" if a.get("against") else "")
            for name, a in ablations.items()]


def render_lines(section: dict) -> list[str]:
    """The section as markdown lines (tables of means and of the paired tests); empty with no ablation recorded."""
    from study_report import _pm

    rows = [r for r in section.get("rows") or [] if r["seeds"]]
    if not rows:
        return []
    state = "" if section["complete"] else " PROVISIONAL: not every ablation seed is recorded."
    lines = ["", "## Ablations (post hoc, amendment 7: no criterion or verdict depends on them)", "",
             f"Each ablation is a final model trained again with the options below changed, at seeds "
             f"{', '.join(map(str, section['seeds']))}, against that model and any model it lists at the same seeds (nDCG@10 mean ± std; "
             f"paired over queries, seed-averaged, Holm over the section).{state}", ""]
    lines += describe(section["ablations"])
    lines += ["", "| model | seeds | SciFact test | SciFact dev | dbpedia-entity-5k | drift |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {len(r['seeds'])} | " + " | ".join(_pm(*r[ds]) for ds in DATASETS)
              + f" | {'—' if r['drift'] is None else format(r['drift'], '.4f')} |" for r in rows]
    if section["comparisons"]:
        lines += ["", "| A − B | dataset | diff | 95% CI | p (Holm) |", "|---|---|---:|---:|---:|"]
        lines += [f"| {c['a']} − {c['b']} | {c['dataset']} | {c['diff']:+.4f} | [{c['ci_low']:+.4f}, "
                  f"{c['ci_high']:+.4f}] | {c['p_holm']:.3g} |" for c in section["comparisons"]]
    return lines
