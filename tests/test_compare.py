"""`dpo-retrieval compare` end to end on a tiny BEIR-format dataset with the tiny BERT, and stage skipping."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from dpo_retrieval.cli import main
from dpo_retrieval.errors import UserInputError
from dpo_retrieval.experiment.compare import Stage, fingerprint

TOPICS = ["cancer", "sleep", "insulin", "virus", "brain", "heart", "vitamin", "diabetes", "infants", "tumor",
          "immune", "blood", "fiber", "water", "rna", "dna", "mice", "drug", "dose", "gene"]


def write_tiny_beir(root: Path, *, seed: int = 0, with_train: bool = True, test_duplicate: bool = False) -> Path:
    """20 topics, 2 docs each; queries q0..q19, a third of them test. ``test_duplicate`` adds train query
    ``qdup`` whose text is test query q0's (in other case and spacing): a verbatim test leak."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    (root / "qrels").mkdir()
    docs, queries, train, test = [], [], [], []
    for i, topic in enumerate(TOPICS):
        for j in range(2):
            other = rng.choice(TOPICS)
            docs.append({"_id": f"d{i}-{j}", "title": f"{topic} study", "text": f"the {topic} effect on {other} cells"})
        q = {"_id": f"q{i}", "text": f"what is the {topic} effect"}
        queries.append(q)
        (train if i % 3 else test).append((q["_id"], f"d{i}-0"))
    if test_duplicate:
        queries.append({"_id": "qdup", "text": "  What is the CANCER effect "})
        train.append(("qdup", "d0-1"))
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    for split, rows in (("train", train), ("test", test)):
        if split == "train" and not with_train:
            continue
        (root / "qrels" / f"{split}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in rows))
    return root


def compare_args(tiny_model_path, data: Path, out: Path, *extra):
    return ["--quiet", "compare", "--dataset", str(data), "--output", str(out), "--model", tiny_model_path,
            "--max-triplets", "10", "--batch-size", "4", "--train-max-seq-length", "32", "--eval-max-seq-length", "32",
            "--precision", "fp32", "--top-k", "20", "--rank-window", "2-12", "--dev-fraction", "0.2", *extra]


def test_compare_end_to_end_then_skips_every_stage(tmp_path, tiny_model_path, capsys):
    data = write_tiny_beir(tmp_path / "tiny")
    ood = write_tiny_beir(tmp_path / "other", seed=1)
    out = tmp_path / "run"
    assert main(compare_args(tiny_model_path, data, out, "--eval-datasets", str(ood))) == 0
    printed = capsys.readouterr().out
    assert "| base" in printed and "dpo+mnrl" in printed and "contrastive" in printed

    report = json.loads((out / "report.json").read_text())
    assert set(report["datasets"]) == {"tiny", "tiny-dev", "other"}
    for name, ds in report["datasets"].items():
        assert [r["model"] for r in ds["rows"]] == ["base", "dpo+mnrl", "contrastive"], name  # the default losses
        for row in ds["rows"]:
            assert {"NDCG@10", "Recall@100", "MAP@100", "MRR@10", "train_time_s", "eval_time_s"} <= set(row)
            assert 0.0 <= row["NDCG@10"] <= 1.0
        pairs = {(c["a"], c["b"]) for c in ds["comparisons"]}
        assert {("dpo+mnrl", "base"), ("contrastive", "base"), ("dpo+mnrl", "contrastive")} <= pairs
    assert (out / "report.md").read_text().count("| base") >= 3
    assert (out / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    mining = json.loads((out / "mine" / "mining.json").read_text())
    assert mining["train_queries"] + mining["dev_queries"] == 13 and mining["dev_queries"] == 3
    # never one of the query's own judged documents as a negative
    queries = {json.loads(l)["text"]: json.loads(l)["_id"] for l in (data / "queries.jsonl").read_text().splitlines()}
    qrels = {l.split("\t")[0]: l.split("\t")[1] for l in (data / "qrels" / "train.tsv").read_text().splitlines()[1:]}
    corpus = {json.loads(l)["_id"]: json.loads(l) for l in (data / "corpus.jsonl").read_text().splitlines()}
    triplets = [json.loads(l) for l in (out / "mine" / "triplets.jsonl").read_text().splitlines()]
    assert triplets
    for t in triplets:
        judged = corpus[qrels[queries[t["anchor"]]]]
        assert t["positive"] == f"{judged['title']} {judged['text']}" != t["negative_1"]

    # a finished training keeps its model, not its checkpoints (the trainer saves one at the last step)
    assert not [p for p in (out / "models").glob("*/checkpoints")]
    # Re-run: every stage is up to date, nothing is retrained or re-encoded.
    model_file = out / "models" / "dpo+mnrl" / "model.safetensors"
    before = {p: p.stat().st_mtime_ns for p in [model_file, *out.glob("eval/*/*.json"), *out.glob("embeddings/*/*.npy")]}
    assert main(compare_args(tiny_model_path, data, out, "--eval-datasets", str(ood))) == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before

    # A moved run directory is still up to date (no stage key holds a path inside the run).
    moved = tmp_path / "moved"
    out.rename(moved)
    before = {moved / p.relative_to(out): t for p, t in before.items()}
    out, model_file = moved, moved / model_file.relative_to(out)
    assert main(compare_args(tiny_model_path, data, out, "--eval-datasets", str(ood))) == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before

    # Changing a training setting retrains the losses but keeps the mined triplets and base evaluation.
    triplets_mtime = (out / "mine" / "triplets.jsonl").stat().st_mtime_ns
    base_eval = out / "eval" / "base" / "tiny.json"
    base_mtime = base_eval.stat().st_mtime_ns
    assert main(compare_args(tiny_model_path, data, out, "--eval-datasets", str(ood), "--lr", "3e-4")) == 0
    assert (out / "mine" / "triplets.jsonl").stat().st_mtime_ns == triplets_mtime
    assert base_eval.stat().st_mtime_ns == base_mtime
    assert model_file.stat().st_mtime_ns != before[model_file]


def test_compare_bad_dataset_fails_before_writing(tmp_path, tiny_model_path, capsys):
    data = write_tiny_beir(tmp_path / "notrain", with_train=False)
    out = tmp_path / "run"
    assert main(compare_args(tiny_model_path, data, out)) == 2
    err = capsys.readouterr().err
    assert "train" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_compare_refuses_a_run_directory_another_compare_holds(tmp_path, tiny_model_path, capsys):
    from dpo_retrieval._io import hold_lock

    data = write_tiny_beir(tmp_path / "tiny")
    out = tmp_path / "run"
    out.mkdir()
    with hold_lock(out / "compare.lock", what="a compare"):  # another open file: flock conflicts as across processes
        assert main(compare_args(tiny_model_path, data, out)) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the datasets' loading bars
    assert "already running" in last and str(out) in last
    assert sorted(p.name for p in out.iterdir()) == ["compare.lock"]  # nothing written beside the lock
    # a lock file left by a killed run holds nothing: the next one takes it
    with hold_lock(out / "compare.lock"):
        pass


@pytest.mark.parametrize("code", ["ENOLCK", "EACCES"])
def test_a_filesystem_without_locks_runs_unlocked_and_other_lock_errors_are_one_line(code, tmp_path, monkeypatch,
                                                                                      caplog):
    import errno
    import fcntl

    from dpo_retrieval._io import hold_lock

    def flock(fd, op):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(fcntl, "flock", flock)
    ran = []
    if code == "ENOLCK":  # NFS without lockd and the like: the work runs, with a warning
        with hold_lock(tmp_path / "compare.lock"):
            ran.append(True)
        assert ran and "cannot lock" in caplog.text
    else:
        with pytest.raises(UserInputError, match="compare.lock: cannot lock"), hold_lock(tmp_path / "compare.lock"):
            ran.append(True)
        assert not ran


def test_dataset_stamp_is_the_files_content_not_their_mtime(tmp_path):
    import os

    from dpo_retrieval.experiment.stages import _dataset_stamp

    data = write_tiny_beir(tmp_path / "tiny")
    memo = tmp_path / "file_hashes.json"
    before = _dataset_stamp(data, memo)
    assert set(before) == {"corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/test.tsv"}
    corpus = data / "corpus.jsonl"
    os.utime(corpus, ns=(corpus.stat().st_atime_ns, corpus.stat().st_mtime_ns + 10**9))  # re-copied, unchanged
    assert _dataset_stamp(data, memo) == before
    corpus.write_text(corpus.read_text().replace("cancer", "tumour", 1))
    after = _dataset_stamp(data, memo)
    assert after["corpus.jsonl"] != before["corpus.jsonl"] and after["queries.jsonl"] == before["queries.jsonl"]


def test_stage_records_hash_and_status(tmp_path):
    stage = Stage(tmp_path / "x.stage.json", {"a": 1})
    assert not stage.done() and not stage.started_same()
    stage.start()
    assert stage.started_same() and not stage.done()
    stage.finish(rows=3)
    assert stage.done() and stage.info()["rows"] == 3
    assert not Stage(tmp_path / "x.stage.json", {"a": 2}).done()
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})


