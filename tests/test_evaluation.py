"""BEIR dataset resolution and loading, metrics against hand-computed values, the evaluate pipeline
and command, and the real-data anchor's code path on a SciFact subset."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from dpo_retrieval.data import beir as beir_mod
from dpo_retrieval.evaluation import evaluate as evaluate_mod
from dpo_retrieval.evaluation import metrics as metrics_mod
from dpo_retrieval.evaluation import runs as runs_mod
from dpo_retrieval.retrieval import search as search_mod
from dpo_retrieval.errors import UserInputError

CORPUS = {
    "d1": ("Insulin", "insulin response in mice with diabetes"),
    "d2": ("Heart", "heart disease risk is increased by high blood pressure"),
    "d3": ("Sleep", "sleep in children and infants"),
    "d4": ("", "tumor growth signal pathway in cancer cells"),
    "d5": ("Virus", "virus infection and the immune response"),
    "d6": ("Vitamin", "vitamin levels in women and men"),
}
QUERIES = {"q1": "insulin in mice", "q2": "what causes heart disease", "q3": "virus infection", "q9": "unjudged"}
QRELS = [("q1", "d1", 1), ("q2", "d2", 2), ("q2", "d6", 1), ("q3", "d5", 1)]


def make_dataset(root: Path, *, corpus_lines: list[str] | None = None, query_lines: list[str] | None = None,
                 qrels: list[tuple] | None = None, split: str = "test") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if corpus_lines is None:
        corpus_lines = [json.dumps({"_id": d, "title": t, "text": x}) for d, (t, x) in CORPUS.items()]
    if query_lines is None:
        query_lines = [json.dumps({"_id": q, "text": t}) for q, t in QUERIES.items()]
    (root / "corpus.jsonl").write_text("\n".join(corpus_lines) + "\n")
    (root / "queries.jsonl").write_text("\n".join(query_lines) + "\n")
    (root / "qrels").mkdir(exist_ok=True)
    rows = ["query-id\tcorpus-id\tscore"] + ["\t".join(map(str, r)) for r in (qrels if qrels is not None else QRELS)]
    (root / "qrels" / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture()
def data_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "data"
    monkeypatch.setenv(beir_mod.DATA_ENV, str(root))
    make_dataset(root / "toy")
    return root


# ----------------------------------------------------------------------------------------------
# resolution
def test_name_resolves_under_data_root(data_root):
    assert beir_mod.dataset_dir("toy") == data_root / "toy"
    ds = beir_mod.load_beir("toy")
    assert ds.name == "toy" and ds.path == data_root / "toy" and ds.split == "test"
    assert ds.doc_ids == list(CORPUS) and set(ds.queries) == {"q1", "q2", "q3"}  # judged queries only
    assert ds.qrels["q2"] == {"d2": 2, "d6": 1}
    assert list(ds.doc_texts())[:4] == ["Insulin insulin response in mice with diabetes",
                                        "Heart heart disease risk is increased by high blood pressure",
                                        "Sleep sleep in children and infants", "tumor growth signal pathway in cancer cells"]


def test_default_root(monkeypatch):
    monkeypatch.delenv(beir_mod.DATA_ENV, raising=False)
    assert beir_mod.data_root() == Path("~/.cache/dpo_retrieval/datasets").expanduser()


def test_path_is_used_as_is(tmp_path, monkeypatch, data_root):
    make_dataset(tmp_path / "elsewhere" / "mine")
    assert beir_mod.load_beir(str(tmp_path / "elsewhere" / "mine")).name == "mine"
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert beir_mod.resolve_dataset("./mine") == Path("mine")
    with pytest.raises(UserInputError, match="no such dataset directory"):
        beir_mod.resolve_dataset("./absent")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserInputError, match="is a file"):
        beir_mod.resolve_dataset(str(tmp_path / "afile"))


def test_unknown_name_says_which_folder(data_root):
    with pytest.raises(UserInputError) as err:
        beir_mod.load_beir("no-such-set")
    msg = str(err.value)
    assert str(data_root / "no-such-set") in msg and "not a BEIR dataset name" in msg and "\n" not in msg


def test_offline_beir_name_says_which_folder(data_root, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserInputError) as err:
        beir_mod.load_beir("nfcorpus")
    msg = str(err.value)
    assert "offline" in msg and f"create {data_root / 'nfcorpus'}" in msg and beir_mod.DATA_ENV in msg


def _online(monkeypatch, download=None):
    """No offline switches, and BEIR's downloader replaced by ``download`` (None: it is missing)."""
    import sys
    import types

    import beir

    for var in beir_mod.OFFLINE_ENVS:
        monkeypatch.delenv(var, raising=False)
    fake = types.ModuleType("beir.util")  # beir.util itself needs requests, absent in some installs
    if download is not None:
        fake.download_and_unzip = download
        monkeypatch.setitem(sys.modules, "beir.util", fake)
        monkeypatch.setattr(beir, "util", fake, raising=False)
    else:
        monkeypatch.setitem(sys.modules, "beir.util", None)  # import fails
        monkeypatch.delattr(beir, "util", raising=False)


