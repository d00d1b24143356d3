"""Peak RSS of ``load_triplets`` against triplet-file size (issue 12, item 3: streaming triplets).

For each size (10k, 100k, 1M lines; ``--big`` adds 10M) a headerless MS MARCO-style TSV
(query, positive, negative; ~450 bytes a line) is written into a temporary directory, then a
fresh subprocess loads it with :func:`dpo_retrieval.data.triplets.load_triplets` (its own empty
HF datasets cache) and reports ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at three points:

* ``import_mib``: after importing dpo_retrieval.data.triplets and datasets (the floor);
* ``build_mib``: after the first load (the file parsed and written to the Arrow cache);
* ``scan_mib``: after reading every row back in batches of 1,000 (what a trainer touches);
  then from /proc/self/status ``rss_anon_mib`` (private heap) and ``rss_file_mib`` (mapped pages of
  the Arrow cache, which the kernel can drop; ru_maxrss counts them too).

It also records whether the returned Dataset is memory-mapped from the cache (``cache_files``
non-empty, no in-memory table). Results: benchmarks/results/bench_triplets_rss.json.

    python benchmarks/bench_triplets_rss.py            # 10k, 100k, 1M
    python benchmarks/bench_triplets_rss.py --big      # also 10M (~4.5 GB of TSV, several minutes)
    python benchmarks/bench_triplets_rss.py --quick    # 10k, 100k only
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, table, write_result  # noqa: E402

WORDS = ("the of and to in is was for on that with as by at from are this be which or an were have has not "
         "cell protein gene patients study results effect levels risk disease treatment expression clinical "
         "analysis data model increased associated significant high low human cancer therapy response").split()

CHILD = r"""
import json, resource, sys, time
def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
from dpo_retrieval.data.triplets import load_triplets
import datasets
out = {"import_mib": rss()}
t0 = time.perf_counter()
ds = load_triplets(sys.argv[1], cache_dir=sys.argv[2])
out["build_s"] = time.perf_counter() - t0
out["build_mib"] = rss()
out["rows"] = ds.num_rows
out["memory_mapped"] = bool(ds.cache_files) and not ds._data.table.__class__.__name__.startswith("InMemory")
out["table_class"] = type(ds._data).__name__
t0 = time.perf_counter()
chars = 0
for batch in ds.iter(batch_size=1000):
    chars += sum(map(len, batch["negative_1"]))
out["scan_s"] = time.perf_counter() - t0
out["scan_mib"] = rss()
status = dict(l.split(":", 1) for l in open("/proc/self/status") if l.startswith(("RssAnon", "RssFile")))
out["rss_anon_mib"] = int(status["RssAnon"].split()[0]) / 1024  # private heap, after the scan
out["rss_file_mib"] = int(status["RssFile"].split()[0]) / 1024  # mapped file pages (Arrow cache), reclaimable
print(json.dumps(out))
"""


def write_tsv(path: Path, lines: int, seed: int = 0) -> int:
    """A headerless query\\tpositive\\tnegative TSV of ``lines`` lines; returns its size in bytes."""
    rng = random.Random(seed)
    pool = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(25, 45))) for _ in range(4096)]
    queries = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 10))) + "?" for _ in range(4096)]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(lines):
            # the line number in every field, so no two rows are equal
            f.write(f"{queries[i % 4096]} {i}\t{pool[(i * 7) % 4096]} {i}\t{pool[(i * 13 + 5) % 4096]} {i}\n")
    return path.stat().st_size


def measure(path: Path, cache: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), str(cache)], capture_output=True, text=True,
                          env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"child failed on {path}:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_s"] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10k and 100k lines only")
    ap.add_argument("--big", action="store_true", help="also 10M lines")
    ap.add_argument("--tmp", default=None, help="where to write the TSVs and caches (default: a temp dir)")
    args = ap.parse_args()
    sizes = [10_000, 100_000] + ([] if args.quick else [1_000_000]) + ([10_000_000] if args.big else [])
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_triplets_", dir=args.tmp) as tmp:
        for n in sizes:
            path = Path(tmp) / f"triplets_{n}.tsv"
            t0 = time.perf_counter()
            size = write_tsv(path, n)
            gen_s = time.perf_counter() - t0
            cache = Path(tmp) / f"cache_{n}"
            r = measure(path, cache)
            cache_bytes = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
            row = {"lines": n, "file_mib": round(size / 2**20, 1), "arrow_cache_mib": round(cache_bytes / 2**20, 1),
                   "import_mib": round(r["import_mib"], 1), "build_mib": round(r["build_mib"], 1),
                   "scan_mib": round(r["scan_mib"], 1),
                   "growth_over_import_mib": round(r["scan_mib"] - r["import_mib"], 1),
                   "rss_anon_mib": round(r["rss_anon_mib"], 1), "rss_file_mib": round(r["rss_file_mib"], 1),
                   "rows": r["rows"], "memory_mapped": r["memory_mapped"], "table_class": r["table_class"],
                   "build_s": round(r["build_s"], 1), "scan_s": round(r["scan_s"], 1),
                   "generate_s": round(gen_s, 1)}
            rows.append(row)
            print(table([row], list(row)), flush=True)
            path.unlink()
    cols = ["lines", "file_mib", "arrow_cache_mib", "import_mib", "build_mib", "scan_mib", "growth_over_import_mib",
            "rss_anon_mib", "rss_file_mib", "memory_mapped", "build_s", "scan_s"]
    print(table(rows, cols))
    write_result("bench_triplets_rss", {
        "what": "peak RSS (ru_maxrss) of a fresh process loading a headerless query/positive/negative TSV with "
                "load_triplets (fresh HF datasets cache) and then reading every row in batches of 1000",
        "sizes": sizes, "results": rows}, quick=args.quick)


if __name__ == "__main__":
    main()
