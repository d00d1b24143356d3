"""Scoring a model on a BEIR split (dpo_retrieval.evaluation.evaluate): the pipeline, the evaluate
command, and the real-data anchor's code path on a SciFact subset."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from test_beir import CORPUS, QRELS, data_root, make_dataset  # noqa: F401 - data_root is a fixture

from dpo_retrieval.data import beir as beir_mod
from dpo_retrieval.errors import UserInputError
from dpo_retrieval.evaluation import evaluate as evaluate_mod
from dpo_retrieval.evaluation import metrics as metrics_mod


# ----------------------------------------------------------------------------------------------
# the pipeline and the command
def test_evaluate_model_caches_and_reuses(tiny_model, data_root, tmp_path, monkeypatch):
    import pytrec_eval

    evaluators = []
    real = pytrec_eval.RelevanceEvaluator
    monkeypatch.setattr(pytrec_eval, "RelevanceEvaluator", lambda *a, **k: evaluators.append(a[1]) or real(*a, **k))
    ds = beir_mod.load_beir("toy")
    cache = tmp_path / "emb" / "corpus.npy"
    r1 = evaluate_mod.evaluate_model(tiny_model, ds, top_k=5, precision="fp32", embeddings_cache=cache,
                           save_index=tmp_path / "idx", model_name="tiny")
    assert set(r1["metrics"]) == set(metrics_mod.REPORTED) and set(r1["per_query"]) == {"q1", "q2", "q3"}
    assert r1["num_docs"] == 6 and r1["num_queries"] == 3 and r1["factory"] == "Flat"
    assert all(0.0 <= v <= 1.0 for v in r1["metrics"].values())
    assert {"encode_corpus_s", "encode_queries_s", "search_s", "metrics_s"} <= set(r1["timings"])
    assert all(len(h) == 5 for h in r1["run"].values())
    assert cache.exists() and np.load(cache).shape == (6, 32)
    assert len(evaluators) == 1  # one pytrec_eval pass scores every metric, means and per query

    r2 = evaluate_mod.evaluate_model(tiny_model, ds, top_k=5, precision="fp32", embeddings_cache=cache)
    assert r2["timings"]["encode_corpus_s"] == 0.0 and r2["metrics"] == r1["metrics"]
    r3 = evaluate_mod.evaluate_model(tiny_model, ds, top_k=5, precision="fp32", index=tmp_path / "idx")
    assert r3["metrics"] == r1["metrics"] and "load_index_s" in r3["timings"]

    other = beir_mod.load_beir(str(make_dataset(tmp_path / "other", corpus_lines=[
        json.dumps({"_id": d, "title": t, "text": x}) for d, (t, x) in list(CORPUS.items())[:5]],
        qrels=QRELS[:2])))
    with pytest.raises(UserInputError, match="built from another corpus"):
        evaluate_mod.evaluate_model(tiny_model, other, index=tmp_path / "idx")
    # a cache from another corpus is not reused
    r4 = evaluate_mod.evaluate_model(tiny_model, other, top_k=5, precision="fp32", embeddings_cache=cache)
    assert r4["timings"]["encode_corpus_s"] > 0 and np.load(cache).shape == (5, 32)


def test_evaluate_command(tiny_model_path, data_root, tmp_path, capsys):
    from dpo_retrieval.cli import main

    out = tmp_path / "res" / "results.json"
    assert main(["--quiet", "evaluate", "--model", tiny_model_path, "--dataset", "toy", "--top-k", "5",
                 "--output", str(out), "--run", str(tmp_path / "run.trec"), "--precision", "fp32"]) == 0
    res = json.loads(out.read_text())
    assert res["dataset"] == "toy" and res["split"] == "test" and res["max_seq_length"] == 256
    assert "run" not in res and set(res["per_query"]) == {"q1", "q2", "q3"}
    table = capsys.readouterr().out
    assert "ndcg@10" in table and "recall@100" in table
    with open(tmp_path / "run.trec") as f:
        rows = list(csv.reader(f, delimiter=" "))
    assert len(rows) == 15 and rows[0][1] == "Q0"

    assert main(["evaluate", "--model", tiny_model_path, "--dataset", "absent-set", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dpo-retrieval evaluate: error: --dataset:") and "\n" not in err
    assert main(["evaluate", "--model", tiny_model_path, "--dataset", "toy", "--output", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# the anchor's code path on a small real subset
@pytest.mark.slow
def test_scifact_subset_matches_an_independent_computation(beir_data, tmp_path):
    """evaluate_model (packaged MiniLM, title + " " + text, 256 tokens, exact search) equals a
    hand-rolled numpy cosine search scored by pytrec_eval, on ~50 SciFact docs."""
    import pytrec_eval

    from dpo_retrieval.models import load_model

    src = beir_data / "scifact"
    with open(src / "qrels" / "test.tsv") as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:]
    qids = list(dict.fromkeys(r[0] for r in rows))[:10]
    rows = [r for r in rows if r[0] in qids]
    need = {r[1] for r in rows}
    docs = []
    with open(src / "corpus.jsonl") as f:
        for line in f:
            d = json.loads(line)
            if d["_id"] in need or len(docs) < 40:
                docs.append(line.strip())
    queries = [line.strip() for line in open(src / "queries.jsonl") if json.loads(line)["_id"] in qids]
    sub = make_dataset(tmp_path / "scifact-sub", corpus_lines=docs, query_lines=queries,
                       qrels=[tuple(r) for r in rows])
    ds = beir_mod.load_beir(str(sub))
    model = load_model(None, device="cpu", max_seq_length=256)
    res = evaluate_mod.evaluate_model(model, ds, top_k=100, precision="fp32")

    texts = [(d["title"] + " " + d["text"]).strip() for d in map(json.loads, docs)]
    ids = [json.loads(d)["_id"] for d in docs]
    d_emb = model.encode_document(texts, normalize_embeddings=True, batch_size=64)
    q_emb = model.encode_query([ds.queries[q] for q in ds.queries], normalize_embeddings=True)
    sims = q_emb @ d_emb.T
    run = {q: {ids[j]: float(sims[i, j]) for j in np.argsort(-sims[i])[:100]} for i, q in enumerate(ds.queries)}
    scores = pytrec_eval.RelevanceEvaluator(ds.qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    ndcg10 = np.mean([s["ndcg_cut_10"] for s in scores.values()])
    assert res["metrics"]["ndcg@10"] == pytest.approx(ndcg10, abs=2e-4)
    assert res["metrics"]["recall@100"] == pytest.approx(np.mean([s["recall_100"] for s in scores.values()]), abs=2e-4)
    assert res["metrics"]["ndcg@10"] > 0.7  # relevant docs are among ~100: easy, but a broken encoder fails