def _mtimes(paths):
    return {p: p.stat().st_mtime_ns for p in paths}


def test_compare_reencodes_exactly_the_retrained_model(tmp_path, tiny_model_path):
    """Issue 10: a setting that changes only the DPO model (label smoothing) retrains DPO and re-encodes
    its corpus, while the base's and contrastive's embeddings and evaluations are reused. A low learning
    rate keeps the two DPO models close, so a check that only compares a probe sentence's embedding
    (within 2e-3) cannot tell them apart and would reuse the stale embeddings."""
    import numpy as np

    data = write_tiny_beir(tmp_path / "tiny", test_duplicate=True)
    out = tmp_path / "run"
    args = compare_args(tiny_model_path, data, out, "--lr", "1e-6", "--losses", "dpo,contrastive")
    assert main(args) == 0
    emb = {name: out / "embeddings" / name / "tiny.npy" for name in ("base", "dpo", "contrastive")}
    evals = {name: out / "eval" / name / "tiny.json" for name in ("base", "dpo", "contrastive")}
    assert all(p.exists() for p in [*emb.values(), *evals.values()])
    meta = json.loads(Path(str(emb["dpo"]) + ".json").read_text())
    assert {"model", "precision", "texts", "version"} <= set(meta["key"]) and meta["key"]["precision"] == "fp32"
    old_dpo = np.load(emb["dpo"]).copy()
    old_dpo_eval = json.loads(evals["dpo"].read_text())
    kept = _mtimes([emb["base"], emb["contrastive"], evals["base"], evals["contrastive"],
                    out / "mine" / "triplets.jsonl", out / "models" / "contrastive" / "model.safetensors"])
    dpo_before = _mtimes([emb["dpo"], evals["dpo"], out / "models" / "dpo" / "model.safetensors"])

    assert main([*args, "--label-smoothing", "0.01"]) == 0
    assert _mtimes(kept) == kept, "base/contrastive/mining were redone"
    changed = [p.name for p, t in dpo_before.items() if p.stat().st_mtime_ns == t]
    assert not changed, f"not redone for dpo: {changed}"
    new_dpo = np.load(emb["dpo"])
    assert not np.array_equal(new_dpo, old_dpo), "the dpo corpus embeddings were reused from the first model"
    new_dpo_eval = json.loads(evals["dpo"].read_text())
    assert new_dpo_eval["encoding_key"] != old_dpo_eval["encoding_key"]

    # the verbatim test query in the train split (qdup = q0) is never trained on, nor is any dev query
    mining = json.loads((out / "mine" / "mining.json").read_text())
    assert mining["dropped_test_overlap"] == {"count": 1, "query_ids": ["qdup"]}
    queries = {json.loads(l)["_id"]: json.loads(l)["text"] for l in (data / "queries.jsonl").read_text().splitlines()}
    dev = {queries[l.split("\t")[0]] for l in (out / "mine" / "dev_qrels.tsv").read_text().splitlines()[1:]}
    test = {queries[l.split("\t")[0]] for l in (data / "qrels" / "test.tsv").read_text().splitlines()[1:]}
    norm = lambda t: t.strip().casefold()  # noqa: E731
    for name in ("mine/triplets.jsonl", "train_triplets.jsonl"):
        anchors = {json.loads(l)["anchor"] for l in (out / name).read_text().splitlines()}
        assert anchors and not {norm(a) for a in anchors} & {norm(t) for t in dev | test}, name


