"""Paired comparison of the same model across two `dpo-retrieval compare` run directories.

Used for ablations (e.g. `--dropout on` vs `--dropout off`): for every trained model and evaluation
set both runs hold (the untrained base is the same in both and left out), prints run A − run B on
nDCG@10 over queries with the report's statistics (paired t-test, randomization test, 95% bootstrap
interval) and the t-test p-value after Holm's correction over all rows of the table. `--json FILE` also writes the rows to a results file.

    python scripts/compare_runs.py runs/scifact-quick runs/scifact-quick-dropout-off \\
        --json benchmarks/results/dropout_ablation.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from dpo_retrieval.experiment.stats import compare_paired, holm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", type=Path, help="first compare run directory")
    parser.add_argument("run_b", type=Path, help="second compare run directory")
    parser.add_argument("--metric", default="ndcg@10", help="per-query metric (default: ndcg@10)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    rows = []
    for path_a in sorted(args.run_a.glob("eval/*/*.json")):
        if path_a.name.endswith(".stage.json") or path_a.parent.name == "base":
            continue  # the base model is the same in both runs: not part of the comparison
        path_b = args.run_b / path_a.relative_to(args.run_a)
        if not path_b.is_file():
            continue
        per_a, per_b = (json.loads(p.read_text())["per_query"] for p in (path_a, path_b))
        r = compare_paired({q: s[args.metric] for q, s in per_a.items()}, {q: s[args.metric] for q, s in per_b.items()})
        rows.append({"model": path_a.parent.name, "eval_set": path_a.stem, **r})
    for row, p in zip(rows, holm([r["p_ttest"] for r in rows])):
        row["p_holm"] = p
    print("| model | eval set | A | B | A − B | 95% CI | p (t-test) | p (Holm) | p (randomization) | queries |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['eval_set']} | {r['mean_a']:.4f} | {r['mean_b']:.4f} | {r['diff']:+.4f} | "
              f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] | {r['p_ttest']:.3g} | {r['p_holm']:.3g} | "
              f"{r['p_randomization']:.3g} | {r['n_queries']} |")
    if args.json is not None:
        out = {"run_a": str(args.run_a), "run_b": str(args.run_b), "metric": args.metric,
               "holm_family": "all rows of this table (t-test p-values)", "rows": rows}
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(out, indent=2) + "\n")
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
