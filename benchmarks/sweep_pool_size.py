"""How many documents `sweep`'s fast dev score encodes: SciFact's dev queries (as `dpo-retrieval mine` splits
them: seed 42, dev fraction 0.1) x the base model's top N, plus their judged documents, for N = 10, 20, 50, 100.

    DPO_RETRIEVAL_DATA=../shared/data/beir python benchmarks/sweep_pool_size.py [MINE_DIR]

MINE_DIR: a `dpo-retrieval mine --dataset scifact` output (default runs/sweep/mine, as scripts/sweep_quick.py
makes it). Writes benchmarks/results/sweep_fast_pool_scifact.json.
"""
import json, sys, time
from pathlib import Path
from dpo_retrieval.data.beir import load_beir
from dpo_retrieval.experiment.compare import _read_qids
from dpo_retrieval.experiment.fast_dev import candidate_pool
from dpo_retrieval.mining import subset_queries
from dpo_retrieval.models import load_model, resolve_model_path
from dpo_retrieval.retrieval.cache import model_id
mine = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/sweep/mine")
dev = subset_queries(load_beir("scifact", "train"), _read_qids(mine / "dev_qrels.tsv"))
base = load_model(None, max_seq_length=256)
key = model_id(resolve_model_path(None))
out = {"dataset": "scifact", "dev_queries": len(dev.queries), "corpus_docs": len(dev.doc_ids),
       "mining": "dpo-retrieval mine --dataset scifact (seed 42, dev fraction 0.1)", "pools": {}}
for depth in (10, 20, 50, 100):
    t0 = time.perf_counter()
    pool = candidate_pool(base, dev, depth, embeddings_cache=mine / "pool_base_embeddings.npy", model_key=key)
    out["pools"][depth] = {"pool_docs": len({d for c in pool.values() for d in c}), "seconds": round(time.perf_counter() - t0, 1)}
    print(depth, out["pools"][depth], flush=True)
out["command"] = "python benchmarks/sweep_pool_size.py"
Path("benchmarks/results/sweep_fast_pool_scifact.json").write_text(json.dumps(out, indent=2) + "\n")