BAD_TRAINING_OPTIONS = [
    (["--warmup", "-1"], "--warmup"), (["--beta", "-1"], "--beta"), (["--lr", "0"], "--lr"),
    (["--label-smoothing", "0.7"], "--label-smoothing"), (["--batch-size", "0"], "--batch-size"),
    (["--epochs", "0"], "--epochs"), (["--precision", "fp16", "--device", "cpu"], "--precision"),
]


@pytest.mark.parametrize("extra, option", BAD_TRAINING_OPTIONS, ids=[o for _, o in BAD_TRAINING_OPTIONS])
def test_compare_bad_training_option_fails_before_anything(extra, option, tmp_path, tiny_model_path, capsys,
                                                           monkeypatch):
    import dpo_retrieval.data.beir
    import dpo_retrieval.mining

    def boom(*a, **k):
        raise AssertionError("reached a dataset or mining before checking the training options")

    monkeypatch.setattr(dpo_retrieval.mining, "mine", boom)
    monkeypatch.setattr(dpo_retrieval.data.beir, "load_beir", boom)
    data = write_tiny_beir(tmp_path / "tiny")
    out = tmp_path / "run"
    try:
        code = main(compare_args(tiny_model_path, data, out, *extra))
    except SystemExit as exc:  # argparse's own checks
        code = exc.code
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and option in err[0], err
    assert not out.exists()


