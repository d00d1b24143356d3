"""FAISS indexes: every factory type builds, saves, loads and agrees with exact search; atomic
writes; model/index mismatches are refused; the index and search commands."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from dpo_retrieval.errors import UserInputError
from dpo_retrieval.retrieval.index import (
    EMBEDDINGS_FILE, IDS_FILE, INDEX_FILE, META_FILE, FaissIndex, build_from_embeddings, check_factory,
    model_settings,
)
from dpo_retrieval.retrieval.build import encode_corpus
from test_beir import data_root  # noqa: F401 - a fixture


def build_index(model, doc_ids, texts, *, model_name=None, titles=None, precision="auto", chunk_size=8192):
    """Encode texts and build an in-memory index, as the library's pipeline does."""
    meta = model_settings(model, model_name=model_name, precision=precision)
    emb = encode_corpus(model, texts, count=len(doc_ids), normalize=meta["normalize_embeddings"],
                        precision=precision, chunk_size=chunk_size)
    return build_from_embeddings(emb, doc_ids, meta, titles=titles)

logger = logging.getLogger(__name__)

DOCS = [
    ("d1", "Insulin", "insulin response in mice with diabetes"),
    ("d2", "Heart", "heart disease risk is increased by high blood pressure"),
    ("d3", "Sleep", "sleep in children and infants"),
    ("d4", "", "tumor growth signal pathway in cancer cells"),
    ("d5", "Virus", "virus infection and the immune response"),
    ("d6", "Vitamin", "vitamin levels in women and men"),
    ("d7", "Brain", "white matter fiber in the brain of infants"),
    ("d8", "Gene", "gene expression and rna mutation"),
]


