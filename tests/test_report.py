"""dpo_retrieval.report on synthetic compare results: report.json schema, report.md, PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from dpo_retrieval.experiment.plots import write_plots
from dpo_retrieval.experiment.report import (METRICS, build_report, fmt_diff, fmt_metric, fmt_p, fmt_time,
                                             render_markdown, write_report)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N_RES = 1000  # resamples in the tests: plenty for checking structure, and fast


def _model(rng, n_queries, shift, train_time, eval_time):
    per_query = {}
    for j, m in enumerate(METRICS):
        base = np.clip(np.linspace(0.05, 0.95, n_queries) + 0.02 * j, 0, 1)
        vals = np.clip(base + shift + rng.normal(0, 0.1, n_queries), 0, 1)
        per_query[m] = {f"q{i}": float(v) for i, v in enumerate(vals)}
    metrics = {m: float(np.mean(list(per_query[m].values()))) for m in METRICS}
    return {"metrics": metrics, "per_query": per_query, "train_time_s": train_time,
            "eval_time_s": eval_time}


def make_results(datasets=("scifact", "dbpedia-entity-5k"), models=("base", "dpo", "contrastive")):
    rng = np.random.default_rng(0)
    shifts = {"base": 0.0, "dpo": 0.03, "contrastive": 0.01, "dpr": -0.01}
    runs = {}
    for k, ds in enumerate(datasets):
        runs[ds] = {"models": {
            m: _model(rng, 40 + 10 * k, shifts[m], None if m == "base" else 95.0 + 60 * k, 12.3)
            for m in models}}
    logs = {
        "dpo": [{"step": s, "loss": 0.69 / (1 + s / 20), "rewards/margins": 0.01 * s,
                 "learning_rate": 1e-5} for s in range(10, 110, 10)],
        "contrastive": [{"step": s, "loss": 2.0 / (1 + s / 30)} for s in range(10, 110, 10)]
                       + [{"train_runtime": 95.0}],  # a summary entry without step/loss
    }
    config = {"beta": 0.1, "scale": 20.0, "epochs": 1, "output": Path("/tmp/x"), "seed": 0}
    return {"dataset_runs": runs, "training_logs": logs, "config": config}


@pytest.fixture(scope="module")
def results():
    return make_results()


@pytest.fixture(scope="module")
def report(results):
    return build_report(results, seed=0, n_resamples=N_RES)


# ---------------------------------------------------------------------------- report.json
def test_report_schema(results, report):
    assert {"schema_version", "metrics", "seed", "n_resamples", "confidence", "datasets",
            "training", "config"} <= set(report)
    assert report["metrics"] == list(METRICS)
    assert list(report["datasets"]) == ["scifact", "dbpedia-entity-5k"]
    for ds_name, ds in report["datasets"].items():
        models = results["dataset_runs"][ds_name]["models"]
        assert ds["models"] == ["base", "dpo", "contrastive"]
        assert [r["model"] for r in ds["rows"]] == ["base", "dpo", "contrastive"]
        for row in ds["rows"]:
            src = models[row["model"]]
            for m in METRICS:
                assert row[m] == pytest.approx(src["metrics"][m])
                ci = row["ci"][m]
                assert ci["low"] <= row[m] <= ci["high"]
            assert row["train_time_s"] == src["train_time_s"]
            assert row["eval_time_s"] == 12.3
            assert row["n_queries"] == len(src["per_query"]["NDCG@10"])
        pairs = {(c["a"], c["b"], c["metric"]) for c in ds["comparisons"]}
        expected = {(a, b, m) for a, b in [("dpo", "base"), ("contrastive", "base"), ("dpo", "contrastive")]
                    for m in METRICS}
        assert pairs == expected and len(ds["comparisons"]) == len(expected)
        for c in ds["comparisons"]:
            assert {"mean_a", "mean_b", "diff", "ci_low", "ci_high", "t", "p_ttest",
                    "p_randomization", "n_queries"} <= set(c)
            assert c["diff"] == pytest.approx(c["mean_a"] - c["mean_b"])
            assert c["mean_a"] == pytest.approx(models[c["a"]]["metrics"][c["metric"]])
            assert 0 < c["p_randomization"] <= 1 and 0 <= c["p_ttest"] <= 1
    assert report["training"]["dpo"]["final_reward_margin"] == pytest.approx(1.0)
    assert report["training"]["contrastive"]["last_step"] == 100
    assert report["training"]["contrastive"]["n_logged"] == 11
    assert report["config"]["output"] == "/tmp/x"  # made JSON-safe


def test_report_is_json_safe_and_deterministic(results, report):
    text = json.dumps(report, allow_nan=False)
    assert json.loads(text) == report
    assert build_report(results, seed=0, n_resamples=N_RES) == report
    other = build_report(results, seed=1, n_resamples=N_RES)
    assert other["datasets"]["scifact"]["rows"][0]["NDCG@10"] == report["datasets"]["scifact"]["rows"][0]["NDCG@10"]


def test_report_handles_missing_and_nan_values():
    res = make_results(datasets=("scifact",), models=("base", "dpo", "dpr"))
    models = res["dataset_runs"]["scifact"]["models"]
    models["dpr"]["metrics"]["MAP@100"] = float("nan")
    del models["dpr"]["per_query"]["MAP@100"]
    del models["dpo"]["metrics"]["MRR@10"]  # falls back to the per-query mean
    rep = build_report(res, n_resamples=200)
    json.dumps(rep, allow_nan=False)
    rows = {r["model"]: r for r in rep["datasets"]["scifact"]["rows"]}
    assert rows["dpr"]["MAP@100"] is None and "MAP@100" not in rows["dpr"]["ci"]
    assert rows["dpo"]["MRR@10"] == pytest.approx(np.mean(list(models["dpo"]["per_query"]["MRR@10"].values())))
    pairs = {(c["a"], c["b"], c["metric"]) for c in rep["datasets"]["scifact"]["comparisons"]}
    assert ("dpr", "base", "MAP@100") not in pairs and ("dpo", "dpr", "MAP@100") not in pairs
    assert ("dpo", "dpr", "NDCG@10") in pairs
    md = render_markdown(rep)
    assert "| dpr |" in md


def test_report_rejects_bad_input():
    with pytest.raises(ValueError, match="dataset_runs"):
        build_report({"training_logs": {}})


# ---------------------------------------------------------------------------- report.md
def test_markdown_tables(report):
    md = render_markdown(report)
    header = "| Model | nDCG@10 | Recall@100 | MAP@100 | MRR@10 | Harm rate | Train time | Eval time |"
    assert md.count(header) == 2
    for ds_name, ds in report["datasets"].items():
        assert f"## {ds_name}" in md
        section = md.split(f"## {ds_name}")[1].split("\n## ")[0]
        for row in ds["rows"]:
            line = next(l for l in section.splitlines() if l.startswith(f"| {row['model']} |"))
            assert fmt_metric(row["NDCG@10"]) in line and fmt_time(row["eval_time_s"]) in line
        assert "| base |" in section and "— |" in section  # base has no train time
        for pair in ("dpo − base", "contrastive − base", "dpo − contrastive"):
            assert sum(l.startswith(f"| {pair} |") for l in section.splitlines()) == len(METRICS)
        assert "95% CI" in section and "p (t-test)" in section and "p (randomization)" in section
    assert "## Legend" in md and "randomization" in md.split("## Legend")[1]
    assert "## Config" in md and '"beta": 0.1' in md
    assert "## Training" in md


def test_number_formats():
    assert fmt_metric(0.123456) == "0.1235" and fmt_metric(None) == "—" and fmt_metric(float("nan")) == "—"
    assert fmt_diff(0.01234) == "+0.0123" and fmt_diff(-0.5) == "−0.5000"
    assert fmt_p(0.0123456) == "0.0123" and fmt_p(1.0) == "1.00" and fmt_p(0.5) == "0.500"
    assert fmt_p(1.234e-6) == "1.23e-06" and fmt_p(0.00123456) == "0.00123"
    assert fmt_time(12.34) == "12.3 s" and fmt_time(150) == "2.5 min" and fmt_time(None) == "—"


# ---------------------------------------------------------------------------- plots and files
def _assert_png(path: Path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 5000, path


@pytest.fixture(scope="module")
def written(results, tmp_path_factory):
    return write_report(results, tmp_path_factory.mktemp("out") / "report", seed=0, n_resamples=N_RES)


def test_write_plots(written):
    paths = written["plots"]
    out_dir = written["report_json"].parent
    assert sorted(p.name for p in paths) == sorted([
        "metrics_scifact.png", "metrics_dbpedia-entity-5k.png", "per_query_diff_scifact.png",
        "per_query_diff_dbpedia-entity-5k.png", "forest.png", "training_curves.png"])
    for p in paths:
        assert p.parent == out_dir
        _assert_png(p)


def test_write_report(results, written):
    json_path, md_path = written["report_json"], written["report_md"]
    assert json_path.name == "report.json" and md_path.name == "report.md"
    loaded = json.loads(json_path.read_text())
    assert loaded == written["report"] == build_report(results, seed=0, n_resamples=N_RES)
    assert md_path.read_text() == render_markdown(loaded)
    assert all(math.isfinite(c["diff"]) for c in loaded["datasets"]["scifact"]["comparisons"])
    files = sorted(p.name for p in json_path.parent.iterdir())
    assert files == sorted(["report.json", "report.md"] + [p.name for p in written["plots"]])  # no temp files
    assert json_path.stat().st_mode & 0o777 == 0o644


def test_write_plots_without_contrastive_or_logs(tmp_path):
    res = make_results(datasets=("nfcorpus",), models=("base", "dpo"))
    res["training_logs"] = {}
    rep = build_report(res, n_resamples=200)
    paths = write_plots(res, rep, tmp_path / "plots")
    assert [p.name for p in paths] == ["metrics_nfcorpus.png", "forest.png"]
    for p in paths:
        _assert_png(p)


def test_write_report_replaces_existing_files(tmp_path):
    res = make_results(datasets=("nfcorpus",), models=("base", "dpo"))
    res["training_logs"] = {}
    (tmp_path / "report.md").write_text("old")
    first = write_report(res, tmp_path, n_resamples=200)
    assert (tmp_path / "report.md").read_text() != "old"
    res["config"]["beta"] = 0.5
    second = write_report(res, tmp_path, n_resamples=200)
    assert '"beta": 0.5' in second["report_md"].read_text()
    assert json.loads(first["report_json"].read_text())["config"]["beta"] == 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forest.png", "metrics_nfcorpus.png", "report.json",
                                                          "report.md"]


def test_report_holm_corrects_over_all_comparisons_of_a_table():
    """Issue 11: the Holm family is every comparison of a dataset's table (all pairs and all metrics),
    not one metric's rows; each dataset is its own family."""
    from dpo_retrieval.experiment.stats import holm

    report = build_report(make_results(), seed=0, n_resamples=200)
    for ds in report["datasets"].values():
        comps = ds["comparisons"]
        assert len(comps) == 3 * len(METRICS)
        assert [c["p_holm"] for c in comps] == pytest.approx(holm([c["p_ttest"] for c in comps]))
        one_metric = [c for c in comps if c["metric"] == "NDCG@10"]
        assert [c["p_holm"] for c in one_metric] != pytest.approx(holm([c["p_ttest"] for c in one_metric]))
    assert "all comparisons" in report["holm_family"]
    md = render_markdown(report)
    assert "p (Holm)" in md and "corrected over all 12 comparisons of this table" in md
    assert "Holm's step-down correction over all comparisons" in md


