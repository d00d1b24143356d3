"""Two trainings side by side at one thread each, or one at a time with every core? Training throughput on
this machine, measured, so a driver that runs many trainings (the study's sweeps and finals) can choose.

Runs ``bench_train_step.py`` (identical pre-tokenized SciFact batches; forward, backward and AdamW; the
median of ``--steps`` timed steps per variant: mnrl, dpo with a precomputed and with an online reference)
(a) once alone with ``torch`` using all ``--cores`` threads, then (b) as ``--cores`` processes at the same
time, one thread each. Throughput is steps per second over all processes: (a) ``1 / median step``, (b) the
sum of each process's ``1 / median step``. ``parallel_over_serial`` > 1 means side by side wins.

    python benchmarks/bench_threads.py [--steps 3] [--cores 2] [--precision fp32] [--quick]

Writes ``benchmarks/results/bench_threads.json``. Run it on an otherwise idle machine (its load average at
start and end is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, write_result  # noqa: E402

HERE = Path(__file__).resolve().parent


def _run(procs: int, threads: int, args, tmp: Path) -> list[dict]:
    """``procs`` bench_train_step processes started together, ``threads`` torch threads each; their rows."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    tags = [f"threads_tmp_{procs}x{threads}_{i}" for i in range(procs)]
    running = [subprocess.Popen([sys.executable, str(HERE / "bench_train_step.py"), "--precision", args.precision,
                                 "--scaling", "", "--losses", "", "--steps", str(args.steps), "--tag", tag, *(["--quick"] if args.quick else [])],
                                env=env, stdout=open(tmp / f"{tag}.log", "w"), stderr=subprocess.STDOUT)
               for tag in tags]
    if any(p.wait() for p in running):
        raise SystemExit(f"bench_train_step failed; see {tmp}")
    out = []
    for tag in tags:
        path = RESULTS / f"bench_train_step.{tag}{'.quick' if args.quick else ''}.json"
        out.append(json.loads(path.read_text()))
        path.unlink()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant and process (3)")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2, help="cores to share (all)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--quick", action="store_true", help="smoke run (bench_train_step --quick); bench_threads.quick.json")
    args = ap.parse_args()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        serial = _run(1, args.cores, args, Path(tmp))
        parallel = _run(args.cores, 1, args, Path(tmp))
    rows = []
    for variant in [r["variant"] for r in serial[0]["rows"]]:
        step = next(r["median_step_s"] for r in serial[0]["rows"] if r["variant"] == variant)
        steps = [next(r["median_step_s"] for r in p["rows"] if r["variant"] == variant) for p in parallel]
        serial_rate, parallel_rate = 1 / step, sum(1 / s for s in steps)
        rows.append({"variant": variant, "serial_median_step_s": step, "parallel_median_step_s": steps,
                     "serial_steps_per_s": serial_rate, "parallel_steps_per_s": parallel_rate,
                     "parallel_over_serial": parallel_rate / serial_rate})
        print(f"{variant:<18} {args.cores} threads x 1: {step:6.2f} s/step   1 thread x {args.cores}: "
              f"{', '.join(f'{s:.2f}' for s in steps)} s/step   side by side / one at a time: "
              f"{parallel_rate / serial_rate:.2f}")
    write_result("bench_threads", {
        "load_average_at_start": load_at_start, "cores": args.cores, "steps": args.steps, "precision": args.precision,
        "batch_size": serial[0]["batch_size"], "max_seq_length": serial[0]["max_seq_length"], "rows": rows},
        quick=args.quick)


if __name__ == "__main__":
    main()
