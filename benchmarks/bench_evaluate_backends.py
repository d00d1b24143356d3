"""Full SciFact ``dpo-retrieval evaluate`` (test split, 5,183 docs) through each ``--backend``.

One ``dpo-retrieval evaluate --dataset scifact --backend B`` subprocess per backend (default: torch,
then auto), each timed end to end; records the wall time, the backend the run resolved to, its
nDCG@10, the encode time and the machine's load average before and after each run (the cores may be
shared), in ``results/bench_evaluate_backends.json``. ``auto`` uses (or, the first time on a machine,
measures) the cached probe of ``dpo_retrieval.retrieval.backends``; its decision is recorded too.

Usage: ``python benchmarks/bench_evaluate_backends.py [--backends torch,auto] [--dataset DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, SCIFACT, table, write_result  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="torch,auto", help="comma list of --backend values (default torch,auto)")
    ap.add_argument("--dataset", default=str(SCIFACT), help="BEIR dataset directory (default: SciFact)")
    ap.add_argument("--tag", default="", help="write results/bench_evaluate_backends.<tag>.json")
    args = ap.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in [b for b in args.backends.split(",") if b]:
            out = Path(tmp) / f"{backend}.json"
            cmd = [sys.executable, "-m", "dpo_retrieval", "--quiet", "evaluate", "--dataset", args.dataset,
                   "--output", str(out), "--backend", backend]
            load_before = [round(x, 2) for x in os.getloadavg()]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            res = json.loads(out.read_text())
            rows.append({"backend": backend, "resolved": res.get("backend"), "wall_s": round(wall, 1),
                         "encode_corpus_s": res["timings"].get("encode_corpus_s"),
                         "ndcg@10": res["metrics"]["ndcg@10"], "precision": res.get("precision"),
                         "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()],
                         "metrics": res["metrics"], "timings": res["timings"]})
            print(f"{backend} -> {rows[-1]['resolved']}: {wall:.1f} s, nDCG@10 {rows[-1]['ndcg@10']:.4f}", flush=True)
            # partial results after every row: a run killed later (or on a machine that got busy) keeps its rows
            write_result("bench_evaluate_backends" + (f".{args.tag}" if args.tag else "") + ".partial", {
                "dataset": args.dataset, "split": "test", "rows": rows}, quick=False)
    base = next((r for r in rows if r["backend"] == "torch"), None)
    if base:
        for r in rows:
            r["speedup_vs_torch"] = round(base["wall_s"] / r["wall_s"], 3)
            r["ndcg_delta_vs_torch"] = round(r["ndcg@10"] - base["ndcg@10"], 6)
    print(table(rows, ["backend", "resolved", "wall_s", "encode_corpus_s", "ndcg@10", "speedup_vs_torch",
                       "ndcg_delta_vs_torch"], floatfmt=".4f"))
    probe_file = Path(os.environ.get("DPO_RETRIEVAL_CACHE", "~/.cache/dpo_retrieval")).expanduser() / "backend_probe.json"
    probes = json.loads(probe_file.read_text()) if probe_file.is_file() else {}
    write_result("bench_evaluate_backends" + (f".{args.tag}" if args.tag else ""), {
        "dataset": args.dataset, "split": "test", "model": "all-MiniLM-L6-v2", "max_seq_length": 256,
        "rows": rows, "auto_probes": list(probes.values())}, quick=False)


if __name__ == "__main__":
    main()