def _synthetic(n: int = 2000, d: int = 32, n_queries: int = 50, seed: int = 0):
    """Clustered unit vectors (like real embeddings) and queries near documents."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(40, d))
    x = centers[rng.integers(0, 40, n)] + 0.6 * rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.choice(n, n_queries, replace=False)] + 0.3 * rng.normal(size=(n_queries, d))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x.astype(np.float32), q.astype(np.float32), [f"doc{i}" for i in range(n)]


META = {"model": "synthetic", "metric": "inner_product", "similarity": "cosine", "normalize_embeddings": True}


def _recall_vs_exact(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx_ids, exact_ids)]))


@pytest.fixture(scope="module")
def synthetic():
    return _synthetic()


@pytest.mark.parametrize("factory, min_recall", [
    ("Flat", 1.0), ("HNSW32", 0.95), ("IVF32,Flat", 0.9), ("IVF32,PQ8x4", 0.3),
])
def test_factory_builds_saves_loads_and_agrees_with_exact(synthetic, tmp_path, factory, min_recall, record_property):
    x, q, ids = synthetic
    exact_scores = q @ x.T
    exact = np.asarray(ids, dtype=object)[np.argsort(-exact_scores, axis=1)[:, :10]]
    index = build_from_embeddings(x, ids, dict(META), factory=factory)
    assert index.count == len(ids) and index.dimension == 32 and index.factory == factory
    index.save(tmp_path / "idx")
    loaded = FaissIndex.load(tmp_path / "idx")
    assert loaded.doc_ids == ids and loaded.meta["factory"] == factory
    assert loaded.meta["versions"]["faiss"]
    s1, i1 = index.search(q, 10)
    s2, i2 = loaded.search(q, 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, atol=1e-6)
    recall = _recall_vs_exact(i2, exact)
    record_property(f"recall@10 {factory} vs Flat", recall)
    logger.info("recall@10 of %s against exact search: %.3f", factory, recall)
    assert recall >= min_recall
    assert np.all(np.diff(s2, axis=1) <= 1e-6)  # sorted best first
    if factory == "Flat":  # exact inner product, the same scores as numpy
        np.testing.assert_allclose(s2, np.sort(exact_scores, axis=1)[:, ::-1][:, :10], atol=1e-5)


def test_search_knobs_raise_recall(synthetic):
    x, q, ids = synthetic
    exact = np.asarray(ids, dtype=object)[np.argsort(-(q @ x.T), axis=1)[:, :10]]
    index = build_from_embeddings(x, ids, dict(META), factory="IVF32,Flat")
    low = _recall_vs_exact(index.search(q, 10, nprobe=1)[1], exact)
    full = _recall_vs_exact(index.search(q, 10, nprobe=32)[1], exact)
    assert full == 1.0 and low < full


def test_fewer_docs_than_k_and_single_query(synthetic):
    x, q, ids = synthetic
    index = build_from_embeddings(x[:5], ids[:5], dict(META))
    scores, hits = index.search(q[0], 10)
    assert scores.shape == (1, 10) and list(hits[0, 5:]) == [None] * 5 and np.isneginf(scores[0, 5:]).all()


def test_bad_factories_and_training_size(synthetic):
    x, _, ids = synthetic
    with pytest.raises(UserInputError, match="factory"):
        check_factory("NotAnIndex42")
    with pytest.raises(UserInputError, match="needs at least 1024 documents"):
        build_from_embeddings(x[:100], ids[:100], dict(META), factory="IVF1024,Flat")
    with pytest.raises(UserInputError, match="needs at least 256"):
        build_from_embeddings(x[:100], ids[:100], dict(META), factory="IVF4,PQ4")
    with pytest.raises(UserInputError, match="duplicate document id 'doc0'"):
        build_from_embeddings(x[:3], ["doc0", "doc1", "doc0"], dict(META))


def test_build_index_with_model_and_metadata(tiny_model, tmp_path):
    ids = [d for d, _, _ in DOCS]
    texts = [f"{t} {x}".strip() for _, t, x in DOCS]
    index = build_index(tiny_model, ids, iter(texts), model_name="tiny", titles=[t for _, t, _ in DOCS],
                        precision="fp32", chunk_size=3)
    meta = index.meta
    assert meta["dimension"] == 32 and meta["count"] == len(DOCS) and meta["factory"] == "Flat"
    assert meta["similarity"] == "cosine" and meta["normalize_embeddings"] and meta["metric"] == "inner_product"
    assert meta["max_seq_length"] == tiny_model.max_seq_length and "title" in meta["doc_join"]
    scores, hits = index.search(index.encode_queries(tiny_model, texts, precision="fp32"), k=3)
    emb = tiny_model.encode(texts, normalize_embeddings=True)
    cos = emb @ emb.T  # brute force: the same top scores, and each hit scored as brute force scores it
    np.testing.assert_allclose(scores, np.sort(cos, axis=1)[:, ::-1][:, :3], atol=1e-4)
    for i, row in enumerate(hits):  # (the random tiny model has near-ties, so compare scores, not ranks)
        np.testing.assert_allclose(scores[i], [cos[i, ids.index(h)] for h in row], atol=1e-4)
    index.save(tmp_path / "idx", embeddings=np.zeros((len(DOCS), 32), np.float32))
    assert (tmp_path / "idx" / EMBEDDINGS_FILE).exists()
    loaded = FaissIndex.load(tmp_path / "idx")
    assert loaded.title("d2") == "Heart" and loaded.meta["has_embeddings"]


@pytest.mark.parametrize("similarity", ["dot", "euclidean"])
def test_similarity_follows_the_model(tiny_model, similarity):
    tiny_model.similarity_fn_name = similarity
    texts = [x for _, _, x in DOCS]
    index = build_index(tiny_model, [d for d, _, _ in DOCS], texts, precision="fp32")
    assert index.meta["similarity"] == similarity and not index.meta["normalize_embeddings"]
    q = index.encode_queries(tiny_model, ["insulin in mice"], precision="fp32")
    d = tiny_model.encode(texts)
    ref = (d @ q[0]) if similarity == "dot" else -np.linalg.norm(d - q[0], axis=1)
    scores, hits = index.search(q, len(texts))
    np.testing.assert_allclose(scores[0], np.sort(ref)[::-1], rtol=1e-4, atol=1e-4)
    ids = [d for d, _, _ in DOCS]  # each hit carries the brute-force score of that doc
    np.testing.assert_allclose(scores[0], [ref[ids.index(h)] for h in hits[0]], rtol=1e-4, atol=1e-4)


def _other_tiny_model(tiny_model_path, seed: int = 1):
    from sentence_transformers import SentenceTransformer
    import torch

    model = SentenceTransformer(tiny_model_path, device="cpu")
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return model


def test_model_index_mismatch_is_refused(tiny_model, tiny_model_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense

    index = build_index(tiny_model, ["a", "b"], ["cells", "genes"], precision="fp32")
    index.check_model(tiny_model)  # same model: fine
    index.check_model(SentenceTransformer(tiny_model_path, device="cpu"))  # same weights, reloaded: fine
    with pytest.raises(UserInputError, match="embeddings differ"):
        index.check_model(_other_tiny_model(tiny_model_path))
    shorter = SentenceTransformer(tiny_model_path, device="cpu")
    shorter.max_seq_length = 16
    with pytest.raises(UserInputError, match="max_seq_length 16"):
        index.check_model(shorter)
    smaller = SentenceTransformer(modules=[*SentenceTransformer(tiny_model_path, device="cpu"), Dense(32, 16)],
                                  device="cpu")
    with pytest.raises(UserInputError, match="dimension 16 != index 32"):
        index.check_model(smaller)
    dot = SentenceTransformer(tiny_model_path, device="cpu")
    dot.similarity_fn_name = "dot"
    with pytest.raises(UserInputError, match="similarity dot != index cosine"):
        index.check_model(dot)


def _write_corpus(path: Path, docs=DOCS, bad_line: str | None = None) -> Path:
    lines = [json.dumps({"_id": d, "title": t, "text": x}) for d, t, x in docs]
    if bad_line is not None:
        lines.insert(4, bad_line)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_index_corpus_streams_and_is_atomic(tiny_model, tmp_path):
    from dpo_retrieval.retrieval.search import index_corpus

    corpus = _write_corpus(tmp_path / "corpus.jsonl")
    out = tmp_path / "idx"
    index = index_corpus(tiny_model, out, corpus=corpus, chunk_size=3, keep_embeddings=True, precision="fp32",
                         model_name="tiny")
    assert sorted(p.name for p in out.iterdir()) == sorted([INDEX_FILE, IDS_FILE, META_FILE, EMBEDDINGS_FILE, "titles.json"])
    emb = np.load(out / EMBEDDINGS_FILE)
    assert emb.shape == (len(DOCS), 32) and index.meta["corpus"] == str(corpus.resolve())
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)

    # an interrupted build (bad line 5) leaves nothing that loads, and no temporary directory
    bad = _write_corpus(tmp_path / "bad.jsonl", bad_line="{not json")
    with pytest.raises(UserInputError, match=r"bad\.jsonl:5: invalid JSON"):
        index_corpus(tiny_model, tmp_path / "new", corpus=bad)
    assert not (tmp_path / "new").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # the old index survives a failed rebuild
    with pytest.raises(UserInputError, match="missing \"_id\""):
        index_corpus(tiny_model, out, corpus=_write_corpus(tmp_path / "noid.jsonl", bad_line='{"text": "x"}'))
    assert FaissIndex.load(out).count == len(DOCS)
    with pytest.raises(UserInputError, match="exists; set overwrite"):
        index_corpus(tiny_model, out, corpus=corpus, overwrite=False)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    with pytest.raises(UserInputError, match="not an index directory; refusing"):
        index_corpus(tiny_model, tmp_path / "notes", corpus=corpus)
    with pytest.raises(UserInputError, match="duplicate _id 'd1'"):
        index_corpus(tiny_model, tmp_path / "dup", corpus=_write_corpus(tmp_path / "dup.jsonl", docs=DOCS + DOCS[:1]))


def test_load_errors(tmp_path):
    with pytest.raises(UserInputError, match="no such index directory"):
        FaissIndex.load(tmp_path / "nope")
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserInputError, match="is a file"):
        FaissIndex.load(tmp_path / "f")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / INDEX_FILE).write_text("x")
    with pytest.raises(UserInputError, match=r"metadata\.json: missing"):
        FaissIndex.load(tmp_path / "half")


# ----------------------------------------------------------------------------------------------
# the index and search commands
def test_index_and_search_commands(tiny_model_path, tmp_path, capsys):
    import pytrec_eval

    from dpo_retrieval.cli import main
    from dpo_retrieval.evaluation.runs import read_run

    corpus = _write_corpus(tmp_path / "corpus.jsonl")
    out = tmp_path / "idx"
    assert main(["--quiet", "index", "--model", tiny_model_path, "--corpus", str(corpus), "--output", str(out),
                 "--precision", "fp32"]) == 0
    meta = json.loads((out / META_FILE).read_text())
    assert meta["model"] == str(Path(tiny_model_path).resolve()) and meta["max_seq_length"] == 256

    capsys.readouterr()
    assert main(["--quiet", "search", "--index", str(out), "--query", "insulin in mice with diabetes", "-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    titles = {d: t for d, t, _ in DOCS}
    for i, line in enumerate(lines, 1):  # rank, doc id, score, title
        rank, doc_id, score, *title = line.split()
        assert rank == str(i) and doc_id in titles and -1.0 <= float(score) <= 1.0
        assert " ".join(title) == titles[doc_id]

    queries = tmp_path / "queries.jsonl"
    queries.write_text('{"_id": "q1", "text": "sleep in infants"}\n{"_id": "q2", "text": "virus"}\n')
    assert main(["--quiet", "search", "--index", str(out), "--queries", str(queries), "-k", "4",
                 "--output", str(tmp_path / "run.trec")]) == 0
    with open(tmp_path / "run.trec") as f:
        run = pytrec_eval.parse_run(f)
    assert set(run) == {"q1", "q2"} and all(len(h) == 4 for h in run.values())
    fields = (tmp_path / "run.trec").read_text().splitlines()[0].split()
    assert fields[1] == "Q0" and fields[3] == "1" and fields[5] == "dpo-retrieval"
    assert main(["--quiet", "search", "--index", str(out), "--queries", str(queries), "-k", "4",
                 "--output", str(tmp_path / "run.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run.jsonl").read_text().splitlines()]
    assert [r["query_id"] for r in rows] == ["q1", "q2"] and rows[0]["results"][0]["rank"] == 1
    assert "title" in rows[0]["results"][0]
    from_jsonl = read_run(tmp_path / "run.jsonl")
    assert set(from_jsonl) == set(run)
    for qid in run:
        assert from_jsonl[qid] == pytest.approx(dict(run[qid]), abs=1e-5)

    # errors: one line, exit 2
    capsys.readouterr()
    assert main(["search", "--index", str(tmp_path / "nope"), "--query", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dpo-retrieval search: error:") and "no such index directory" in err and "\n" not in err
    assert main(["search", "--index", str(out), "--queries", str(corpus.parent), "--output", str(tmp_path / "r.trec")]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main(["index", "--model", tiny_model_path, "--corpus", str(corpus), "--output", str(out),
                 "--factory", "IVF4096,Flat", "--overwrite"]) == 2
    assert "needs at least 4096 documents" in capsys.readouterr().err
    assert FaissIndex.load(out).factory == "Flat"


def test_search_refuses_another_model(tiny_model_path, tmp_path, capsys):
    from dpo_retrieval.cli import main

    corpus = _write_corpus(tmp_path / "corpus.jsonl")
    out = tmp_path / "idx"
    assert main(["--quiet", "index", "--model", tiny_model_path, "--corpus", str(corpus), "--output", str(out)]) == 0
    other = tmp_path / "other"
    _other_tiny_model(tiny_model_path).save(str(other))
    capsys.readouterr()
    assert main(["search", "--index", str(out), "--model", str(other), "--query", "cells"]) == 2
    assert "does not match the index" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# index_corpus from a BEIR dataset name
def test_index_a_dataset_by_name(tiny_model, data_root, tmp_path):
    from test_beir import CORPUS

    from dpo_retrieval.retrieval import search as search_mod

    index = search_mod.index_corpus(tiny_model, tmp_path / "idx", dataset="toy", precision="fp32")
    assert index.count == len(CORPUS) and index.title("d2") == "Heart"
    assert index.meta["corpus"] == str((data_root / "toy" / "corpus.jsonl").resolve())
    with pytest.raises(UserInputError, match="exactly one of corpus or dataset"):
        search_mod.index_corpus(tiny_model, tmp_path / "idx2")