def test_download_with_beirs_downloader(data_root, monkeypatch):
    calls = []

    def fake_download(url, out_dir, chunk_size=1024):
        calls.append(url)
        return str(make_dataset(Path(out_dir) / "nfcorpus"))

    _online(monkeypatch, fake_download)
    ds = beir_mod.load_beir("nfcorpus")
    assert calls == [beir_mod.BEIR_URL.format(name="nfcorpus")] and ds.path == data_root / "nfcorpus"
    assert sorted(p.name for p in data_root.iterdir()) == ["nfcorpus", "toy"]  # no temporary folders left
    beir_mod.load_beir("nfcorpus")
    assert len(calls) == 1  # present now: no second download


def test_failed_download_says_which_folder(data_root, monkeypatch):
    def fail(url, out_dir, chunk_size=1024):
        raise ConnectionError("Name or service not known")

    _online(monkeypatch, fail)
    with pytest.raises(UserInputError, match=r"cannot download 'scifact' \(ConnectionError") as err:
        beir_mod.load_beir("scifact")
    assert f"create {data_root / 'scifact'}" in str(err.value)
    assert sorted(p.name for p in data_root.iterdir()) == ["toy"]


def test_missing_downloader_says_which_folder(data_root, monkeypatch):
    _online(monkeypatch, None)
    with pytest.raises(UserInputError, match="BEIR's downloader cannot run") as err:
        beir_mod.load_beir("scifact")
    assert f"create {data_root / 'scifact'}" in str(err.value)


# ----------------------------------------------------------------------------------------------
# bad files: file:line errors
def test_missing_split_lists_the_others(data_root):
    with pytest.raises(UserInputError, match=r"test\.tsv.*no 'dev' split|dev\.tsv: no 'dev' split; this dataset has: test"):
        beir_mod.load_beir("toy", "dev")


@pytest.mark.parametrize("kind, expect", [
    ("bad_json", r"corpus\.jsonl:3: invalid JSON"),
    ("no_id", r"corpus\.jsonl:2: missing \"_id\""),
    ("dup_id", r"corpus\.jsonl:7: duplicate _id 'd1'"),
    ("query_no_id", r"queries\.jsonl:2: missing \"_id\""),
    ("unknown_doc", r"test\.tsv:3: corpus-id 'd404' is not in the corpus"),
    ("unknown_query", r"test\.tsv:2: query-id 'q404' is not in queries\.jsonl"),
    ("bad_score", r"test\.tsv:2: score 'high' is not an integer"),
    ("corpus_dir", r"corpus\.jsonl: is a directory"),
])
def test_bad_dataset_files(tmp_path, kind, expect):
    corpus = [json.dumps({"_id": d, "title": t, "text": x}) for d, (t, x) in CORPUS.items()]
    queries = [json.dumps({"_id": q, "text": t}) for q, t in QUERIES.items()]
    qrels = list(QRELS)
    if kind == "bad_json":
        corpus[2] = '{"_id": "d3", "text": '
    elif kind == "no_id":
        corpus[1] = json.dumps({"title": "x", "text": "y"})
    elif kind == "dup_id":
        corpus.append(corpus[0])
    elif kind == "query_no_id":
        queries[1] = json.dumps({"text": "y"})
    elif kind == "unknown_doc":
        qrels[1] = ("q2", "d404", 1)
    elif kind == "unknown_query":
        qrels[0] = ("q404", "d1", 1)
    elif kind == "bad_score":
        qrels[0] = ("q1", "d1", "high")
    root = make_dataset(tmp_path / "bad", corpus_lines=corpus, query_lines=queries, qrels=qrels)
    if kind == "corpus_dir":
        (root / "corpus.jsonl").unlink()
        (root / "corpus.jsonl").mkdir()
    with pytest.raises(UserInputError, match=expect) as err:
        beir_mod.load_beir(str(root))
    assert "\n" not in str(err.value)


def test_blank_lines_are_tolerated(tmp_path):
    corpus = [json.dumps({"_id": d, "title": t, "text": x}) for d, (t, x) in CORPUS.items()]
    root = make_dataset(tmp_path / "blank", corpus_lines=corpus[:3] + [""] + corpus[3:])
    assert beir_mod.load_beir(str(root)).doc_ids == list(CORPUS)


# ----------------------------------------------------------------------------------------------
# metrics
TOY_QRELS = {"q1": {"a": 1, "b": 1}, "q2": {"c": 2, "d": 1}}
TOY_RUN = {"q1": {"x": 0.9, "a": 0.8, "y": 0.7, "b": 0.6, "q1": 5.0},  # "q1" is a self-hit, ignored
           "q2": {"c": 0.9, "z": 0.5}}