# ---------------------------------------------------------------------------- seeds, harm rate, forest plot
def _entry(scores: dict, train_time=None) -> dict:
    return {"metrics": {"NDCG@10": float(np.mean(list(scores.values())))}, "per_query": {"NDCG@10": scores},
            "train_time_s": train_time, "eval_time_s": 1.0}


def test_report_harm_rate_column():
    base = {"q1": 0.5, "q2": 0.5, "q3": 0.5, "q4": 0.5}
    dpo = {"q1": 0.3, "q2": 0.48, "q3": 0.9, "q4": 0.5}      # q1 harmed (−0.2); q2 within 0.05
    res = {"dataset_runs": {"toy": {"models": {"base": _entry(base), "dpo": _entry(dpo, 5.0)}}}}
    rep = build_report(res, n_resamples=200)
    rows = {r["model"]: r for r in rep["datasets"]["toy"]["rows"]}
    assert rows["dpo"]["harm_rate"] == pytest.approx(0.25) and rows["base"]["harm_rate"] is None
    line = next(l for l in render_markdown(rep).splitlines() if l.startswith("| dpo |"))
    assert "25.0%" in line
    assert "| base |" in render_markdown(rep) and "Harm rate" in render_markdown(rep)


def test_report_aggregates_training_seeds():
    """Several seeds: metric = mean over seeds ± sample std; the paired tests and the harm rate run on the
    per-query scores averaged over the seeds; report.json keeps every seed's numbers."""
    from dpo_retrieval.experiment.stats import compare_paired, harm_rate

    rng = np.random.default_rng(3)
    qids = [f"q{i}" for i in range(30)]
    base = dict(zip(qids, rng.uniform(0.2, 0.8, 30).tolist()))
    seeds = {s: {q: float(np.clip(v + 0.02 * s + rng.normal(0, 0.1), 0, 1)) for q, v in base.items()}
             for s in (1, 2, 3)}
    other = {q: float(np.clip(v + rng.normal(0, 0.1), 0, 1)) for q, v in base.items()}
    res = {"dataset_runs": {"toy": {"models": {
        "base": _entry(base), "dpo": {"seeds": {s: _entry(v, 10.0 + s) for s, v in seeds.items()}},
        "contrastive": _entry(other, 7.0)}}}}
    rep = build_report(res, seed=0, n_resamples=500)
    rows = {r["model"]: r for r in rep["datasets"]["toy"]["rows"]}
    per_seed = [float(np.mean(list(v.values()))) for v in seeds.values()]
    dpo = rows["dpo"]
    assert dpo["NDCG@10"] == pytest.approx(np.mean(per_seed))
    assert dpo["std"]["NDCG@10"] == pytest.approx(np.std(per_seed, ddof=1))
    assert dpo["seeds"] == [1, 2, 3] and dpo["train_time_s"] == pytest.approx(12.0)
    assert [dpo["per_seed"][str(s)]["NDCG@10"] for s in (1, 2, 3)] == pytest.approx(per_seed)
    assert rows["base"]["std"]["NDCG@10"] is None and rows["contrastive"]["seeds"] == []
    averaged = {q: float(np.mean([seeds[s][q] for s in seeds])) for q in qids}
    assert dpo["harm_rate"] == pytest.approx(harm_rate(averaged, base))
    comp = next(c for c in rep["datasets"]["toy"]["comparisons"] if (c["a"], c["b"]) == ("dpo", "base"))
    expected = compare_paired(averaged, base, seed=0, n_resamples=500)
    for key in ("diff", "ci_low", "ci_high", "p_ttest", "p_randomization"):
        assert comp[key] == pytest.approx(expected[key]), key
    assert comp["per_seed_diff"] == pytest.approx({str(s): v - np.mean(list(base.values()))
                                                   for s, v in zip((1, 2, 3), per_seed)})
    json.dumps(rep, allow_nan=False)
    md = render_markdown(rep)
    line = next(l for l in md.splitlines() if l.startswith("| dpo |"))
    assert f"{np.mean(per_seed):.4f} ± {np.std(per_seed, ddof=1):.4f}" in line
    assert "training seeds 1, 2, 3" in md and "| Model | seed 1 | seed 2 | seed 3 |" in md
    # one seed: no ± anywhere, no per-seed table
    single = render_markdown(build_report(make_results(datasets=("scifact",)), n_resamples=200))
    assert "±" not in single.split("## Legend")[0] and "per training seed" not in single


