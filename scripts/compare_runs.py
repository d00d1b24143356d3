"""Paired comparison of the same model across two `dpo-retrieval compare` run directories.

Used for ablations (e.g. `--dropout on` vs `--dropout off`): for every trained model and evaluation
set both runs hold (the untrained base is the same in both and left out), prints run A − run B on
nDCG@10 over queries with the report's statistics (paired t-test, randomization test, 95% bootstrap
interval) and the t-test p-value after Holm's correction over all rows of the table. `--json FILE` also writes the rows to a results file.

A run trained with several seeds (`compare --seeds`) has one evaluation per seed (eval/<loss>/ for its
`--seed`, eval/<loss>-seed<k>/ for the others; only the seeds in its config.json count): each run's
per-query scores are averaged over its seeds before the test, as in report.json.

    python scripts/compare_runs.py runs/scifact-quick runs/scifact-quick-dropout-off \\
        --json benchmarks/results/dropout_ablation.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

from dpo_retrieval.experiment.stats import average_per_query, compare_paired, holm

SEED_DIR = re.compile(r"^(?P<model>.+)-seed(?P<seed>-?\d+)$")


def evaluations(run: Path, metric: str) -> dict[tuple[str, str], dict]:
    """``{(model, eval set): {training seed: {qid: score}}}`` of a run's trained models."""
    config_file = run / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    main_seed = config.get("seed")
    seeds = set(config.get("seeds") or [main_seed])
    found: dict[tuple[str, str], dict] = {}
    for path in sorted(run.glob("eval/*/*.json")):
        if path.name.endswith(".stage.json") or path.parent.name == "base":
            continue  # the base model is the same in both runs: not part of the comparison
        m = SEED_DIR.match(path.parent.name)
        model, seed = (m["model"], int(m["seed"])) if m else (path.parent.name, main_seed)
        if seed not in seeds:
            continue  # left over from an earlier --seeds
        per_query = json.loads(path.read_text())["per_query"]
        found.setdefault((model, path.stem), {})[seed] = {q: s[metric] for q, s in per_query.items()}
    return found


def _sorted(seeds) -> list:
    return sorted(seeds, key=lambda s: (s is None, s or 0))


def compare_runs(run_a: Path, run_b: Path, metric: str = "ndcg@10") -> list[dict]:
    """One row per (model, eval set) of both runs: compare_paired on the seed-averaged per-query scores,
    the seeds of each side and the Holm-corrected p over all rows."""
    eval_a, eval_b = evaluations(run_a, metric), evaluations(run_b, metric)
    rows = []
    for (model, eval_set), by_seed in eval_a.items():
        if (model, eval_set) not in eval_b:
            continue
        other = eval_b[(model, eval_set)]
        r = compare_paired(average_per_query(by_seed.values()), average_per_query(other.values()))
        rows.append({"model": model, "eval_set": eval_set, "seeds_a": _sorted(by_seed),
                     "seeds_b": _sorted(other), **r})
    for row, p in zip(rows, holm([r["p_ttest"] for r in rows])):
        row["p_holm"] = p
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", type=Path, help="first compare run directory")
    parser.add_argument("run_b", type=Path, help="second compare run directory")
    parser.add_argument("--metric", default="ndcg@10", help="per-query metric (default: ndcg@10)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    rows = compare_runs(args.run_a, args.run_b, args.metric)
    print("| model | eval set | seeds A/B | A | B | A − B | 95% CI | p (t-test) | p (Holm) | p (randomization) "
          "| queries |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        seeds = f"{len(r['seeds_a'])}/{len(r['seeds_b'])}"
        print(f"| {r['model']} | {r['eval_set']} | {seeds} | {r['mean_a']:.4f} | {r['mean_b']:.4f} | "
              f"{r['diff']:+.4f} | [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] | {r['p_ttest']:.3g} | "
              f"{r['p_holm']:.3g} | "
              f"{r['p_randomization']:.3g} | {r['n_queries']} |")
    if args.json is not None:
        out = {"run_a": str(args.run_a), "run_b": str(args.run_b), "metric": args.metric,
               "holm_family": "all rows of this table (t-test p-values)",
               "seeds": "per-query scores averaged over each run's training seeds (seeds_a, seeds_b)", "rows": rows}
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(out, indent=2) + "\n")
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