BAD_PYTHON_OPTIONS = [({"dpo": {"beta": -1.0}}, "beta"), ({"learning_rate": 0.0}, "learning_rate"),
                      ({"dpo": {"label_smoothing": 0.7}}, "label_smoothing"),
                      ({"per_device_train_batch_size": 0}, "per_device_train_batch_size"),
                      ({"warmup_steps": -1.0}, "warmup_steps"), ({"num_train_epochs": 0.0}, "num_train_epochs"),
                      ({"top_k": 0}, "top_k"), ({"eval_batch_size": 0}, "eval_batch_size"),
                      ({"mining": {"negatives": 0}}, "negatives"), ({"losses": "dpo,triplet"}, "losses"),
                      ({"seeds": [1, 1]}, "seeds"), ({"seeds": ["1", "x"]}, "seeds"), ({"seeds": "2,2"}, "seeds")]


@pytest.mark.parametrize("bad, field", BAD_PYTHON_OPTIONS, ids=[f for _, f in BAD_PYTHON_OPTIONS])
def test_run_compare_checks_training_options_first(bad, field, tmp_path, tiny_model_path, monkeypatch):
    """CompareArgs checks every option when made (as the CLI does), naming the field."""
    import dpo_retrieval.data.beir
    import dpo_retrieval.mining
    from dpo_retrieval.errors import UserInputError
    from dpo_retrieval.experiment.compare import CompareArgs, run_compare
    from dpo_retrieval.mining import MineArgs
    from dpo_retrieval.training import DPOArgs

    def boom(*a, **k):
        raise AssertionError("reached a dataset or mining before checking the training options")

    monkeypatch.setattr(dpo_retrieval.mining, "mine", boom)
    monkeypatch.setattr(dpo_retrieval.data.beir, "load_beir", boom)
    out = tmp_path / "run"
    with pytest.raises(UserInputError, match=rf"^{field}: "):
        kw = {k: {"dpo": DPOArgs, "mining": MineArgs}[k](**v) if k in ("dpo", "mining") else v for k, v in bad.items()}
        run_compare(CompareArgs(dataset=str(tmp_path / "tiny"), output=str(out), model=tiny_model_path, **kw))
    assert not out.exists()


def test_model_id_is_the_weights_content_not_the_path(tmp_path, tiny_model_path):
    import shutil

    from dpo_retrieval.retrieval import cache as cache_mod

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_path, copy)
    (copy / "checkpoints" / "checkpoint-2").mkdir(parents=True)  # a trained model's leftovers do not count
    (copy / "checkpoints" / "checkpoint-2" / "model.safetensors").write_bytes(b"x")
    (copy / "train_log.jsonl").write_text("{}\n")
    memo = tmp_path / "hashes.json"
    cache_mod._FILE_DIGESTS.clear()  # as in a new process: the memo file is what remembers
    first = cache_mod.model_id(tiny_model_path, memo_file=memo)
    assert first.startswith("files:") and cache_mod.model_id(copy) == first
    assert len(json.loads(memo.read_text())) >= 5  # one remembered hash per file, keyed by path, size and mtime
    cache_mod._FILE_DIGESTS.clear()
    memo_mtime = memo.stat().st_mtime_ns
    assert cache_mod.model_id(tiny_model_path, memo_file=memo) == first and memo.stat().st_mtime_ns == memo_mtime
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert cache_mod.model_id(copy) != first
    assert cache_mod.model_id("no-such-model") == "name:no-such-model"


def test_embeddings_cache_key_holds_model_precision_texts_and_version(tmp_path, tiny_model, monkeypatch):
    from dpo_retrieval.data import beir as beir_mod
    from dpo_retrieval.evaluation import evaluate as evaluate_mod
    from dpo_retrieval.retrieval import cache as cache_mod

    data = write_tiny_beir(tmp_path / "tiny")
    ds = beir_mod.load_beir(str(data), "test")
    cache = tmp_path / "emb.npy"

    def encoded(dataset=ds, **kw) -> bool:
        args = dict(top_k=5, precision="fp32", embeddings_cache=cache, model_key="A", show_progress_bar=False)
        return evaluate_mod.evaluate_model(tiny_model, dataset, **{**args, **kw})["timings"]["encode_corpus_s"] > 0

    assert encoded() and not encoded()
    assert encoded(model_key="B") and not encoded(model_key="B")
    assert encoded(model_key="A", precision="bf16") and not encoded(precision="bf16")
    edited = beir_mod.load_beir(str(data), "test")
    edited.corpus["d0-0"] = {"title": "cancer study", "text": "an edited text, same doc ids"}
    assert encoded(edited) and not encoded(edited)
    monkeypatch.setattr(cache_mod, "package_version", lambda: "999")
    assert encoded(edited)
    meta = json.loads(Path(str(cache) + ".json").read_text())
    assert meta["key"] == cache_mod.encoding_key("A", "fp32", cache_mod.corpus_digest(edited), backend="torch") \
        and meta["key"]["version"] == "999"


