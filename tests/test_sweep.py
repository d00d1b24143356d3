"""`sweep`: a grid trained on the same triplets, scored on dev only, resumable; the fast dev score."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import yaml

from dpo_retrieval.cli import main
from dpo_retrieval.errors import UserInputError
from dpo_retrieval.experiment.sweep import SweepArgs, grid_points, read_grid, run_sweep
from test_compare import write_tiny_beir


@pytest.fixture(scope="module")
def mined(tmp_path_factory, tiny_model_path):
    root = tmp_path_factory.mktemp("mined")
    data = write_tiny_beir(root / "tiny")
    out = root / "mine"
    assert main(["--quiet", "mine", "--dataset", str(data), "--output", str(out), "--model", tiny_model_path,
                 "--rank-window", "2-12", "--dev-fraction", "0.3", "--max-seq-length", "32",
                 "--precision", "fp32"]) == 0
    return data, out


def _grid(tmp_path, data, mine, tiny_model_path, **grid) -> Path:
    spec = {"dataset": str(data), "mine": str(mine), "output": str(tmp_path / "sweep"),
            "fixed": {"model": tiny_model_path, "loss": "dpo", "max_seq_length": 32, "per_device_train_batch_size": 4,
                      "max_steps": 2, "dropout": "off"},
            "grid": grid}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_grid_points_are_the_product_in_file_order():
    assert grid_points({"beta": [1, 2], "learning_rate": [0.1, 0.2]}) == [
        {"beta": 1, "learning_rate": 0.1}, {"beta": 1, "learning_rate": 0.2},
        {"beta": 2, "learning_rate": 0.1}, {"beta": 2, "learning_rate": 0.2}]


def test_sweep_scores_dev_only_and_resumes(tmp_path, tiny_model_path, mined):
    data, mine = mined
    grid = _grid(tmp_path, data, mine, tiny_model_path, beta=[0.5, 2.0, 8.0], learning_rate=[1e-3])
    # fast_depth >= the corpus: every query's pool is the whole corpus, so fast dev = full dev exactly
    summary = run_sweep(SweepArgs(grid=str(grid), fast_depth=100, full_dev=True, eval_max_seq_length=32,
                                  precision="fp32"))
    saved = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert saved["points"] == summary["points"] and len(summary["points"]) == 3
    dev_qids = {line.split("\t")[0] for line in (mine / "dev_qrels.tsv").read_text().splitlines()[1:]}
    for row in summary["points"]:
        assert set(row["fast_dev_per_query_ndcg@10"]) == dev_qids  # dev queries only, never test
        assert row["fast_dev"]["ndcg@10"] == pytest.approx(row["full_dev"]["ndcg@10"], abs=1e-9)
    assert {r["options"]["beta"] for r in summary["points"]} == {0.5, 2.0, 8.0}
    assert summary["agreement_ndcg@10"]["points"] == 3
    assert summary["best"] in [r["options"] for r in summary["points"]]
    # the points share the frozen reference's embeddings: the first encodes, the others read them
    refs = [json.loads(p.read_text())["reference_precompute"]
            for p in sorted((tmp_path / "sweep" / "points").glob("*/model/train_summary.json"), key=os.path.getmtime)]
    assert refs[0]["texts_encoded"] > 0 and refs[0]["texts_cached"] == 0
    assert all(r["texts_encoded"] == 0 and r["texts_cached"] == refs[0]["texts_encoded"] for r in refs[1:])

    markers = sorted((tmp_path / "sweep" / "points").glob("*/train.stage.json"))
    mtimes = [m.stat().st_mtime_ns for m in markers]
    again = run_sweep(SweepArgs(grid=str(grid), fast_depth=100, full_dev=True, eval_max_seq_length=32,
                                precision="fp32"))
    assert [m.stat().st_mtime_ns for m in markers] == mtimes  # nothing retrained
    assert [r["fast_dev"] for r in again["points"]] == [r["fast_dev"] for r in summary["points"]]


def test_sweep_json_rows_stand_for_their_points_without_the_models(tmp_path, tiny_model_path, mined, monkeypatch,
                                                                   caplog):
    import dpo_retrieval.training as training

    data, mine = mined
    grid = _grid(tmp_path, data, mine, tiny_model_path, beta=[0.5, 2.0])
    sweep = lambda **kw: run_sweep(SweepArgs(grid=str(grid), fast_depth=3, eval_max_seq_length=32,  # noqa: E731
                                             precision="fp32", **kw))
    first = sweep()
    shutil.rmtree(tmp_path / "sweep" / "points")  # as on a fresh machine with the committed sweep.json only
    real_train, trained = training.train, []

    def no_training(*args, **kwargs):
        raise AssertionError("a point recorded in sweep.json was trained again")

    monkeypatch.setattr(training, "train", no_training)
    with caplog.at_level(logging.INFO, logger="dpo_retrieval.experiment.sweep"):
        again = sweep()
    assert again["points"] == first["points"] and again["best"] == first["best"]  # train_seconds kept too
    assert not (tmp_path / "sweep" / "points").exists()  # nothing loaded, trained or scored
    assert sum("(recorded, skipped)" in r.getMessage() for r in caplog.records) == 2

    # a changed fixed option is another training key: its points train
    monkeypatch.setattr(training, "train", lambda *a, **kw: trained.append(a[0].loss) or real_train(*a, **kw))
    spec = yaml.safe_load(grid.read_text())
    spec["fixed"]["max_steps"] = 1
    grid.write_text(yaml.safe_dump(spec))
    changed = sweep()
    assert len(trained) == 2 and len(changed["points"]) == 2 and len(changed["stale_points"]) == 2
    new = [r for r in changed["points"] if r["options"]["max_steps"] == 1]
    assert {r["train_hash"] for r in new}.isdisjoint({r["train_hash"] for r in first["points"]})
    # a score the rows lack (full dev) needs the models: only then are the points trained again
    shutil.rmtree(tmp_path / "sweep" / "points")
    with_full = sweep(full_dev=True)
    assert len(trained) == 4 and all("full_dev" in r for r in with_full["points"] if r["options"]["max_steps"] == 1)


def test_fast_pool_is_smaller_than_the_corpus(tmp_path, tiny_model_path, mined):
    data, mine = mined
    grid = _grid(tmp_path, data, mine, tiny_model_path, beta=[1.0])
    summary = run_sweep(SweepArgs(grid=str(grid), fast_depth=2, eval_max_seq_length=32, precision="fp32"))
    assert summary["fast_pool_docs"] < summary["corpus_docs"]
    assert "full_dev" not in summary["points"][0] and summary["agreement_ndcg@10"] is None


def test_bad_grid_fails_before_training(tmp_path, tiny_model_path, mined):
    data, mine = mined
    grid = _grid(tmp_path, data, mine, tiny_model_path, betta=[1.0])
    with pytest.raises(UserInputError, match="unknown or reserved option 'betta'"):
        run_sweep(SweepArgs(grid=str(grid)))
    assert not (tmp_path / "sweep").exists()
    grid = _grid(tmp_path, data, mine, tiny_model_path, negatives=[1, 5])  # the mined file has 4 per positive
    with pytest.raises(UserInputError, match=r"negatives: 5 asked for, but .*triplets.jsonl has 4 negatives per"):
        run_sweep(SweepArgs(grid=str(grid)))
    assert not (tmp_path / "sweep").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: x\ngrid: {beta: [1]}\n")
    with pytest.raises(UserInputError, match="mine: required"):
        read_grid(bad)


def test_sweep_command_takes_the_grid_file(tmp_path, tiny_model_path, mined, capsys):
    data, mine = mined
    grid = _grid(tmp_path, data, mine, tiny_model_path, beta=[1.0])
    assert main(["--quiet", "sweep", str(grid), "--fast-depth", "3", "--eval_max_seq_length", "32",
                 "--precision", "fp32"]) == 0
    saved = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert len(saved["points"]) == 1 and saved["sweep"]["fast_depth"] == 3
    assert main(["--quiet", "sweep", str(grid), "--fast-depth", "0"]) == 2
    assert "--fast-depth: must be > 0" in capsys.readouterr().err


def test_sweep_results_file_carries_pool_and_drift(tmp_path, tiny_model_path, mined, monkeypatch):
    """``results`` elsewhere: each row has fast_depth and drift_dev (mean |s - s_ref| on the dev pool, larger
    for the larger learning rate); a fresh OUTPUT resumes from that file alone - no training, no base
    encoding; another fast_depth is not taken from rows scored at the old one."""
    import dpo_retrieval.training as training

    data, mine = mined
    grid = _grid(tmp_path, data, mine, tiny_model_path, beta=[1.0], learning_rate=[1e-3, 1e-5])
    results = tmp_path / "kept" / "tune.json"
    results.parent.mkdir()
    args = dict(grid=str(grid), fast_depth=3, eval_max_seq_length=32, precision="fp32", results=str(results))
    first = run_sweep(SweepArgs(**args))
    assert not (tmp_path / "sweep" / "sweep.json").exists() and results.exists()
    saved = json.loads(results.read_text())
    assert saved["fast_pool"]["depth"] == 3 and saved["fast_pool"]["base_run"]
    drifts = [r["drift_dev"] for r in first["points"]]
    for d in drifts:
        assert d["pairs"] > 0 and d["pool"] > 0 and d["judged"] is not None
    assert drifts[0]["pool"] > drifts[1]["pool"]  # lr 1e-3 moves the scores further than 1e-5

    shutil.rmtree(tmp_path / "sweep")  # a fresh machine: only the results file is left

    def no_training(*a, **k):
        raise AssertionError("trained again")

    def no_encoding(*a, **k):
        raise AssertionError("the pool was recomputed")

    monkeypatch.setattr(training, "train", no_training)
    monkeypatch.setattr("dpo_retrieval.experiment.fast_dev.candidate_pool", no_encoding)
    again = run_sweep(SweepArgs(**args))
    assert [r["fast_dev"] for r in again["points"]] == [r["fast_dev"] for r in first["points"]]
    monkeypatch.undo()
    deeper = run_sweep(SweepArgs(**{**args, "fast_depth": 4}))  # rows scored at depth 3 do not count
    assert all(r["fast_depth"] == 4 for r in deeper["points"])


def test_sweep_points_add_one_at_a_time_variations(tmp_path, tiny_model_path, mined):
    from dpo_retrieval.experiment.sweep import sweep_points

    data, mine = mined
    spec = read_grid(_grid(tmp_path, data, mine, tiny_model_path, beta=[1.0, 2.0]))
    spec["points"] = [{"loss_type": "hinge"}, {"beta": 2.0}]  # the second repeats a grid point
    got = sweep_points(spec)
    assert [(p["beta"] if "beta" in p else None, p.get("loss_type")) for p in got] == [
        (1.0, None), (2.0, None), (None, "hinge")]
    assert sweep_points({**spec, "grid": {}, "points": []}) == [spec["fixed"]]  # no grid: fixed alone
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"dataset": str(data), "mine": str(mine), "points": {"beta": 1}}))
    with pytest.raises(UserInputError, match="points: must be a list"):
        read_grid(bad)


def test_sweep_rows_of_another_pool_precision_or_grid(tmp_path, tiny_model_path, mined):
    """A row scored with another precision is scored again; a point the grid dropped moves to stale_points
    (kept, never 'best'); best only when the run finished."""
    data, mine = mined
    grid = _grid(tmp_path, data, mine, tiny_model_path, beta=[1.0, 2.0])
    results = tmp_path / "r.json"
    args = dict(grid=str(grid), fast_depth=3, eval_max_seq_length=32, precision="fp32", results=str(results))
    first = run_sweep(SweepArgs(**args))
    assert all(r["precision"] == "fp32" and r["pool_key"] for r in first["points"])
    saved = json.loads(results.read_text())
    for r in saved["points"]:  # a file written before rows recorded these: the file's own values stand in
        del r["precision"], r["pool_key"]
    results.write_text(json.dumps(saved))
    import dpo_retrieval.training as training

    calls = []
    real = training.train
    training.train = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        run_sweep(SweepArgs(**args))
        assert calls == []  # legacy rows: scored with the file's pool and precision -> still valid
        narrower = _grid(tmp_path, data, mine, tiny_model_path, beta=[2.0])
        again = run_sweep(SweepArgs(**{**args, "grid": str(narrower)}))
        assert calls == [] and [r["options"]["beta"] for r in again["points"]] == [2.0]
        assert [r["options"]["beta"] for r in again["stale_points"]] == [1.0]
        assert again["best"]["beta"] == 2.0
        bf16 = run_sweep(SweepArgs(**{**args, "grid": str(narrower), "precision": "bf16"}))
        assert len(calls) == 1 and bf16["points"][0]["precision"] == "bf16"  # trained and scored again
    finally:
        training.train = real
