"""FAISS search: Flat vs HNSW32 vs IVF-Flat vs IVF-SQ8 vs IVF-PQ (fast-scan) on synthetic normalized 384-d embeddings.

For each corpus size (``--sizes``, default 100k; add 1,000,000 for the large run) one process:

- makes seeded synthetic embeddings shaped like sentence embeddings (a mixture of ``--clusters``
  Gaussian clusters around random centres, L2-normalized, plus held-out queries drawn the same
  way); pure isotropic noise would have no neighbourhood structure for any ANN index to use;
- computes exact top-10 with plain ``faiss.IndexFlatIP`` (the ground truth);
- builds each index with ``dpo_retrieval.retrieval.index.build_from_embeddings`` (our code; IVF/PQ train on
  at most 256k sampled rows) and, for Flat and HNSW32, also with plain ``faiss.index_factory`` +
  ``add`` (same factory) for a side-by-side build time;
- searches ``--queries`` queries (one batch, k=10) through ``FaissIndex.search`` (ours: ids mapped
  to doc-id strings) and through the raw ``index.search`` on the same FAISS object (plain), for each
  ``efSearch`` (HNSW) / ``nprobe`` (IVF) setting: QPS, recall@10 vs exact, index size
  (``len(faiss.serialize_index(index))``);
- recommends, per size, the fastest setting with recall@10 >= ``--target-recall`` (0.99).

IVF-PQ uses 4-bit fast-scan codes (``PQ48x4fs``): 8-bit ``PQ48`` took ~120 s to train on just
20k vectors with faiss-cpu 1.15 here (the fast-scan variant: ~5 s) and searches slower.

Usage: ``python benchmarks/bench_search.py [--quick] [--sizes 100000,1000000] [--queries 1000]``
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from _common import median, table, write_result  # noqa: E402

from dpo_retrieval.retrieval.index import build_from_embeddings  # noqa: E402

DIM = 384


def synthetic(n: int, n_queries: int, clusters: int, seed: int, spread: float = 0.6):
    """Normalized float32 (n, 384) docs and (n_queries, 384) queries from one cluster mixture."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(m):
        out = np.empty((m, DIM), dtype=np.float32)
        for s in range(0, m, 100_000):
            e = min(m, s + 100_000)
            c = rng.integers(0, clusters, e - s)
            x = centres[c] + spread / math.sqrt(DIM) * rng.standard_normal((e - s, DIM), dtype=np.float32)
            out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    return draw(n), draw(n_queries)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth)]))