def _load_compare_runs():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "compare_runs.py"
    spec = importlib.util.spec_from_file_location("compare_runs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_with_several_training_seeds(tmp_path, tiny_model_path):
    """Issue 11: ``seeds`` trains each loss once per seed on the same mined triplets; the first run's
    single-seed models (its --seed) are reused as one of the seeds, every other seed gets <loss>-seed<k>;
    the report has mean ± std over seeds; a second run skips every stage; compare_runs averages seeds."""
    import dataclasses

    from dpo_retrieval.experiment.compare import CompareArgs, run_compare
    from dpo_retrieval.mining import MineArgs

    data = write_tiny_beir(tmp_path / "tiny")
    out = tmp_path / "run"
    cfg = CompareArgs(dataset=str(data), output=str(out), model=tiny_model_path, max_triplets=10,
                      per_device_train_batch_size=4, train_max_seq_length=32, eval_max_seq_length=32, precision="fp32",
                      top_k=20, seed=1, mining=MineArgs(rank_min=2, rank_max=12, dev_fraction=0.2),
                      show_progress_bar=False, losses=["dpo", "contrastive"])
    run_compare(cfg)  # a single-seed run (seeds default to (seed,)): models/<loss>/ as before
    assert not list((out / "models").glob("*-seed*"))
    single = json.loads((out / "report.json").read_text())["datasets"]["tiny"]["rows"]
    kept = _mtimes([out / "mine" / "triplets.jsonl", out / "train_triplets.jsonl",
                    *[out / "models" / loss / "model.safetensors" for loss in ("dpo", "contrastive")],
                    *out.glob("eval/*/*.json"), *out.glob("embeddings/*/*.npy")])

    multi = dataclasses.replace(cfg, seeds=[1, 2])
    run_compare(multi)
    assert _mtimes(kept) == kept, "mining or the seed-1 models were redone"
    for loss in ("dpo", "contrastive"):
        stages = {k: json.loads((out / "models" / f"{name}.stage.json").read_text())
                  for k, name in ((1, loss), (2, f"{loss}-seed2"))}
        assert {k: st["key"]["train"]["seed"] for k, st in stages.items()} == {1: 1, 2: 2}
        assert stages[1]["key"]["encoding"] == stages[2]["key"]["encoding"]  # same base and triplets
        weights = [(out / "models" / name / "model.safetensors").read_bytes() for name in (loss, f"{loss}-seed2")]
        assert weights[0] != weights[1], f"{loss}: the two seeds trained the same model"
        assert (out / "eval" / f"{loss}-seed2" / "tiny.json").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["seeds"] == [1, 2] and report["holm_family"].startswith("all comparisons")
    for name, ds in report["datasets"].items():
        rows = {r["model"]: r for r in ds["rows"]}
        assert list(rows) == ["base", "dpo", "contrastive"], name
        for loss in ("dpo", "contrastive"):
            r = rows[loss]
            assert r["seeds"] == [1, 2] and set(r["per_seed"]) == {"1", "2"}
            assert r["std"]["NDCG@10"] is not None and r["std"]["NDCG@10"] >= 0
            seed_values = [r["per_seed"][s]["NDCG@10"] for s in ("1", "2")]
            assert r["NDCG@10"] == pytest.approx(sum(seed_values) / 2)
            assert 0.0 <= r["harm_rate"] <= 1.0
        assert rows["base"]["std"]["NDCG@10"] is None
    tiny = {r["model"]: r for r in report["datasets"]["tiny"]["rows"]}
    assert tiny["dpo"]["per_seed"]["1"]["NDCG@10"] == pytest.approx(
        next(r for r in single if r["model"] == "dpo")["NDCG@10"])
    md = (out / "report.md").read_text()
    assert "training seeds 1, 2" in md and " ± " in md
    assert (out / "forest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a second run skips every stage: nothing trained, encoded or evaluated again
    done = _mtimes([*out.glob("models/*/model.safetensors"), *out.glob("models/*.stage.json"),
                    *out.glob("eval/*/*.json"), *out.glob("embeddings/*/*.npy"), out / "mine" / "triplets.jsonl"])
    assert len(list(out.glob("models/*/model.safetensors"))) == 4
    run_compare(multi)
    assert _mtimes(done) == done

    # compare_runs on the run against itself: one row per loss and eval set, seeds averaged, no difference
    rows = _load_compare_runs().compare_runs(out, out)
    assert {(r["model"], r["eval_set"]) for r in rows} == {(loss, ds) for loss in ("dpo", "contrastive")
                                                           for ds in ("tiny", "tiny-dev")}
    assert all(r["seeds_a"] == [1, 2] and r["diff"] == 0 and r["p_holm"] == 1.0 for r in rows)


def test_compare_runs_averages_each_runs_seeds(tmp_path):
    """scripts/compare_runs.py on a multi-seed run against an old single-seed run: the seeds in the run's
    config.json are averaged per query (a stale seed directory and the base are left out)."""
    def write_run(root: Path, config: dict, evals: dict) -> Path:
        (root / "eval").mkdir(parents=True)
        (root / "config.json").write_text(json.dumps(config))
        for name, scores in evals.items():
            (root / "eval" / name).mkdir()
            per_query = {q: {"ndcg@10": v} for q, v in scores.items()}
            (root / "eval" / name / "tiny.json").write_text(json.dumps({"per_query": per_query}))
            (root / "eval" / name / "tiny.stage.json").write_text("{}")
        return root

    a = write_run(tmp_path / "a", {"seed": 42, "seeds": [42, 7]}, {
        "base": {"q1": 0.0, "q2": 0.0, "q3": 0.0}, "dpo": {"q1": 0.2, "q2": 0.4, "q3": 0.6},
        "dpo-seed7": {"q1": 0.4, "q2": 0.6, "q3": 0.6}, "dpo-seed9": {"q1": 9.0, "q2": 9.0, "q3": 9.0}})
    b = write_run(tmp_path / "b", {"seed": 42}, {"dpo": {"q1": 0.1, "q2": 0.5, "q3": 0.4},
                                                 "contrastive": {"q1": 0.1, "q2": 0.5, "q3": 0.4}})
    rows = _load_compare_runs().compare_runs(a, b)
    assert len(rows) == 1
    row = rows[0]
    assert (row["model"], row["eval_set"], row["seeds_a"], row["seeds_b"]) == ("dpo", "tiny", [7, 42], [42])
    assert row["mean_a"] == pytest.approx((0.3 + 0.5 + 0.6) / 3) and row["mean_b"] == pytest.approx(1 / 3)
    assert row["n_queries"] == 3 and row["p_holm"] == pytest.approx(row["p_ttest"])


def test_stage_key_holds_only_the_options_a_loss_reads():
    from dpo_retrieval.experiment.compare import loss_settings
    from dpo_retrieval.training import DPOArgs

    dpo = DPOArgs().resolved()
    assert "beta" not in loss_settings("contrastive", dpo) and "mnrl_weight" not in loss_settings("contrastive", dpo)
    assert "dropout" in loss_settings("contrastive", dpo)
    assert {"beta", "sdpo_gamma"} <= set(loss_settings("sdpo", dpo)) and "mnrl_weight" not in loss_settings("sdpo", dpo)
    assert {"beta", "mnrl_weight", "hinge_margin"} <= set(loss_settings("dpo+mnrl", dpo))
    assert "mini_batch_size" in loss_settings("cmnrl", dpo) and "beta" not in loss_settings("cmnrl", dpo)
    for loss in ("contrastive", "cmnrl", "dpo+mnrl"):  # changing mnrl_scale retrains these, not dpo/sdpo/dpr
        assert loss_settings(loss, DPOArgs(mnrl_scale=5.0).resolved())["mnrl_scale"] == 5.0
    assert all("mnrl_scale" not in loss_settings(loss, dpo) for loss in ("dpo", "sdpo", "dpr"))


def test_train_negatives_enter_the_stage_key_only_when_set(tmp_path):
    """A run that sets no train_negatives (or all that are mined) keeps the training keys of runs made before
    the option existed; a variant's train_negatives is its own, checked against mining's negatives."""
    from dpo_retrieval.experiment.compare import CompareArgs, _train_config, check_options, train_settings
    from dpo_retrieval.experiment.variants import variant_config
    from dpo_retrieval.mining import MineArgs

    def key(cfg, name):
        loss, own = variant_config(cfg, name)
        inputs, dpo, targs = _train_config(own, loss, tmp_path / "m", tmp_path / "t.jsonl")
        return inputs.negatives, train_settings(inputs, loss, dpo, targs, all_negatives=own.mining.negatives)

    variants = {"dpo2": {"loss": "dpo", "train_negatives": 2}, "dpo4": {"loss": "dpo", "train_negatives": 4}}
    cfg = CompareArgs(dataset="scifact", output=str(tmp_path / "run"), losses="dpo,dpo2,dpo4", variants=variants,
                      mining=MineArgs(negatives=4), train_negatives=1)
    check_options(cfg)
    assert key(cfg, "dpo")[0] == 1 and key(cfg, "dpo")[1]["negatives"] == 1
    assert key(cfg, "dpo2")[1]["negatives"] == 2
    assert key(cfg, "dpo4")[0] == 4 and "negatives" not in key(cfg, "dpo4")[1]  # all mined: not in the key
    plain = CompareArgs(dataset="scifact", output=str(tmp_path / "run"), losses="dpo")
    negatives, settings = key(plain, "dpo")
    assert negatives == 4 and "negatives" not in settings
    # a number given explicitly reaches train() even where a loss's default is smaller (cmnrl: 1)
    every = CompareArgs(dataset="scifact", output=str(tmp_path / "run"), losses="cmnrl", train_negatives=4)
    assert key(every, "cmnrl")[0] == 4 and "negatives" not in key(every, "cmnrl")[1]
    assert settings == {**key(CompareArgs(dataset="scifact", output=str(tmp_path / "run"), losses="dpo",
                                          train_negatives=4), "dpo")[1]}  # dpo's default 4 is all mined: no option
    cmnrl = CompareArgs(dataset="scifact", output=str(tmp_path / "run"), losses="cmnrl")
    assert key(cmnrl, "cmnrl")[0] == 1  # its own default, the first 1 of the 4 mined
    with pytest.raises(UserInputError, match="train_negatives: 5 is more than the 4 mined per positive"):
        CompareArgs(dataset="scifact", output=str(tmp_path / "run"), train_negatives=5)


def test_compare_wise_ft_evaluates_the_interpolated_model(tmp_path, tiny_model_path):
    import torch
    from sentence_transformers import SentenceTransformer

    data = write_tiny_beir(tmp_path / "tiny")
    out = tmp_path / "run"
    assert main(compare_args(tiny_model_path, data, out, "--losses", "contrastive", "--wise_ft", "0.5")) == 0
    merged = out / "models" / "contrastive-wiseft0.5"
    base = SentenceTransformer(tiny_model_path, device="cpu").state_dict()
    tuned = SentenceTransformer(str(out / "models" / "contrastive"), device="cpu").state_dict()
    mixed = SentenceTransformer(str(merged), device="cpu").state_dict()
    name = next(k for k, v in tuned.items() if v.is_floating_point() and not torch.equal(v, base[k]))
    assert torch.allclose(mixed[name], (base[name] + tuned[name]) / 2, atol=1e-6)
    report = json.loads((out / "report.json").read_text())
    assert [r["model"] for r in report["datasets"]["tiny"]["rows"]] == ["base", "contrastive", "contrastive-wiseft0.5"]
    assert (out / "eval" / "contrastive-wiseft0.5" / "tiny.json").exists()
    stamp = (merged / "model.safetensors").stat().st_mtime_ns
    assert main(compare_args(tiny_model_path, data, out, "--losses", "contrastive", "--wise_ft", "0.5")) == 0
    assert (merged / "model.safetensors").stat().st_mtime_ns == stamp  # the merge stage is skipped


def test_compare_variants(tmp_path, tiny_model_path, capsys, caplog):
    """Named variants: each trains its loss with its own options on the run's triplets, under its own name
    (models/, eval/, report rows); a variant named after a loss needs no loss; wise_ft per variant.
    show_progress_bar=False: no encoding bar anywhere, mining's included, even with logging at INFO."""
    import logging

    from dpo_retrieval.experiment.compare import CompareArgs, run_compare

    caplog.set_level(logging.INFO, logger="dpo_retrieval")
    from dpo_retrieval.mining import MineArgs

    data = write_tiny_beir(tmp_path / "tiny")
    out = tmp_path / "run"
    variants = {"dpo-hinge": {"loss": "dpo", "loss_type": "hinge", "hinge_margin": 0.5, "learning_rate": 3e-5},
                "contrastive": {"num_train_epochs": 2, "wise_ft": [0.5]},
                "dpo-sigmoid": {"loss": "dpo", "policy": "sigmoid"}}
    cfg = CompareArgs(dataset=str(data), output=str(out), model=tiny_model_path, max_triplets=10,
                      per_device_train_batch_size=4, train_max_seq_length=32, eval_max_seq_length=32, precision="fp32",
                      top_k=20, seed=1, mining=MineArgs(rank_min=2, rank_max=12, dev_fraction=0.2),
                      show_progress_bar=False, losses="dpo,dpo-hinge,contrastive,dpo-sigmoid",
                      variants=json.dumps(variants))
    run_compare(cfg)
    assert "Encoding" not in capsys.readouterr().err
    stages = {n: json.loads((out / "models" / f"{n}.stage.json").read_text())["key"]["train"]
              for n in ("dpo", "dpo-hinge", "contrastive", "dpo-sigmoid")}
    assert stages["dpo"]["loss"] == stages["dpo-hinge"]["loss"] == "dpo"
    assert (stages["dpo"]["loss_type"], stages["dpo-hinge"]["loss_type"]) == ("sigmoid", "hinge")
    assert stages["dpo-hinge"]["hinge_margin"] == 0.5 and stages["dpo-hinge"]["learning_rate"] == 3e-5
    assert stages["dpo"]["learning_rate"] == 1e-4  # dpo's own default: a variant changes only itself
    assert (stages["contrastive"]["num_train_epochs"], stages["contrastive"]["loss"]) == (2, "contrastive")
    # a variant's policy brings that policy's default beta and scale (sigmoid: 10, 10), not the run's
    assert (stages["dpo-sigmoid"]["policy"], stages["dpo-sigmoid"]["beta"], stages["dpo-sigmoid"]["scale"]) == (
        "sigmoid", 10.0, 10.0)
    assert (stages["dpo"]["beta"], stages["dpo"]["scale"]) == (10.0, 20.0)
    models = json.loads((out / "report.json").read_text())["config"]["models"]  # what each model trained with
    assert (models["dpo-hinge"]["learning_rate"], models["dpo"]["learning_rate"], models["dpo"]["beta"]) == (
        3e-5, 1e-4, 10.0)
    assert models["contrastive"]["mnrl_scale"] == 20.0 and "beta" not in models["contrastive"]
    # wise_ft only where the variant asked for it
    assert (out / "models" / "contrastive-wiseft0.5").is_dir()
    assert not (out / "models" / "dpo-wiseft0.5").exists()
    report = json.loads((out / "report.json").read_text())
    assert [r["model"] for r in report["datasets"]["tiny"]["rows"]] == [
        "base", "dpo", "dpo-hinge", "contrastive", "contrastive-wiseft0.5", "dpo-sigmoid"]
    a = (out / "models" / "dpo" / "model.safetensors").read_bytes()
    assert a != (out / "models" / "dpo-hinge" / "model.safetensors").read_bytes()


@pytest.mark.parametrize("variants, losses, problem", [
    ('{"x": {"loss": "nope"}}', "x", "variants: x: loss must be one of"),
    ('{"x": {"loss": "dpo", "bogus": 1}}', "x", "variants: x: unknown option 'bogus'"),
    ('{"base": {"loss": "dpo"}}', "base", "variants: bad name 'base'"),
    ('{"dpo-seed3": {"loss": "dpo"}}', "dpo-seed3", "variants: bad name"),
    ('{"x": {"loss": "dpo", "beta": -1}}', "x", "variants: x: beta"),
    ('{"x": {"loss": "dpo", "learning_rate": 0}}', "x", "variants: x: learning_rate"),
    ('[1]', "dpo", "variants: must map names to options"),
    ('{x', "dpo", "variants: not a JSON mapping"),
    ('{"x": {"loss": "dpo"}}', "y", "losses: unknown y; choose from"),
    ('{"x": {"loss": "dpo", "train_negatives": 5}}', "x",
     "variants: x: train_negatives: 5 is more than the 4 mined per positive; mine at least 5 (negatives: 5)"),
    ('{"x": {"loss": "dpo", "train_negatives": 0}}', "x", "variants: x: train_negatives: must be > 0"),
    (None, "dpo,dpo", "losses: each name once"),
])
def test_compare_variants_refused(tmp_path, variants, losses, problem):
    from dpo_retrieval.experiment.compare import CompareArgs, check_options

    with pytest.raises(UserInputError) as err:
        check_options(CompareArgs(dataset="scifact", output=str(tmp_path / "run"), losses=losses, variants=variants))
    assert problem in str(err.value)
