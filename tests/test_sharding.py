"""Sharded corpus encoding (issue 12, item 2): ``index --shard i/n`` and torchrun ranks each encode a slice,
one merge builds the same index a single process builds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dpo_retrieval.cli import main
from dpo_retrieval.errors import UserInputError
from dpo_retrieval.retrieval.index import FaissIndex
from dpo_retrieval.retrieval.shards import merge_shards, parse_shard, resolve_shard, shard_dir

ROOT = Path(__file__).resolve().parents[1]
WORDS = "protein cell gene brain heart liver cancer virus drug dose trial mouse blood lung bone".split()
QUERIES = ["protein in the liver", "heart drug trial", "virus in mouse blood", "bone cancer dose"]


def write_corpus(path: Path, n: int = 23, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            words = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 30))))
            f.write(json.dumps({"_id": f"d{i:03d}", "title": f"title {i}" if i % 3 else "", "text": words}) + "\n")
    return path


def vectors(index: FaissIndex) -> np.ndarray:
    return index.index.reconstruct_n(0, index.count)


def index_cmd(corpus: Path, out: Path, model: str, *extra: str) -> list[str]:
    return ["--quiet", "index", "--corpus", str(corpus), "--output", str(out), "--model", model,
            "--device", "cpu", "--precision", "fp32", "--backend", "torch", "--max-seq-length", "64",
            "--batch-size", "4", "--chunk-size", "5", *extra]


def assert_same_index(merged: FaissIndex, single: FaissIndex, model) -> float:
    assert merged.doc_ids == single.doc_ids
    assert merged.titles == single.titles
    diff = float(np.abs(vectors(merged) - vectors(single)).max())
    print(f"max abs vector difference merged vs single: {diff:.3g}")
    assert diff <= 1e-6, diff
    q = single.encode_queries(model, QUERIES)
    s1, i1 = single.search(q, 10)
    s2, i2 = merged.search(q, 10)
    assert (i1 == i2).all()
    np.testing.assert_allclose(s1, s2, atol=1e-6)
    return diff


@pytest.fixture()
def single(tmp_path, tiny_model_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    assert main(index_cmd(corpus, tmp_path / "single", tiny_model_path)) == 0
    return corpus, FaissIndex.load(tmp_path / "single")


def test_parse_and_resolve_shard(monkeypatch):
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(UserInputError, match="shard: expected i/n"):
            parse_shard(bad)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_shard(None) is None and resolve_shard("0/1") is None
    assert resolve_shard("1/3") == (1, 3, False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert resolve_shard(None) == (1, 2, True)
    assert resolve_shard("0/3") == (0, 3, False)  # explicit wins


def test_bad_shard_flag_is_a_usage_error(tmp_path, tiny_model_path, capsys):
    corpus = write_corpus(tmp_path / "c.jsonl")
    assert main(index_cmd(corpus, tmp_path / "o", tiny_model_path, "--shard", "2/2")) == 2
    assert "shard" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not shard_dir(tmp_path / "o").exists()


def test_two_shards_then_merge_equal_single_process(tmp_path, single, tiny_model_path, tiny_model):
    corpus, one = single
    out = tmp_path / "sharded"
    assert main(index_cmd(corpus, out, tiny_model_path, "--shard", "1/2")) == 0
    assert not out.exists()  # one shard alone builds nothing
    files = sorted(p.name for p in shard_dir(out).iterdir())
    assert files == ["shard-00001-of-00002.json", "shard-00001-of-00002.npy"]
    assert main(index_cmd(corpus, out, tiny_model_path, "--shard=0/2")) == 0  # the last one merges
    assert not shard_dir(out).exists()
    merged = FaissIndex.load(out)
    assert merged.meta["shards"] == 2
    assert_same_index(merged, one, tiny_model)
    # `evaluate --index` / `search` read it like any index: same model check, same doc count
    merged.check_model(tiny_model)


def test_merge_refuses_missing_or_foreign_shards(tmp_path, tiny_model_path, tiny_model):
    corpus = write_corpus(tmp_path / "a.jsonl")
    other = write_corpus(tmp_path / "b.jsonl", seed=1)
    out = tmp_path / "idx"
    assert main(index_cmd(corpus, out, tiny_model_path, "--shard", "0/3")) == 0
    with pytest.raises(UserInputError, match="2 of 3 shards are missing"):
        merge_shards(out)
    assert main(index_cmd(other, out, tiny_model_path, "--shard", "1/3")) == 0
    assert main(index_cmd(corpus, out, tiny_model_path, "--shard", "2/3")) == 2  # the merge refuses shard 1
    assert not out.exists()  # nothing half-written
    with pytest.raises(UserInputError, match="another corpus file"):
        merge_shards(out)
    assert main(index_cmd(corpus, out, tiny_model_path, "--shard", "1/3")) == 0  # re-encode it: merged
    assert FaissIndex.load(out).count == 23 and not shard_dir(out).exists()


def _has_gloo() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:
        return False
    return dist.is_available() and dist.is_gloo_available()


@pytest.mark.skipif(not _has_gloo(), reason="torch.distributed with gloo is not available")
def test_torchrun_two_processes_equal_single_process(tmp_path, single, tiny_model_path, tiny_model):
    corpus, one = single
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dpo_retrieval", *index_cmd(corpus, out, tiny_model_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not shard_dir(out).exists()
    merged = FaissIndex.load(out)
    assert merged.meta["shards"] == 2
    assert_same_index(merged, one, tiny_model)


def write_beir(root: Path) -> Path:
    root.mkdir()
    write_corpus(root / "corpus.jsonl")
    with open(root / "queries.jsonl", "w", encoding="utf-8") as f:
        for i, q in enumerate(QUERIES):
            f.write(json.dumps({"_id": f"q{i}", "text": q}) + "\n")
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\td{(5 * i + j) % 23:03d}\t1\n" for i in range(len(QUERIES)) for j in range(2)))
    return root


def read_run(path: Path) -> dict:
    run: dict = {}
    for line in path.read_text().splitlines():
        qid, _, doc, rank, score, _ = line.split()
        run.setdefault(qid, []).append((doc, float(score)))
    return run


@pytest.mark.skipif(not _has_gloo(), reason="torch.distributed with gloo is not available")
def test_torchrun_evaluate_gathers_the_corpus_slices(tmp_path, tiny_model_path):
    data = write_beir(tmp_path / "tiny")
    flags = ["--model", tiny_model_path, "--device", "cpu", "--precision", "fp32", "--backend", "torch",
             "--max-seq-length", "64", "--batch-size", "4", "--top-k", "10"]
    assert main(["--quiet", "evaluate", "--dataset", str(data), "--output", str(tmp_path / "one.json"),
                 "--run", str(tmp_path / "one.trec"), *flags]) == 0
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    # torchrun's own parser takes any later `--run...` for its --run-path, so the run file goes in a config
    cfg = tmp_path / "two.yaml"
    cfg.write_text(f"run: {tmp_path / 'two.trec'}\noutput: {tmp_path / 'two.json'}\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dpo_retrieval", "evaluate", str(cfg), "--dataset", str(data), *flags]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "rank 0/2: encoding documents 0..10 of 23" in log and "rank 1/2: encoding documents 11..22 of 23" in log
    one, two = read_run(tmp_path / "one.trec"), read_run(tmp_path / "two.trec")
    assert one.keys() == two.keys()
    for qid in one:
        assert [d for d, _ in one[qid]] == [d for d, _ in two[qid]]
        np.testing.assert_allclose([s for _, s in one[qid]], [s for _, s in two[qid]], atol=1e-5)
    m1 = json.loads((tmp_path / "one.json").read_text())
    m2 = json.loads((tmp_path / "two.json").read_text())
    assert m1.get("metrics") == m2.get("metrics")
