"""Reproduce the `compare` figures quoted in README.md and record them under benchmarks/results/.

Each entry runs one `dpo-retrieval compare` (resumable: its stages are cached in the run directory,
so a killed run continues where it stopped) and writes `benchmarks/results/compare_<name>.json`:
the exact command, the wall time of that invocation, the machine load before and after, the CPU
model, and the run's report.json (per-query arrays are not part of report.json). The dropout
ablation is written by scripts/compare_runs.py from the two quick runs.

    DPO_RETRIEVAL_DATA=../shared/data/beir python scripts/readme_results.py            # all
    DPO_RETRIEVAL_DATA=../shared/data/beir python scripts/readme_results.py quick full  # some
    python scripts/readme_results.py --markdown quick     # README's tables from the results file
    python scripts/readme_results.py --dev-table losses hinge   # README's "every loss once" table (dev split)

Wall times are only comparable when the machine was otherwise idle: check `load_average_start`.
The dropout and full runs start from a copy of the quick run's mining and base-model corpus
embeddings (same base model, seed and mining settings, so the same stage keys): they re-mine nothing,
and their wall time covers training and evaluation only (`reused_mining_from` says so).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from dpo_retrieval.models import cpu_name

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = {
    "scifact_quick": ["--dataset", "scifact", "--preset", "quick", "--output", "runs/scifact-quick"],
    "scifact_quick_dropout_off": ["--dataset", "scifact", "--preset", "quick", "--dropout", "off",
                                  "--output", "runs/scifact-quick-dropout-off"],
    "scifact_full": ["--dataset", "scifact", "--preset", "full", "--output", "runs/scifact-full"],
    # issue 11: every loss once on the quick preset (seed 42, fp32), and DPO's hinge loss type
    "scifact_quick_losses": ["--dataset", "scifact", "--preset", "quick", "--losses", "contrastive,cmnrl,dpo,dpo+mnrl,sdpo",
                             "--precision", "fp32", "--output", "runs/losses-quick"],
    "scifact_quick_hinge": ["--dataset", "scifact", "--preset", "quick", "--losses", "dpo", "--loss_type", "hinge",
                            "--precision", "fp32", "--output", "runs/losses-quick-hinge"],
}
ALIASES = {"quick": "scifact_quick", "dropout": "scifact_quick_dropout_off", "full": "scifact_full",
           "losses": "scifact_quick_losses", "hinge": "scifact_quick_hinge"}


def _write(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


QUICK_DIR = ROOT / "runs" / "scifact-quick"


#: where a run copies its mining from (default: the quick run)
REUSE_FROM = {"scifact_quick_hinge": ROOT / "runs" / "losses-quick"}


def reuse_mining(out_dir: Path, source: Path = QUICK_DIR) -> bool:
    """Copy a run's mining stage and base corpus embeddings into a new run directory."""
    if out_dir.exists() or not (source / "mine.stage.json").exists():
        return False
    out_dir.mkdir(parents=True)
    shutil.copytree(source / "mine", out_dir / "mine")
    shutil.copy2(source / "mine.stage.json", out_dir / "mine.stage.json")
    if (source / "embeddings" / "base").is_dir():
        shutil.copytree(source / "embeddings" / "base", out_dir / "embeddings" / "base")
    (out_dir / "REUSED_MINING").write_text(f"mine/ and embeddings/base/ copied from {source.relative_to(ROOT)}\n")
    return True


def mining_summary(out_dir: Path) -> dict | None:
    """The run's mining record (``mine/mining.json``: settings, train/dev queries, triplets, dropped queries)."""
    path = out_dir / "mine" / "mining.json"
    return json.loads(path.read_text()) if path.exists() else None


def run_one(name: str) -> None:
    exe = shutil.which("dpo-retrieval") or str(Path(sys.executable).with_name("dpo-retrieval"))
    args = RUNS[name]
    command = "dpo-retrieval compare " + " ".join(args)
    out_dir = ROOT / args[args.index("--output") + 1]
    resumed = (out_dir / "config.json").exists()
    source = REUSE_FROM.get(name, QUICK_DIR)
    if name not in ("scifact_quick", "scifact_quick_losses"):
        reuse_mining(out_dir, source)
    reused = (out_dir / "REUSED_MINING").exists()
    print(f"[{name}] {command}" + (" (resuming)" if resumed else ""), flush=True)
    load_start = os.getloadavg()
    start = time.perf_counter()
    subprocess.run([exe, "compare", *args], cwd=ROOT, check=True)
    wall = time.perf_counter() - start
    report = json.loads((out_dir / "report.json").read_text())
    _write(RESULTS / f"compare_{name}.json", {
        "command": command,
        "environment": "DPO_RETRIEVAL_DATA=../shared/data/beir (BEIR folder), HF_HUB_OFFLINE=1",
        "wall_time_s": round(wall, 1),
        "resumed_from_an_earlier_invocation": resumed,
        "reused_mining_from": str(source.relative_to(ROOT)) if reused else None,
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mining": mining_summary(out_dir),
        "report": report,
    })
    print(f"[{name}] done in {wall / 60:.1f} min -> benchmarks/results/compare_{name}.json", flush=True)