def test_forest_plot_written(tmp_path):
    from dpo_retrieval.experiment.plots import _plot_forest

    res = make_results()
    rep = build_report(res, n_resamples=200)
    path = _plot_forest(rep, tmp_path / "forest.png")
    _assert_png(path)
    assert _plot_forest({"datasets": {"x": {"comparisons": []}}}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_report_narrowed_comparison_family():
    """pairs + metrics: only those comparisons are tested and Holm runs over them alone (a smaller family
    gives smaller corrected p-values than the all-pairs family), and the report says which family."""
    from dpo_retrieval.experiment.stats import holm

    results = make_results(models=("base", "dpo", "contrastive", "dpr"))
    pairs = [("dpo", "base"), ("dpo", "contrastive"), ("missing", "base")]
    narrow = build_report(results, n_resamples=N_RES, pairs=pairs, metrics=["NDCG@10"])
    full = build_report(results, n_resamples=N_RES)
    for ds in ("scifact", "dbpedia-entity-5k"):
        comps = narrow["datasets"][ds]["comparisons"]
        assert [(c["a"], c["b"], c["metric"]) for c in comps] == [("dpo", "base", "NDCG@10"),
                                                                 ("dpo", "contrastive", "NDCG@10")]
        assert [c["p_holm"] for c in comps] == pytest.approx(holm([c["p_ttest"] for c in comps]))
        wide = {(c["a"], c["b"], c["metric"]): c for c in full["datasets"][ds]["comparisons"]}
        for c in comps:  # same test, smaller family
            assert c["p_ttest"] == pytest.approx(wide[(c["a"], c["b"], c["metric"])]["p_ttest"])
            assert c["p_holm"] <= wide[(c["a"], c["b"], c["metric"])]["p_holm"] + 1e-12
        assert len(narrow["datasets"][ds]["rows"]) == 4  # every model still has its row
    assert "dpo - contrastive" in narrow["holm_family"] and "NDCG@10" in narrow["holm_family"]
    md = render_markdown(narrow)
    assert "the listed pairs and metrics" in md and "dpo - base" in md