def timed_search(fn, repeats: int):
    ts = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return median(ts), out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 20k vectors, 200 queries, 1 repeat")
    ap.add_argument("--sizes", default="100000")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3, help="search repeats per setting (median)")
    ap.add_argument("--clusters", type=int, default=0, help="mixture components (default n/100)")
    ap.add_argument("--ef", default="16,32,64,128,256", help="HNSW efSearch values")
    ap.add_argument("--nprobe", default="1,4,16,32,64,128", help="IVF nprobe values")
    ap.add_argument("--factories", default="Flat;HNSW32;IVF{nlist},Flat;IVF{nlist},SQ8;IVF{nlist},PQ48x4fs",
                    help="';'-separated FAISS factory strings; {nlist} = 4*sqrt(n) rounded to a power of two")
    ap.add_argument("--target-recall", type=float, default=0.99)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="write results/bench_search.<tag>.json (e.g. 1m)")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.queries, args.repeats, args.ef, args.nprobe = "20000", 200, 1, "32,128", "4,32"

    print(f"faiss {faiss.__version__}, omp threads {faiss.omp_get_max_threads()}")
    results = []
    recommendations = {}
    for n in [int(s) for s in args.sizes.split(",") if s]:
        clusters = args.clusters or max(10, n // 100)
        t0 = time.perf_counter()
        docs, queries = synthetic(n, args.queries, clusters, args.seed)
        print(f"\n== n={n:,} x {DIM}, {clusters} clusters, {args.queries} queries, k={args.k} "
              f"(data {time.perf_counter() - t0:.1f}s)")
        nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
        factories = []
        for part in [f.strip() for f in args.factories.split(";") if f.strip()]:
            factories.append(part.replace("{nlist}", str(nlist)))
        doc_ids = [f"d{i}" for i in range(n)]
        meta = {"metric": "inner_product", "normalize_embeddings": True}

        # exact ground truth with plain FAISS
        gt_index = faiss.IndexFlatIP(DIM)
        gt_index.add(docs)
        _, truth = gt_index.search(queries, args.k)
        del gt_index

        rows = []
        for factory in factories:
            gc.collect()
            t0 = time.perf_counter()
            ours = build_from_embeddings(docs, doc_ids, meta, factory=factory)
            build_ours = time.perf_counter() - t0
            build_plain = None
            if factory in ("Flat", "HNSW32"):
                t0 = time.perf_counter()
                plain = faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)
                plain.add(docs)
                build_plain = time.perf_counter() - t0
                del plain
            size_mb = len(faiss.serialize_index(ours.index)) / 2 ** 20
            index = ours.index
            if "HNSW" in factory:
                settings = [("efSearch", int(v)) for v in args.ef.split(",")]
            elif "IVF" in factory:
                settings = [("nprobe", int(v)) for v in args.nprobe.split(",") if int(v) <= nlist]
            else:
                settings = [(None, None)]
            for knob, value in settings:
                kw = {}
                if knob == "efSearch":
                    kw = {"ef_search": value}
                elif knob == "nprobe":
                    kw = {"nprobe": value}
                t_ours, (_, ids) = timed_search(lambda: ours.search(queries, args.k, **kw), args.repeats)
                found = np.array([[int(d[1:]) if d is not None else -1 for d in row] for row in ids])
                # plain: the same FAISS object, same knob, raw index.search
                if knob == "efSearch":
                    faiss.ParameterSpace().set_index_parameter(index, "efSearch", value)
                elif knob == "nprobe":
                    faiss.ParameterSpace().set_index_parameter(index, "nprobe", value)
                t_plain, (_, pos) = timed_search(lambda: index.search(queries, args.k), args.repeats)
                row = {"n": n, "factory": factory, "knob": f"{knob}={value}" if knob else "",
                       "build_s_ours": build_ours, "build_s_plain": build_plain, "size_mb": size_mb,
                       "qps_ours": args.queries / t_ours, "qps_plain": args.queries / t_plain,
                       "ours_over_plain_time": t_ours / t_plain,
                       "recall@10": recall_at(found, truth), "recall@10_plain": recall_at(pos, truth)}
                rows.append(row)
                print(f"  {factory:<16} {row['knob']:<13} build {build_ours:7.1f}s  {size_mb:8.1f} MB  "
                      f"qps ours {row['qps_ours']:9.0f} plain {row['qps_plain']:9.0f}  recall@10 {row['recall@10']:.4f}",
                      flush=True)
            del ours, index
        flat_qps = next(r["qps_ours"] for r in rows if r["factory"] == "Flat") if "Flat" in factories else None
        for r in rows:
            r["speedup_vs_flat"] = r["qps_ours"] / flat_qps if flat_qps else None
        ok = [r for r in rows if r["recall@10"] >= args.target_recall and r["factory"] != "Flat"]
        best = max(ok, key=lambda r: r["qps_ours"]) if ok else None
        recommendations[str(n)] = best and {k: best[k] for k in ("factory", "knob", "qps_ours", "recall@10",
                                                                  "size_mb", "build_s_ours", "speedup_vs_flat")}
        print(table(rows, ["factory", "knob", "build_s_ours", "build_s_plain", "size_mb", "qps_ours", "qps_plain",
                           "ours_over_plain_time", "recall@10", "speedup_vs_flat"], floatfmt=".3f"))
        print(f"  fastest ANN with recall@10 >= {args.target_recall}: "
              f"{best and (best['factory'] + ' ' + best['knob'])}")
        results.extend(rows)
        del docs, queries
        gc.collect()

    write_result("bench_search" + (f".{args.tag}" if args.tag else ""), {
        "dim": DIM, "k": args.k, "queries": args.queries, "repeats": args.repeats, "seed": args.seed,
        "data": "synthetic: Gaussian cluster mixture (n/100 clusters, spread 0.6), L2-normalized",
        "target_recall": args.target_recall, "rows": results, "recommendations": recommendations,
    }, quick=args.quick)


if __name__ == "__main__":
    main()