def markdown(name: str) -> str:
    """README's tables (test and dev nDCG@10 comparisons with Holm) from a recorded results file."""
    rec = json.loads((RESULTS / f"compare_{name}.json").read_text())
    out = [f"From `benchmarks/results/compare_{name}.json` (`{rec['command']}`, wall time "
           f"{rec['wall_time_s'] / 60:.1f} min, load average at start {rec['load_average_start'][0]}):", ""]
    for ds_name, ds in rec["report"]["datasets"].items():
        n_q = max(r.get("n_queries") or 0 for r in ds["rows"])
        out += [f"**{ds_name}** ({n_q} queries)", "",
                "| Model | nDCG@10 | Recall@100 | MAP@100 | MRR@10 | Train time | Eval time |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        for r in ds["rows"]:
            t = "—" if r.get("train_time_s") is None else f"{r['train_time_s']:.0f} s"
            out.append(f"| {r['model']} | {r['NDCG@10']:.4f} | {r['Recall@100']:.4f} | {r['MAP@100']:.4f} | "
                       f"{r['MRR@10']:.4f} | {t} | {r['eval_time_s']:.0f} s |")
        out += ["", "| A − B, nDCG@10 | diff | 95% CI | p (t-test) | p (Holm) |", "|---|---:|---:|---:|---:|"]
        for c in ds["comparisons"]:
            if c["metric"] == "NDCG@10":
                out.append(f"| {c['a']} − {c['b']} | {c['diff']:+.4f} | [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] | "
                           f"{c['p_ttest']:.3g} | {c['p_holm']:.3g} |")
        out.append("")
    return "\n".join(out)


def dev_table(names: list[str]) -> str:
    """One dev-split row per trained model of the recorded runs ``names`` (base from the first): nDCG@10, its
    difference from base with the bootstrap CI, and the harm rate (README's "every loss once" table)."""
    out = ["| model (run) | dev nDCG@10 | − base | 95% CI | p (Holm) | harm rate |", "|---|---:|---:|---:|---:|---:|"]
    for i, name in enumerate(names):
        ds = json.loads((RESULTS / f"compare_{name}.json").read_text())["report"]["datasets"]["scifact-dev"]
        vs_base = {c["a"]: c for c in ds["comparisons"] if c["b"] == "base" and c["metric"] == "NDCG@10"}
        for r in ds["rows"]:
            if r["model"] == "base":
                if i == 0:
                    out.append(f"| base | {r['NDCG@10']:.4f} | | | | |")
                continue
            c, harm = vs_base[r["model"]], r.get("harm_rate")
            out.append(f"| {r['model']} ({name}) | {r['NDCG@10']:.4f} | {c['diff']:+.4f} | "
                       f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] | {c['p_holm']:.3g} | "
                       + ("—" if harm is None else f"{100 * harm:.1f}%") + " |")
    return "\n".join(out)


def main() -> None:
    if sys.argv[1:2] == ["--dev-table"]:
        names = [ALIASES.get(n, n) for n in sys.argv[2:]]
        missing = [n for n in names if not (RESULTS / f"compare_{n}.json").exists()]
        if not names or missing:
            sys.exit(f"--dev-table: no recorded run {missing or '(none given)'}; choose from {list(ALIASES)}")
        print(dev_table(names))
        return
    if sys.argv[1:2] == ["--markdown"]:
        for n in sys.argv[2:]:
            print(markdown(ALIASES.get(n, n)))
        return
    names = [ALIASES.get(n, n) for n in sys.argv[1:]] or list(RUNS)
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        sys.exit(f"unknown run(s) {unknown}; choose from {list(RUNS)} or {list(ALIASES)}")
    for name in names:
        run_one(name)
    if {"scifact_quick", "scifact_quick_dropout_off"} <= set(names):
        subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_runs.py"), "runs/scifact-quick",
                        "runs/scifact-quick-dropout-off", "--json",
                        str(RESULTS / "dropout_ablation_scifact_quick.json")], cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
