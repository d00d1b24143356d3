"""README's Results block (the study's finals, tests against the best contrastive model and the criteria), written
between two markers by ``python scripts/study.py report`` (scripts/study_report.py) from the report it makes."""

from __future__ import annotations

from pathlib import Path

from study_report import METRIC, OOD, TEST, _pm

README = Path("README.md")
README_START = "<!-- study-results:start: written by `python scripts/study.py report`; do not edit -->"
README_END = "<!-- study-results:end -->"
_CRITERIA = {"a_in_domain_within_ci_and_better_out_of_domain": "(a) in domain within the CI, better out of domain",
             "b_better_at_200_or_fewer_triplets": "(b) better than MNRL at 200 triplets or fewer",
             "c_lower_harm_at_equal_mean": "(c) lower harm rate at an equal mean",
             "aim_beats_best_contrastive_with_ood_retention": "the aim: better than the best contrastive model "
                                                              "in domain, out-of-domain retention as good"}


def readme_block(out: dict, planned_seeds: list[int]) -> str:
    """README's Results section body: the finals' table (SciFact test and dbpedia-entity-5k, mean ± std over
    seeds, harm rate), each DPO-family model against the best contrastive model, the data-efficiency
    table and the criteria."""
    fin, v = out["final"], out.get("verdicts") or {}
    rows = {ds: {r["model"]: r for r in fin["rows"].get(ds, [])} for ds in (TEST, OOD)}
    n_seeds = sorted({len(s) for s in fin["seeds"].values()})
    state = ("**Provisional**: " + ("no final seed recorded yet" if not n_seeds else
                                    f"{'–'.join(str(x) for x in dict.fromkeys([n_seeds[0], n_seeds[-1]]))} of "
                                    f"{len(planned_seeds)} training seeds per model recorded")
             + ", so nothing below is a finding yet." if not out.get("complete")
             else "Complete: every final and data-efficiency seed is recorded.")
    lines = [state, "", f"SciFact test (300 queries) and dbpedia-entity-5k (40 queries, out of domain), nDCG@10, "
             "mean ± std over training seeds; harm rate: share of SciFact test queries more than 0.05 below base "
             "(seed-averaged). From `benchmarks/results/study_scifact.json`.", "",
             "| model | seeds | SciFact test | dbpedia-entity-5k | harm rate |", "|---|---:|---:|---:|---:|"]

    def cell(r):
        if not r or r.get(METRIC) is None:
            return "—"
        return _pm(r[METRIC], (r.get("std") or {}).get(METRIC))

    for m, r in rows[TEST].items():
        harm = "—" if r.get("harm_rate") is None else f"{100 * r['harm_rate']:.1f}%"
        lines.append(f"| {m} | {len(r.get('seeds') or [])} | {cell(r)} | {cell(rows[OOD].get(m))} | {harm} |")
    best = v.get("best_contrastive")
    pairs = [c for ds in (TEST, OOD) for c in fin["comparisons"].get(ds, []) if best and c["b"] == best]
    if pairs:
        lines += ["", f"Against the best contrastive model ({best}, chosen on dev), paired over queries, Holm-corrected:",
                  "", "| A − B | dataset | diff | 95% CI | p (Holm) |", "|---|---|---:|---:|---:|"]
        lines += [f"| {c['a']} − {c['b']} | {ds} | {c['diff']:+.4f} | [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] | "
                  f"{c['p_holm']:.3g} |" for ds in (TEST, OOD) for c in fin["comparisons"].get(ds, [])
                  if c["b"] == best]
    lines += data_block(out.get("data_efficiency") or {})
    if v:
        lines += ["", "Criteria fixed before the finals (`benchmarks/results/study_scifact.md`):", ""]
        so_far = " so far (provisional)" if v.get("provisional") else ""
        lines += [f"- {label}: {'holds' + so_far + ' for ' + ', '.join(v[k]['models']) if v[k]['holds'] else 'does not hold' + so_far}"
                  for k, label in _CRITERIA.items() if k in v]
        if v.get("closest"):
            lines.append(f"- the DPO-family model closest to the best contrastive model on SciFact test: "
                         f"{v['closest']['model']} ({v['closest']['scifact_test_diff']:+.4f})")
    lines += ablation_block(out.get("ablations") or {})
    lines += ["", "Data efficiency plotted: `benchmarks/results/study/data_efficiency.png`; drift against β: "
              "`benchmarks/results/study/drift_vs_beta.png`; every table: `benchmarks/results/study_scifact.results.md`."]
    return "\n".join(lines)


def data_block(data: dict) -> list[str]:
    """Data efficiency as one row per training-set size: each model's SciFact test nDCG@10 (mean ± std over the
    data seeds; "all" is the finals at those seeds) and each DPO-family model's paired difference from the
    section's reference (MNRL) with its Holm p over the section; empty while no size has a recorded model."""
    rows = data.get("rows") or []
    if not any(r["mean"] is not None for r in rows):
        return []
    ref = data["reference"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    others = [m for m in models if m != ref]
    cells = {(str(r["size"]), r["model"]): r for r in rows}
    tests = {(c["label"], c["model"]): c for c in data.get("comparisons") or []}
    lines = ["", f"Data efficiency: SciFact test nDCG@10 at each number of training triplets (mean ± std over "
             f"seeds {', '.join(str(x) for x in sorted({x for r in rows for x in r['seeds']}))}; all: the finals at those seeds), and each DPO-family "
             f"model's difference from {ref}, paired over queries, Holm over the section:", "",
             "| triplets | " + " | ".join(models) + " | " + " | ".join(f"{m} − {ref} (p Holm)" for m in others) + " |",
             "|---|" + "---:|" * (len(models) + len(others))]
    for size in dict.fromkeys(str(r["size"]) for r in rows):
        def mean(m):
            r = cells.get((size, m))
            if not r or r["mean"] is None:
                return "—"
            return _pm(r["mean"], r.get("std"))

        def test(m):
            c = tests.get((size, m))
            return "—" if c is None else f"{c['diff']:+.4f} ({c['p_holm']:.3g})"

        lines.append(f"| {size} | " + " | ".join(mean(m) for m in models) + " | "
                     + " | ".join(test(m) for m in others) + " |")
    return lines


def ablation_block(section: dict) -> list[str]:
    """The post-hoc ablations (amendment 7) against their final models, one row per evaluation set; empty while
    none is recorded."""
    from study_ablation import describe

    comps = section.get("comparisons") or []
    if not comps:
        return []
    seeds = ", ".join(map(str, section["seeds"]))
    lines = ["", f"Ablations (post hoc; no criterion depends on them): each a final model trained again with an option "
             f"changed, against that model (and any model it lists) at the same seeds ({seeds}"
             + ("" if section.get("complete") else "; provisional: not every seed recorded")
             + "), paired over queries, Holm over the section:", ""]
    lines += describe(section["ablations"])
    lines += ["", "| A − B | dataset | A | B | diff | 95% CI | p (Holm) |", "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {c['a']} − {c['b']} | {c['dataset']} | {c['mean_a']:.4f} | {c['mean_b']:.4f} | {c['diff']:+.4f} | "
              f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] | {c['p_holm']:.3g} |" for c in comps]
    return lines


def update_readme(block: str, readme: Path | None = None) -> bool:
    """Replace README's block between the study-results markers with ``block`` (False: no markers there)."""
    readme = readme or README
    if not readme.exists():
        return False
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return False
    readme.write_text(text[:start + len(README_START)] + "\n" + block + "\n" + text[end:])
    return True
