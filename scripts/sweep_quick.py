"""The sweep behind the fast-vs-full dev agreement figure: DPO beta x learning rate on SciFact's quick-preset
triplets, every point scored on dev both ways, written to benchmarks/results/sweep_dpo_quick_scifact.json.

    DPO_RETRIEVAL_DATA=../shared/data/beir python scripts/sweep_quick.py

Resumable: mining, each point's training and scores are cached under runs/sweep (re-run to continue).
Mining and the 256-triplet subsample are the quick preset's (`compare --preset quick`: seed 42); fp32 throughout,
so the figures do not depend on whether this CPU has fast bf16.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "runs" / "sweep"
GRID = ROOT / "configs" / "sweep_dpo_quick.yaml"
RESULT = ROOT / "benchmarks" / "results" / "sweep_dpo_quick_scifact.json"


def main() -> None:
    from dpo_retrieval.data.triplets import load_triplets, save_triplets
    from dpo_retrieval.experiment.sweep import SweepArgs, run_sweep
    from dpo_retrieval.models import cpu_name

    started, load = time.time(), os.getloadavg()
    if not (RUN / "mine" / "triplets.jsonl").exists():
        subprocess.run([sys.executable, "-m", "dpo_retrieval", "mine", "--dataset", "scifact",
                        "--output", str(RUN / "mine"), "--precision", "fp32", "--negatives", "1"], check=True, cwd=ROOT)
    sub = RUN / "train_triplets.jsonl"
    if not sub.exists():  # compare --preset quick's subsample: 256 triplets, seed 42
        triplets = load_triplets(RUN / "mine" / "triplets.jsonl")
        picked = sorted(random.Random(42).sample(range(len(triplets)), min(256, len(triplets))))
        save_triplets(triplets.select(picked), sub)
    os.chdir(ROOT)
    summary = run_sweep(SweepArgs(grid=str(GRID), full_dev=True, precision="fp32"))
    out = {"command": "python scripts/sweep_quick.py", "grid_file": str(GRID.relative_to(ROOT)), "cpu": cpu_name(),
           "load_average_start": [round(x, 2) for x in load], "wall_s_this_invocation": round(time.time() - started, 1),
           **{k: v for k, v in summary.items() if k != "points"},
           "points": [{k: v for k, v in r.items() if k != "fast_dev_per_query_ndcg@10"} for r in summary["points"]]}
    RESULT.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(json.dumps({"agreement": summary.get("agreement_ndcg@10"), "best": summary.get("best")}, indent=2))


if __name__ == "__main__":
    main()