def test_metrics_match_hand_computed():
    m = metrics_mod.evaluate_run(TOY_QRELS, TOY_RUN, [1, 3, 10])
    lg = math.log2
    # q1: relevant at ranks 2 and 4; q2: grade-2 doc at rank 1, the grade-1 doc never retrieved
    ndcg_q1 = (1 / lg(3) + 1 / lg(5)) / (1 + 1 / lg(3))
    ndcg_q2 = (2 / lg(2)) / (2 + 1 / lg(3))
    assert m["ndcg@10"] == pytest.approx((ndcg_q1 + ndcg_q2) / 2, abs=1e-5)
    assert m["ndcg@1"] == pytest.approx((0 + 2 / 2) / 2, abs=1e-5)
    assert m["recall@1"] == pytest.approx((0 + 0.5) / 2)
    assert m["recall@3"] == pytest.approx((0.5 + 0.5) / 2)
    assert m["recall@10"] == pytest.approx((1.0 + 0.5) / 2)
    assert m["mrr@10"] == pytest.approx((1 / 2 + 1) / 2)
    assert m["map@10"] == pytest.approx(((1 / 2 + 2 / 4) / 2 + (1 / 1) / 2) / 2)
    assert m["p@3"] == pytest.approx((1 / 3 + 1 / 3) / 2, abs=1e-5)
    assert "q1" in TOY_RUN["q1"]  # inputs untouched

    per_q = metrics_mod.per_query_metrics(TOY_QRELS, TOY_RUN, [1, 3, 10])
    assert per_q["q1"]["ndcg@10"] == pytest.approx(ndcg_q1, abs=1e-6)
    assert per_q["q2"]["ndcg@10"] == pytest.approx(ndcg_q2, abs=1e-6)
    assert per_q["q1"]["mrr@10"] == pytest.approx(0.5) and per_q["q2"]["recall@10"] == pytest.approx(0.5)
    for key in ("ndcg@10", "recall@3", "map@10", "mrr@10"):
        assert np.mean([v[key] for v in per_q.values()]) == pytest.approx(m[key], abs=1e-5)


def test_self_hits_count_when_asked():
    with_self = metrics_mod.evaluate_run({"q1": {"q1": 1}}, {"q1": {"q1": 1.0, "x": 0.5}}, [10], ignore_identical_ids=False)
    without = metrics_mod.evaluate_run({"q1": {"q1": 1}}, {"q1": {"q1": 1.0, "x": 0.5}}, [10])
    assert with_self["ndcg@10"] == pytest.approx(1.0) and without["ndcg@10"] == 0.0


def test_run_files_roundtrip_atomically(tmp_path):
    import pytrec_eval

    run = {"q1": {"a": 0.5, "b": 0.9}, "q2": {"c": -1.25}}
    runs_mod.write_run(run, tmp_path / "r.trec")
    assert (tmp_path / "r.trec").read_text().splitlines()[0] == "q1 Q0 b 1 0.900000 dpo-retrieval"
    with open(tmp_path / "r.trec") as f:
        assert pytrec_eval.parse_run(f) == run
    runs_mod.write_run(run, tmp_path / "r.jsonl")
    assert runs_mod.read_run(tmp_path / "r.jsonl") == run and runs_mod.read_run(tmp_path / "r.trec") == run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl", "r.trec"]
    with pytest.raises(UserInputError, match="is a directory"):
        runs_mod.write_run(run, tmp_path)
    with pytest.raises(UserInputError, match="whitespace"):
        runs_mod.write_run({"q 1": {"a": 1.0}}, tmp_path / "x.trec")
    (tmp_path / "bad.jsonl").write_text('{"query_id": "q1", "results": []}\nnot json\n')
    with pytest.raises(UserInputError, match=r"bad\.jsonl:2"):
        runs_mod.read_run(tmp_path / "bad.jsonl")


# ----------------------------------------------------------------------------------------------
# the pipeline and the command
def test_evaluate_model_caches_and_reuses(tiny_model, data_root, tmp_path):
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


def test_index_a_dataset_by_name(tiny_model, data_root, tmp_path):
    index = search_mod.index_corpus(tiny_model, tmp_path / "idx", dataset="toy", precision="fp32")
    assert index.count == len(CORPUS) and index.title("d2") == "Heart"
    assert index.meta["corpus"] == str((data_root / "toy" / "corpus.jsonl").resolve())
    with pytest.raises(UserInputError, match="exactly one of corpus or dataset"):
        search_mod.index_corpus(tiny_model, tmp_path / "idx2")


def test_load_beir_reads_a_clean_dataset_with_beirs_loader(tmp_path, monkeypatch):
    """A clean dataset is read once by BEIR's GenericDataLoader; the line-by-line diagnosis is for bad files
    (stage A moved the loader's log filter away from the reader, so every load fell back to the slow path)."""
    make_dataset(tmp_path / "toy")
    monkeypatch.setattr(beir_mod, "_diagnose", lambda *a, **k: pytest.fail("re-read line by line"))
    ds = beir_mod.load_beir(str(tmp_path / "toy"), "test")
    assert ds.qrels and ds.corpus
