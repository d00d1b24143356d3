"""scripts/study.py and study_report.py: model names, exports, resumable bookkeeping, the report's choices
(best contrastive model on dev, the Holm family) and the criteria, on synthetic recorded results."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture()
def study(tmp_path, monkeypatch):
    """The two scripts with benchmarks/results/study and configs/study moved into tmp_path."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    for name in ("study", "study_plots", "study_report", "study_finals", "study_freeze", "study_readme",
                 "study_ablation"):
        sys.modules.pop(name, None)
    mod = importlib.import_module("study")
    rep = importlib.import_module("study_report")
    fin = importlib.import_module("study_finals")
    frz = importlib.import_module("study_freeze")
    kept, configs = tmp_path / "kept", tmp_path / "configs"
    configs.mkdir()
    monkeypatch.setattr(mod, "KEPT", kept)  # the other two read them through the study module
    monkeypatch.setattr(mod, "CONFIGS", configs)
    monkeypatch.setattr(rep, "OUT", tmp_path / "out")
    rdm = importlib.import_module("study_readme")  # README's Results block, written by the report
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Results\n\n{rdm.README_START}\nold\n{rdm.README_END}\n\n## Next\n")
    monkeypatch.setattr(rdm, "README", readme)
    for name, value in [*vars(fin).items(), *vars(frz).items()]:  # one namespace for the tests: study + the others
        if not name.startswith("__") and not hasattr(mod, name):
            monkeypatch.setattr(mod, name, value, raising=False)
    (configs / "study.yaml").write_text(yaml.safe_dump({
        "fast_depth": 20, "seeds": [1, 2, 3], "data_sizes": [64], "data_seeds": [1, 2],
        "data_models": ["mnrl", "dpo"], "contrastive_models": ["mnrl", "cmnrl"],
        "dpo_models": ["dpo", "sdpo"]}))
    return mod, rep, kept, configs


def test_model_dir_names(study):
    mod = study[0]
    assert mod.parse_model_dir("dpo-seed3") == ("dpo", 3)
    assert mod.parse_model_dir("dpo-mnrl-seed12") == ("dpo-mnrl", 12)
    assert mod.parse_model_dir("contrastive-seed2-wiseft0.5") == ("contrastive-wiseft0.5", 2)
    assert mod.parse_model_dir("base") == ("base", None)


def test_final_models_lists_wise_ft_per_variant(study, tmp_path):
    mod = study[0]
    cfg = tmp_path / "final.yaml"
    cfg.write_text(yaml.safe_dump({"losses": ["mnrl", "dpo"], "variants": {"mnrl": {"loss": "contrastive",
                                                                                  "wise_ft": [0.5]}}}))
    assert mod.final_models(cfg) == ["mnrl", "mnrl-wiseft0.5", "dpo"]
    assert mod.final_models(cfg, ["dpo"]) == ["dpo"]
    no_wise = json.dumps({"mnrl": {"loss": "contrastive"}})
    assert mod.final_models(cfg, ["mnrl"], ["--max_triplets", "64", "--variants", no_wise]) == ["mnrl"]
    same = tmp_path / "same.yaml"  # the config's identity is its content, not its comments or layout
    same.write_text("# a comment\n" + yaml.safe_dump(yaml.safe_load(cfg.read_text()), default_flow_style=True))
    assert mod.config_sha(same) == mod.config_sha(cfg)


def _eval_json(qids, rng, shift):
    per_query = {q: {"ndcg@10": float(np.clip(0.5 + shift + rng.normal(0, 0.1), 0, 1)), "recall@100": 0.9,
                     "map@100": 0.4, "mrr@10": 0.5} for q in qids}
    metrics = {k: float(np.mean([r[k] for r in per_query.values()])) for k in ("ndcg@10", "recall@100", "map@100",
                                                                               "mrr@10")}
    return {"metrics": metrics, "per_query": per_query, "timings": {"encode_s": 1.0}}


def test_export_run_and_recorded_seeds(study, tmp_path):
    """A compare run directory -> one file per (model, seed) with every evaluation set; only the asked
    seeds; recorded_seeds counts a seed only when every model has it from this config."""
    mod = study[0]
    run, kept = tmp_path / "run", tmp_path / "kept" / "final"
    rng = np.random.default_rng(0)
    for name in ("base", "dpo-seed1", "dpo-seed2", "mnrl-seed1", "mnrl-seed1-wiseft0.5"):
        for ds in ("scifact", "scifact-dev"):
            path = run / "eval" / name / f"{ds}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(_eval_json([f"q{i}" for i in range(5)], rng, 0.0)))
            path.with_suffix(".stage.json").write_text("{}")
        (run / "models").mkdir(exist_ok=True)
        (run / "models" / f"{name}.stage.json").write_text(json.dumps({"key": {"train": {"loss": "x"}},
                                                                       "train_seconds": 12.5}))
    written = mod.export_run(run, kept, config_sha="abc", seeds=[1])
    assert sorted(p.relative_to(kept).as_posix() for p in written) == [
        "base.json", "dpo/seed1.json", "mnrl-wiseft0.5/seed1.json", "mnrl/seed1.json"]
    entry = json.loads((kept / "dpo" / "seed1.json").read_text())
    assert entry["seed"] == 1 and entry["train_seconds"] == 12.5 and set(entry["datasets"]) == {"scifact",
                                                                                                "scifact-dev"}
    assert set(entry["datasets"]["scifact"]["per_query"]["NDCG@10"]) == {f"q{i}" for i in range(5)}
    assert mod.recorded_seeds(kept, ["dpo", "mnrl"], "abc") == {1}
    assert mod.recorded_seeds(kept, ["dpo", "mnrl"], "other config") == set()
    assert mod.recorded_seeds(kept, ["dpo", "sdpo"], "abc") == set()
    only = mod.export_run(run, tmp_path / "only", config_sha="abc", seeds=[1, 2], models=["dpo"])
    assert sorted(p.relative_to(tmp_path / "only").as_posix() for p in only) == [
        "base.json", "dpo/seed1.json", "dpo/seed2.json"]  # a model the config no longer has is not exported
    rep = study[1]
    group = rep.load_group(kept, "abc")
    assert sorted(group["models"]) == ["dpo", "mnrl", "mnrl-wiseft0.5"] and group["stale"] == []
    (kept / "dpo" / "seed1.json").write_text(json.dumps({**entry, "config_sha": "older"}))
    group = rep.load_group(kept, "abc")
    assert "dpo" not in group["models"] and group["stale"] == [str(kept / "dpo" / "seed1.json")]


def _export(kept: Path, model: str, seed, shifts: dict, n=300, rng=None):
    rng = rng or np.random.default_rng(zlib.crc32(f"{model}:{seed}".encode()))  # not hash(): salted per process
    datasets = {}
    for ds, shift in shifts.items():
        pq = {f"{ds}-q{i}": float(np.clip(0.5 + 0.3 * np.sin(i) + shift + rng.normal(0, 0.02), 0, 1))
              for i in range(n)}
        datasets[ds] = {"metrics": {"NDCG@10": float(np.mean(list(pq.values())))}, "per_query": {"NDCG@10": pq}}
    path = kept / ("base.json" if model == "base" else f"{model}/seed{seed}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    drift = {} if model == "base" else {"drift_dev": {"pool": 0.1 + 0.01 * seed}}
    path.write_text(json.dumps({"model": model, "seed": seed, "datasets": datasets, "train_seconds": 10.0, **drift}))


def test_report_picks_best_contrastive_on_dev_and_judges_the_criteria(study):
    """cmnrl is best on dev but worse on test: it is still 'the best contrastive model' (chosen without
    test); sdpo beats it on test and out of domain -> the aim holds for sdpo; dpo is level in domain and
    better out of domain -> criterion (a) holds for dpo; the Holm family is the listed pairs on nDCG@10."""
    _, rep, kept, _ = study
    final = kept / "final"
    _export(final, "base", None, {"scifact": 0.0, "scifact-dev": 0.0, "dbpedia-entity-5k": 0.0})
    shifts = {"mnrl": (0.03, 0.02, -0.02), "cmnrl": (0.02, 0.05, -0.02), "dpo": (0.02, 0.0, 0.03),
              "sdpo": (0.08, 0.03, 0.0)}
    for model, (test, dev, ood) in shifts.items():
        for seed in (1, 2, 3):
            _export(final, model, seed, {"scifact": test, "scifact-dev": dev, "dbpedia-entity-5k": ood})
    for seed in (1, 2):  # data efficiency at 64 triplets: dpo far above mnrl
        _export(kept / "data" / "n64", "mnrl", seed, {"scifact": 0.0})
        _export(kept / "data" / "n64", "dpo", seed, {"scifact": 0.05})
    _export(kept / "data" / "n64", "base", None, {"scifact": 0.0})
    (kept / "tune_dpo.json").write_text(json.dumps({"points": [  # drift against beta, from the DPO sweep
        {"options": {"loss": "dpo", "beta": b, "learning_rate": lr}, "fast_dev": {"ndcg@10": 0.66},
         "drift_dev": {"pool": 0.05 / b, "judged": 0.04 / b}} for b in (0.3, 1.0, 3.0) for lr in (2e-5, 5e-5)]}))
    out = rep.write_study_report()
    assert [r["beta"] for r in out["drift"]["tuning_points"]] == [0.3, 0.3, 1.0, 1.0, 3.0, 3.0]
    assert out["tuning"]["dpo"]["points"] == 6 and (kept / "drift_vs_beta.png").exists()
    t = out["tuning"]["dpo"]  # unfinished (no best yet): the best row so far, its options in the table
    assert not t["finished"] and t["best_options"]["beta"] in (0.3, 1.0, 3.0) and t["best_fast_dev_ndcg@10"] == 0.66
    assert out["final"]["best_contrastive"] == "cmnrl"
    assert out["complete"] and out["verdicts"]["provisional"] is False  # seeds 1-3 = the plan's
    (kept / "data" / "n64" / "dpo" / "seed2.json").rename(kept / "seed2.json")  # a data run missing: provisional
    out = rep.write_study_report()
    assert out["finals_complete"] and not out["data_complete"] and out["verdicts"]["provisional"] is True
    (kept / "seed2.json").rename(kept / "data" / "n64" / "dpo" / "seed2.json")
    out = rep.write_study_report()
    assert out["complete"] and out["verdicts"]["provisional"] is False
    before = out["final"]["rows"]
    # an export of a seed outside the plan, or of a model outside the data section, enters no mean and no test
    _export(final, "dpo", 6, {"scifact": 0.5, "scifact-dev": 0.5, "dbpedia-entity-5k": 0.5})
    _export(kept / "data" / "n64", "cmnrl", 1, {"scifact": 0.5})
    out = rep.write_study_report()
    assert out["final"]["rows"] == before and out["final"]["seeds"]["dpo"] == [1, 2, 3]
    assert {r["model"] for r in out["data_efficiency"]["rows"]} == {"mnrl", "dpo"} and out["complete"]
    assert any(f.endswith("dpo/seed6.json") for f in out["stale_exports_left_out"])
    assert "64: cmnrl" in out["stale_exports_left_out"]
    # the base missing, or a seed without one of the evaluation sets: not complete (a Holm family or a mean short)
    (final / "base.json").rename(kept / "base.json")
    assert rep.write_study_report()["verdicts"]["provisional"] is True
    (kept / "base.json").rename(final / "base.json")
    entry = json.loads((final / "mnrl" / "seed2.json").read_text())
    (final / "mnrl" / "seed2.json").write_text(json.dumps({**entry, "datasets": {
        k: v for k, v in entry["datasets"].items() if k != "dbpedia-entity-5k"}}))
    assert not rep.write_study_report()["finals_complete"]
    (final / "mnrl" / "seed2.json").write_text(json.dumps(entry))
    out = rep.write_study_report()
    assert out["complete"]
    comps = out["final"]["comparisons"]["scifact"]
    assert {(c["a"], c["b"]) for c in comps} == {(m, "base") for m in shifts} | {
        (m, "cmnrl") for m in ("mnrl", "dpo", "sdpo")}
    assert {c["metric"] for c in comps} == {"NDCG@10"}
    v = out["verdicts"]
    assert v["aim_beats_best_contrastive_with_ood_retention"] == {"holds": True, "models": ["sdpo"]}
    assert "dpo" in v["a_in_domain_within_ci_and_better_out_of_domain"]["models"]
    assert v["b_better_at_200_or_fewer_triplets"]["holds"] and v["closest"]["model"] == "sdpo"
    rows = {(r["size"], r["model"]): r for r in out["data_efficiency"]["rows"]}
    assert rows[(64, "dpo")]["seeds"] == [1, 2] and rows[("all", "dpo")]["seeds"] == [1, 2]  # data_seeds only
    md = (rep.OUT / "study_scifact.results.md").read_text()
    assert "sdpo − cmnrl" in md and "holds" in md
    # the md holds every test the JSON does: the data section's, the harm tests, the final models' drift
    assert "| 64 | dpo − mnrl | +0.04" in md and "| all | dpo − mnrl |" in md
    assert "## Harm on SciFact test against the best contrastive model (cmnrl)" in md
    assert set(out["harm_vs_best_contrastive"]) == {"dpo", "sdpo"} and "\n| sdpo | " in md.split("## Harm")[1]
    assert "| dpo | 3 | 0.1200 ± 0.0100 |" in md  # drift 0.11, 0.12, 0.13 over seeds 1-3
    rdm = sys.modules["study_readme"]
    readme = rdm.README.read_text()  # README's Results block, rewritten between its markers
    assert "\nold\n" not in readme and readme.endswith(f"{rdm.README_END}\n\n## Next\n") and "Complete:" in readme
    assert "| sdpo − cmnrl | scifact |" in readme and "the aim: better than the best contrastive model" in readme
    assert "holds for sdpo" in readme
    # the data section in README: one row per size, each model's mean and dpo's paired test against mnrl
    assert "| triplets | mnrl | dpo | dpo − mnrl (p Holm) |" in readme
    row64 = next(line for line in readme.splitlines() if line.startswith("| 64 | "))
    assert row64.count(" ± ") == 2 and "| +0.04" in row64  # dpo trained 0.05 above mnrl at 64 triplets
    assert any(line.startswith("| all | ") for line in readme.splitlines())
    assert readme.index("| triplets |") < readme.index("Criteria fixed before the finals")
    assert "| dpo | 6 | no | 0.6600 | loss dpo, beta 0.3, learning_rate 2e-05 |" in md
    assert out["best_dev_per_model"]["dpo"] == {"fast_dev": 0.66, "options": t["best_options"], "finished": False}
    assert out["best_dev_per_model"]["mnrl"]["fast_dev"] is None
    # a final.yaml model with no export at all leaves the finals incomplete (the verdicts provisional)
    mod = sys.modules["study"]
    config = mod.CONFIGS / "final.yaml"
    config.write_text(yaml.safe_dump({"losses": [*shifts, "dpo-hinge"], "variants": {}}))
    for path in final.glob("*/seed*.json"):
        path.write_text(json.dumps({**json.loads(path.read_text()), "config_sha": mod.config_sha(config)}))
    out = rep.write_study_report()
    assert not out["complete"] and out["verdicts"]["provisional"] is True
    assert (kept / "final_report" / "report.json").exists() and (kept / "data_efficiency.png").exists()


def test_best_point_spans_several_sweeps(study):
    mod, _, kept, _ = study
    kept.mkdir(parents=True)
    for name, scores in (("dpo", [0.61, 0.64]), ("dpo_epochs", [0.66, 0.60])):
        (kept / f"tune_{name}.json").write_text(json.dumps({"best": {"n": 0}, "points": [
            {"options": {"loss": "dpo", "n": i, "sweep": name}, "fast_dev": {"ndcg@10": s}}
            for i, s in enumerate(scores)]}))
    assert mod.best_point(["dpo"])["options"]["n"] == 1
    assert mod.best_point(["dpo", "dpo_epochs"])["options"] == {"loss": "dpo", "n": 0, "sweep": "dpo_epochs"}
    with pytest.raises(SystemExit, match="needs the sweep cmnrl run to its end first"):
        mod.best_point(["cmnrl"])
    (kept / "tune_cmnrl.json").write_text(json.dumps({"points": [  # still running: no best yet
        {"options": {"loss": "cmnrl"}, "fast_dev": {"ndcg@10": 0.9}}]}))
    with pytest.raises(SystemExit, match="needs the sweep cmnrl run to its end first"):
        mod.best_point(["cmnrl"])
    assert mod.best_point(["dpo", "dpo_epochs"], keep=lambda o: o["sweep"] == "dpo")["options"]["n"] == 1


def test_freeze_writes_the_finals_config_from_the_best_dev_points(study, tmp_path):
    """Each final model takes the best fast-dev point of its own sweeps; a variant keeps only what differs
    from the shared run settings; the result is a compare config compare accepts."""
    mod, _, kept, configs = study
    kept.mkdir(parents=True)
    base = {"max_seq_length": 128, "num_train_epochs": 1, "per_device_train_batch_size": 32, "warmup_steps": 0.1,
            "seed": 42}

    def sweep(name, rows):
        (kept / f"tune_{name}.json").write_text(json.dumps({"best": rows[0][0], "points": [
            {"options": {**base, **o}, "fast_dev": {"ndcg@10": s}} for o, s in rows]}))

    sweep("contrastive", [({"loss": "contrastive", "learning_rate": 1e-4, "mnrl_scale": 20}, 0.68),
                          ({"loss": "contrastive", "learning_rate": 2e-5, "mnrl_scale": 40}, 0.66)])
    sweep("contrastive_epochs", [({"loss": "contrastive", "learning_rate": 1e-4, "mnrl_scale": 20,
                                   "num_train_epochs": 3}, 0.69)])
    sweep("cmnrl", [({"loss": "cmnrl", "learning_rate": 4e-4, "mnrl_scale": 10, "per_device_train_batch_size": 128,
                      "mini_batch_size": 32}, 0.67)])
    sweep("cmnrl_epochs", [({"loss": "cmnrl", "learning_rate": 4e-4, "mnrl_scale": 10, "num_train_epochs": 2,
                             "per_device_train_batch_size": 128, "mini_batch_size": 32}, 0.6)])
    sweep("dpo", [({"loss": "dpo", "learning_rate": 5e-5, "beta": 0.3}, 0.67)])
    sweep("dpo_epochs", [({"loss": "dpo", "learning_rate": 5e-5, "beta": 0.3, "num_train_epochs": 2}, 0.6)])
    sweep("dpo_knobs", [({"loss": "dpo", "learning_rate": 5e-5, "beta": 0.3, "dropout": "off"}, 0.675)])
    sweep("variants", [({"loss": "dpo+mnrl", "learning_rate": 5e-5, "beta": 0.3, "mnrl_weight": 0.5}, 0.68),
                       ({"loss": "sdpo", "learning_rate": 5e-5, "beta": 0.3, "sdpo_gamma": 0.5}, 0.66),
                       ({"loss": "dpo", "learning_rate": 5e-5, "beta": 0.3, "loss_type": "hinge",
                         "hinge_margin": 2.0}, 0.65)])
    # the confirmation at the full budget (amendment 2): dpo+mnrl's beats its screening, the hinge's does not
    sweep("dpo_confirm", [({"loss": "dpo+mnrl", "learning_rate": 5e-5, "beta": 0.3, "mnrl_weight": 0.5,
                            "num_train_epochs": 2}, 0.69),
                           ({"loss": "dpo", "learning_rate": 5e-5, "beta": 0.3, "loss_type": "hinge",
                             "hinge_margin": 1.0, "num_train_epochs": 2}, 0.695)])  # above every dpo row
    for family, options, score in (("contrastive", {"loss": "contrastive", "learning_rate": 1e-4, "mnrl_scale": 20,
                                                    "num_train_epochs": 3}, 0.685),
                                   ("cmnrl", {"loss": "cmnrl", "learning_rate": 4e-4, "mnrl_scale": 10,
                                              "per_device_train_batch_size": 128, "mini_batch_size": 32}, 0.665),
                                   ("dpo", {"loss": "dpo", "learning_rate": 5e-5, "beta": 0.3}, 0.67)):
        sweep(f"{family}_negatives", [({**options, "negatives": 2}, score), ({**options, "negatives": 4}, score - 0.01)])
    # amendment 5: mnrl's best trains 3 epochs, the most the plan gives: its point at 4 epochs comes first
    with pytest.raises(SystemExit, match=r"freeze: mnrl: its best trains 3 epochs.*num_train_epochs: 4.*"
                                         r"tune_contrastive_epochs4\.yaml"):
        mod.freeze()
    assert not (configs / "final.yaml").exists()
    sweep("contrastive_epochs4", [({"loss": "contrastive", "learning_rate": 1e-4, "mnrl_scale": 20,
                                    "num_train_epochs": 4}, 0.688)])  # recorded, below 3 epochs: 3 stays
    cfg = yaml.safe_load(mod.freeze().read_text())
    v = cfg["variants"]
    # no family's best trains on more than one negative: the config is the one before the option existed
    assert "negatives" not in cfg and "train_negatives" not in cfg
    assert not any("train_negatives" in x or "negatives" in x for x in v.values())
    assert v["mnrl"] == {"loss": "contrastive", "num_train_epochs": 3, "learning_rate": 1e-4, "mnrl_scale": 20,
                         "wise_ft": [0.5]}
    assert v["cmnrl"]["per_device_train_batch_size"] == 128 and v["dpo"]["dropout"] == "off"
    assert v["dpo-hinge"] == {"loss": "dpo", "num_train_epochs": 2, "learning_rate": 5e-5, "beta": 0.3,
                              "loss_type": "hinge", "hinge_margin": 1.0}  # its confirmation: never dpo's
    assert "loss_type" not in v["dpo"]
    # amendment 4: of the variants only the best on dev (the hinge's 0.695 over dpo+mnrl's 0.69, sdpo's 0.66)
    assert cfg["losses"] == ["mnrl", "cmnrl", "dpo", "dpo-hinge"]
    assert "dpo-hinge (fast dev nDCG@10: dpo-mnrl 0.6900, sdpo 0.6600, dpo-hinge 0.6950)" in (configs / "final.yaml").read_text()
    from dpo_retrieval.cli import parse_command
    from dpo_retrieval.experiment.compare import check_options

    args = parse_command("compare", ["--output", str(tmp_path / "run")],
                         {k: x for k, x in cfg.items()})[0]
    check_options(args)  # every variant is a valid compare variant
    assert mod.final_models(configs / "final.yaml") == ["mnrl", "mnrl-wiseft0.5", "cmnrl", "cmnrl-wiseft0.5", "dpo",
                                                        "dpo-hinge"]  # amendment 6: WiSE-FT of both contrastive models
    with pytest.raises(SystemExit, match="exists .* --force replaces it"):
        mod.freeze()  # the finals' config is never replaced by accident
    # DPO's best is now 4 negatives: the finals mine 4 per positive and every other model trains on the first
    sweep("dpo_negatives", [({"loss": "dpo", "learning_rate": 5e-5, "beta": 0.3, "negatives": 4}, 0.7)])
    cfg = yaml.safe_load(mod.freeze(force=True).read_text())
    assert (cfg["negatives"], cfg["train_negatives"]) == (4, 1)
    assert cfg["variants"]["dpo"] == {"loss": "dpo", "learning_rate": 5e-5, "beta": 0.3, "train_negatives": 4}
    assert cfg["variants"]["mnrl"] == v["mnrl"] and "train_negatives" not in cfg["variants"]["dpo-hinge"]
    args = parse_command("compare", ["--output", str(tmp_path / "run")], dict(cfg))[0]
    assert (args.mining.negatives, args.train_negatives) == (4, 1)
    check_options(args)
    sweep("contrastive_epochs4", [({"loss": "contrastive", "learning_rate": 1e-4, "mnrl_scale": 20,
                                    "num_train_epochs": 4}, 0.7)])  # the point beyond wins: it is taken, not extended
    assert yaml.safe_load(mod.freeze(force=True).read_text())["variants"]["mnrl"]["num_train_epochs"] == 4
    (kept / "tune_dpo_negatives.json").unlink()
    with pytest.raises(SystemExit, match="freeze: dpo: needs the sweep dpo_negatives run to its end"):
        mod.freeze(force=True)
    sweep("dpo_negatives", [({"loss": "dpo", "learning_rate": 5e-5, "beta": 0.3, "negatives": 2}, 0.6)])
    (kept / "tune_variants.json").unlink()
    with pytest.raises(SystemExit, match="freeze: dpo-mnrl: needs the sweep variants run to its end"):
        mod.freeze(force=True)


def test_confirm_trains_each_screened_best_at_the_full_budget(study, tmp_path, monkeypatch, capsys):
    """Amendment 2: tune_dpo_confirm's points are the best screened row of each DPO-family final model (dpo's
    knob only if it beat its screening base), on the best of DPO's grid, epoch and negatives sweeps: the screened
    options that differ from it, the epochs and negatives from it."""
    mod, _, kept, configs = study
    monkeypatch.setattr(mod, "RUN", tmp_path / "run")
    kept.mkdir(parents=True)
    base = {"loss": "dpo", "learning_rate": 1e-4, "beta": 10.0, "num_train_epochs": 1, "seed": 42}

    def sweep(name, rows):
        (kept / f"tune_{name}.json").write_text(json.dumps({"best": {"n": 0}, "points": [
            {"options": {**base, **o}, "fast_dev": {"ndcg@10": s}} for o, s in rows]}))

    sweep("dpo", [({}, 0.70), ({"beta": 3.0}, 0.69)])
    sweep("dpo_epochs", [({"num_train_epochs": 3}, 0.71)])
    sweep("dpo_negatives", [({"num_train_epochs": 3, "negatives": 2}, 0.72)])
    sweep("dpo_knobs", [({"dropout": "off"}, 0.705), ({"scale": 40.0}, 0.69)])
    sweep("variants", [({"loss": "dpo+mnrl", "mnrl_weight": 0.25}, 0.72), ({"loss": "dpo+mnrl", "mnrl_weight": 0.5}, 0.73),
                       ({"loss": "sdpo", "sdpo_gamma": 0.5}, 0.68),
                       ({"loss_type": "hinge", "hinge_margin": 1.0}, 0.69)])
    (configs / "tune_dpo_knobs.yaml").write_text("dataset: scifact\nbase_on: [dpo]\n")
    (configs / "tune_dpo_confirm.yaml").write_text(yaml.safe_dump({
        "dataset": "scifact", "base_on": ["dpo", "dpo_epochs", "dpo_negatives"],
        "confirm": {"dpo": "dpo_knobs", "dpo-mnrl": "variants", "sdpo": "variants", "dpo-hinge": "variants"}},
        sort_keys=False))
    spec = yaml.safe_load(mod.resolved_grid("dpo_confirm").read_text())
    assert spec["fixed"] == {**base, "num_train_epochs": 3, "negatives": 2}
    assert spec["points"] == [{"dropout": "off"}, {"loss": "dpo+mnrl", "mnrl_weight": 0.5},
                              {"loss": "sdpo", "sdpo_gamma": 0.5}, {"loss_type": "hinge", "hinge_margin": 1.0}]
    sweep("dpo_knobs", [({"dropout": "off"}, 0.70)])  # no knob beats the screening base: dpo is not confirmed
    spec = yaml.safe_load(mod.resolved_grid("dpo_confirm").read_text())
    assert spec["points"][0] == {"loss": "dpo+mnrl", "mnrl_weight": 0.5} and len(spec["points"]) == 3
    assert "nothing of dpo to confirm" in capsys.readouterr().out
    # amendment 3: a variant's best at an end of its planned list is extended once before it is confirmed
    sweep("variants", [({"loss": "dpo+mnrl", "mnrl_weight": 0.5}, 0.72), ({"loss": "dpo+mnrl", "mnrl_weight": 0.75}, 0.73),
                       ({"loss": "sdpo", "sdpo_gamma": 0.5}, 0.68), ({"loss_type": "hinge", "hinge_margin": 1.0}, 0.69)])
    with pytest.raises(SystemExit, match=r"confirm: dpo-mnrl: its best screened mnrl_weight \(0.75\) is its list's "
                                         r"end: add \{mnrl_weight: 0.9\} to configs/study/tune_variants.yaml"):
        mod.resolved_grid("dpo_confirm")
    for beyond, score in ((0.9, 0.71), (0.9, 0.74)):  # the point beyond is screened; best or not, no further step
        sweep("variants", [({"loss": "dpo+mnrl", "mnrl_weight": 0.75}, 0.73),
                           ({"loss": "dpo+mnrl", "mnrl_weight": beyond}, score), ({"loss": "sdpo", "sdpo_gamma": 0.5}, 0.68),
                           ({"loss_type": "hinge", "hinge_margin": 0.5}, 0.69),
                           ({"loss_type": "hinge", "hinge_margin": 0.25}, 0.70)])
        spec = yaml.safe_load(mod.resolved_grid("dpo_confirm").read_text())
        assert {"loss": "dpo+mnrl", "mnrl_weight": 0.75 if score < 0.73 else 0.9} in spec["points"]
        assert {"loss_type": "hinge", "hinge_margin": 0.25} in spec["points"]
    sweep("variants", [({"loss": "dpo+mnrl", "mnrl_weight": 0.5}, 0.72), ({"loss": "sdpo", "sdpo_gamma": 1.0}, 0.68),
                       ({"loss_type": "hinge", "hinge_margin": 0.5}, 0.69)])  # sdpo's gamma 1: its range's bound
    with pytest.raises(SystemExit, match=r"dpo-hinge: its best screened hinge_margin \(0.5\) .* add \{hinge_margin: 0.25\}"):
        mod.resolved_grid("dpo_confirm")
    (configs / "tune_dpo_confirm.yaml").write_text(yaml.safe_dump({"dataset": "scifact", "base_on": ["dpo"],
                                                                    "confirm": {"mnrl": "contrastive"}}))
    with pytest.raises(SystemExit, match="confirm: 'mnrl' is not a DPO-family final model"):
        mod.resolved_grid("dpo_confirm")
    (configs / "tune_dpo_knobs.yaml").write_text("dataset: scifact\n")
    (configs / "tune_dpo_confirm.yaml").write_text("dataset: scifact\nconfirm: {dpo: dpo_knobs}\n")
    with pytest.raises(SystemExit, match="confirm: dpo: .*tune_dpo_knobs.yaml has no base_on"):
        mod.resolved_grid("dpo_confirm")
    (configs / "tune_dpo_confirm.yaml").write_text("dataset: scifact\nconfirm: [dpo_knobs]\n")
    with pytest.raises(SystemExit, match="tune_dpo_confirm.yaml: confirm: a mapping of final model to sweep name"):
        mod.resolved_grid("dpo_confirm")


def test_negatives_sweeps_train_on_a_checked_second_mining(study, tmp_path, monkeypatch):
    """A tune file's ``mine_negatives: 4`` mines runs/study/mine_neg4 once (the study's corpus embeddings
    offered for reuse), checks its dev split and its first negatives against the study's, records its digest
    beside the study's (whose keys stay as they were) and makes it the grid's triplets; a later change to
    any of it is refused. The three *_negatives sweeps are one shape."""
    from dpo_retrieval.data.beir import load_beir
    from dpo_retrieval.experiment.sweep import read_grid
    from dpo_retrieval.mining import MineArgs, mine
    from test_mining import write_beir

    mod, _, kept, configs = study
    train = load_beir(write_beir(tmp_path / "ds"), "train")
    monkeypatch.setattr(mod, "RUN", tmp_path / "run")
    monkeypatch.setattr(mod, "MINE", tmp_path / "run" / "mine")
    calls = []

    def fake_cli(*args):  # `dpo-retrieval mine` on a tiny BEIR set by BM25 (same seed, window, ranks)
        calls.append(args)
        out = Path(args[args.index("--output") + 1])
        k = int(args[args.index("--negatives") + 1]) if "--negatives" in args else 1
        mine(None, train, out, MineArgs(source="bm25", negatives=k, rank_min=1, rank_max=40))
        if k == 1:
            (out / "corpus_embeddings.npy").write_bytes(b"npy")
            (out / "corpus_embeddings.npy.json").write_text("{}")

    monkeypatch.setattr(mod, "_cli", fake_cli)
    real = Path(__file__).resolve().parents[1] / "configs" / "study"
    shapes = {}
    for family in ("contrastive", "cmnrl", "dpo"):
        spec = yaml.safe_load((real / f"tune_{family}_negatives.yaml").read_text())
        assert spec.pop("base_on") == [family, f"{family}_epochs"]
        shapes[family] = spec
        (configs / f"tune_{family}_negatives.yaml").write_text((real / f"tune_{family}_negatives.yaml").read_text())
    assert shapes["contrastive"] == shapes["cmnrl"] == shapes["dpo"] == {
        "dataset": "scifact", "mine_negatives": 4, "points": [{"negatives": 2}, {"negatives": 4}]}
    kept.mkdir(parents=True)
    for name, rows in (("dpo", [({"loss": "dpo", "beta": 1.0}, 0.6), ({"loss": "dpo", "beta": 3.0}, 0.7)]),
                       ("dpo_epochs", [({"loss": "dpo", "beta": 3.0, "num_train_epochs": 2}, 0.65)])):
        (kept / f"tune_{name}.json").write_text(json.dumps({"best": rows[0][0], "points": [
            {"options": o, "fast_dev": {"ndcg@10": x}} for o, x in rows]}))
    mod.ensure_mine()
    pinned = json.loads((kept / "triplets.json").read_text())
    grid = yaml.safe_load(mod.resolved_grid("dpo_negatives").read_text())
    neg4 = mod.RUN / "mine_neg4"
    assert grid["triplets"] == str(neg4 / "triplets.jsonl") and "mine_negatives" not in grid
    assert grid["fixed"] == {"negatives": 1, "loss": "dpo", "beta": 3.0} and grid["mine"] == str(mod.MINE)
    assert read_grid(mod.RUN / "tune" / "dpo_negatives.yaml")["points"] == [{"negatives": 2}, {"negatives": 4}]
    assert [list(c[-2:]) for c in calls] == [["--negatives", "1"], ["--negatives", "4"]]  # the study's mining: 1 negative
    assert (neg4 / "corpus_embeddings.npy").read_bytes() == b"npy"  # offered to mine, which checks its key
    record = json.loads((kept / "triplets.json").read_text())
    assert list(record) == [*pinned, "negatives_4"] and {k: record[k] for k in pinned} == pinned
    assert record["negatives_4"]["sha256_16"] == mod._sha(neg4 / "triplets.jsonl") != pinned["sha256_16"]
    assert mod.first_negative_sha(neg4 / "triplets.jsonl") == pinned["sha256_16"]
    assert mod.negatives_per_row(neg4 / "triplets.jsonl") == 4
    mod.resolved_grid("dpo_negatives")  # mined and recorded: nothing runs again
    assert len(calls) == 2

    def edited(column, row=3):
        lines = original.splitlines(keepends=True)
        r = json.loads(lines[row])
        r[column] = r[column] + " (edited)"
        lines[row] = json.dumps(r, ensure_ascii=False) + "\n"
        (neg4 / "triplets.jsonl").write_text("".join(lines), encoding="utf-8")

    original = (neg4 / "triplets.jsonl").read_text(encoding="utf-8")
    edited("negative_3")
    with pytest.raises(SystemExit, match="differ from the study's with 4 negatives .* under negatives_4"):
        mod.resolved_grid("dpo_negatives")
    edited("negative_1")
    with pytest.raises(SystemExit, match="differ from the study's in anchor, positive and negative_1"):
        mod.resolved_grid("dpo_negatives")
    (neg4 / "triplets.jsonl").write_text(original, encoding="utf-8")
    mod.resolved_grid("dpo_negatives")
    dev = (neg4 / "dev_qrels.tsv").read_text()
    (neg4 / "dev_qrels.tsv").write_text(dev + "x\ty\t1\n")
    with pytest.raises(SystemExit, match="dev_qrels.tsv: not the study's dev split"):
        mod.resolved_grid("dpo_negatives")
    assert json.loads((kept / "triplets.json").read_text()) == record


def test_a_new_sweep_starts_from_the_recorded_fast_pool(study):
    """share_pool seeds a new sweep's results file with another sweep's pool and base scores (no second
    encoding of the corpus), never overwrites a results file, and an unknown sweep name fails first."""
    mod, _, kept, configs = study
    kept.mkdir(parents=True)
    pool = {"key": "k", "depth": 20, "pool": {"q": ["d"]}, "base_run": {"q": {"d": 0.5}}}
    (kept / "tune_contrastive.json").write_text(json.dumps({"points": [], "fast_pool": pool}))
    mod.share_pool(kept / "tune_dpo.json")
    assert json.loads((kept / "tune_dpo.json").read_text()) == {"points": [], "fast_pool": pool}
    (kept / "tune_x.json").write_text('{"points": [1]}')
    mod.share_pool(kept / "tune_x.json")
    assert json.loads((kept / "tune_x.json").read_text()) == {"points": [1]}
    (configs / "tune_dpo.yaml").write_text("dataset: scifact\n")
    with pytest.raises(SystemExit, match="no sweep nope .* known: dpo"):
        mod.tune(["dpo", "nope"])


def _fake_compare(monkeypatch, mod, tmp_path, calls: list) -> None:
    """``S._cli`` as a compare that writes, for the seed and --losses it is given, what export_run reads (each
    loss's model, its WiSE-FT models from the config's or --variants' variants, the base); records
    ``(size, seed, losses)`` per call (size: --max_triplets, None in the finals)."""
    monkeypatch.setattr(mod, "RUN", tmp_path / "run")
    monkeypatch.setattr(mod, "check_triplets", lambda *a, **k: "sha")
    monkeypatch.setattr(mod, "_drift_pool", lambda: None)

    def cli(*args, log=None, threads=None):
        a = list(args)
        assert a[0] == "compare"
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(f"threads {threads}")
        cfg = yaml.safe_load(Path(a[1]).read_text())
        seed, out, losses = int(a[a.index("--seeds") + 1]), Path(a[a.index("--output") + 1]), a[a.index("--losses") + 1]
        size = int(a[a.index("--max_triplets") + 1]) if "--max_triplets" in a else None
        calls.append((size, seed, losses.split(",")))
        if not (out / "mine.stage.json").exists() or json.loads((out / "mine.stage.json").read_text())["status"] != "done":
            _fake_mining(out, key="compare's")  # as compare mines a run directory without a finished mining
        variants = json.loads(a[a.index("--variants") + 1]) if "--variants" in a else cfg["variants"]
        rng = np.random.default_rng(seed)
        names = ["base"]
        for loss in losses.split(","):
            names += [f"{loss}-seed{seed}"] + [f"{loss}-seed{seed}-wiseft{x:g}"
                                              for x in (variants.get(loss) or {}).get("wise_ft", [])]
        for name in names:
            for ds in ("scifact", "scifact-dev"):
                path = out / "eval" / name / f"{ds}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(_eval_json([f"q{i}" for i in range(5)], rng, 0.0)))
            (out / "models").mkdir(exist_ok=True)
            (out / "models" / f"{name}.stage.json").write_text(json.dumps({"key": {"train": {"seed": seed}},
                                                                           "train_seconds": 1.0}))

    monkeypatch.setattr(mod, "_cli", cli)


def _fake_mining(run: Path, key: str, status: str = "done") -> None:
    (run / "mine").mkdir(parents=True, exist_ok=True)
    (run / "mine" / "triplets.jsonl").write_text(json.dumps({"key": key}) + "\n")
    (run / "mine.stage.json").write_text(json.dumps({"hash": key, "status": status, "key": key}))


def _two_losses(study, tmp_path, monkeypatch) -> tuple[list, Path, Path]:
    """The fake compare (:func:`_fake_compare`) on a final.yaml of mnrl (with WiSE-FT 0.5) and dpo: ``(calls,
    config, the finals' export folder)``."""
    mod, _, kept, configs = study
    calls = []
    _fake_compare(monkeypatch, mod, tmp_path, calls)
    config = configs / "final.yaml"
    config.write_text(yaml.safe_dump({"losses": ["mnrl", "dpo"], "variants": {
        "mnrl": {"loss": "contrastive", "wise_ft": [0.5]}, "dpo": {"beta": 0.5}}}))
    return calls, config, kept / "final"


def test_run_unit_trains_only_the_missing_losses_of_each_seed(study, tmp_path, monkeypatch):
    """One compare call per seed and loss with a missing export (the loss or one of its WiSE-FT
    names, or one from another config); what is recorded is never exported over; nothing missing: no call."""
    mod, _, kept, configs = study
    calls, config, final = _two_losses(study, tmp_path, monkeypatch)
    mod.run_unit(config, mod.RUN / "final", final, [1, 2], [], ["mnrl", "dpo"])
    assert calls == [(None, 1, ["mnrl"]), (None, 1, ["dpo"]), (None, 2, ["mnrl"]), (None, 2, ["dpo"])]
    assert sorted(p.relative_to(final).as_posix() for p in final.rglob("*.json")) == sorted(
        ["base.json", *[f"{m}/seed{k}.json" for m in ("mnrl", "mnrl-wiseft0.5", "dpo") for k in (1, 2)]])

    def mark(path):  # a recorded export, told apart from any later export of the same model and seed
        path.write_text(json.dumps({**json.loads(path.read_text()), "marker": True}))

    for path in final.glob("*/seed*.json"):
        mark(path)
    calls.clear()
    (final / "dpo" / "seed2.json").unlink()
    mod.run_unit(config, mod.RUN / "final", final, [1, 2], [], ["mnrl", "dpo"])
    assert calls == [(None, 2, ["dpo"])]
    assert "marker" not in json.loads((final / "dpo" / "seed2.json").read_text())
    assert all(json.loads(p.read_text()).get("marker") for p in final.glob("*/seed*.json") if p.parts[-2:] !=
               ("dpo", "seed2.json"))
    calls.clear()  # a missing WiSE-FT model retrains its loss, exported with it (the pair from one training)
    (final / "mnrl-wiseft0.5" / "seed1.json").unlink()
    mod.run_unit(config, mod.RUN / "final", final, [1, 2], [], ["mnrl", "dpo"])
    assert calls == [(None, 1, ["mnrl"])]
    assert "marker" not in json.loads((final / "mnrl" / "seed1.json").read_text())
    assert json.loads((final / "dpo" / "seed1.json").read_text())["marker"]
    assert (final / "mnrl-wiseft0.5" / "seed1.json").exists()
    calls.clear()  # an export made from another config does not count
    other = final / "dpo" / "seed1.json"
    other.write_text(json.dumps({**json.loads(other.read_text()), "config_sha": "older"}))
    mod.run_unit(config, mod.RUN / "final", final, [1, 2], [], ["mnrl", "dpo"])
    assert calls == [(None, 1, ["dpo"])]
    assert json.loads(other.read_text())["config_sha"] == mod.config_sha(config)
    calls.clear()
    mod.run_unit(config, mod.RUN / "final", final, [1, 2], [], ["mnrl", "dpo"])
    assert calls == []


def test_seed_run_dir_replaces_only_a_copy_of_another_mining(study, tmp_path):
    from dpo_retrieval._io import hold_lock
    from dpo_retrieval.errors import UserInputError

    mod = study[0]
    src, dst = tmp_path / "final", tmp_path / "final.job1"
    _fake_mining(src, key="A")
    _fake_mining(dst, key="A")
    stage = json.loads((dst / "mine.stage.json").read_text())
    (dst / "mine.stage.json").write_text(json.dumps({**stage, "seconds": 9.5}))  # the same mining, other timing
    (dst / "eval" / "base").mkdir(parents=True)
    (dst / "eval" / "base" / "scifact.json").write_text("job's")
    mod.seed_run_dir(src, dst)
    assert (dst / "eval" / "base" / "scifact.json").read_text() == "job's"  # kept: nothing to redo
    _fake_mining(src, key="B", status="running")  # the source's own mining cut off: the copy is left alone
    mod.seed_run_dir(src, dst)
    assert json.loads((dst / "mine.stage.json").read_text())["hash"] == "A"
    _fake_mining(src, key="B")
    mod.seed_run_dir(src, dst)  # another key's finished mining: the copy is replaced, its base evaluation too
    assert json.loads((dst / "mine.stage.json").read_text())["hash"] == "B" and not (dst / "eval" / "base").exists()
    with hold_lock(dst / "compare.lock"), pytest.raises(UserInputError, match="already running"):
        mod.seed_run_dir(src, dst)  # a compare still running there


def test_jobs_run_units_side_by_side_each_in_its_own_run_directory(study, tmp_path, monkeypatch):
    """--jobs 2: the same units as one job (a run directory without a mining runs its first unit alone), each job
    in its own run directory (job 1 in a copy of the mining), each unit logged; every export lands. A failing unit
    stops the rest and is raised."""
    mod, _, kept, configs = study
    calls, config, final = _two_losses(study, tmp_path, monkeypatch)
    _fake_mining(mod.RUN / "final", key="final's")  # as compare leaves it: job 1 starts from a copy of it
    _fake_mining(mod.RUN / "final.job1", key="stale")  # a copy from an older mining: replaced, not mined again
    mod.run_unit(config, mod.RUN / "final", final, [1, 2, 3], [], ["mnrl", "dpo"], jobs=2)
    assert sorted(calls) == sorted((None, k, [m]) for k in (1, 2, 3) for m in ("mnrl", "dpo"))
    assert sorted(p.relative_to(final).as_posix() for p in final.rglob("*.json")) == sorted(
        ["base.json", *[f"{m}/seed{k}.json" for m in ("mnrl", "mnrl-wiseft0.5", "dpo") for k in (1, 2, 3)]])
    logs = sorted(p.name for p in (mod.RUN / "logs").glob("*.log"))
    assert len(logs) == 6 and all(n.startswith(("final-", "final.job1-")) for n in logs)
    assert (mod.RUN / "final.job1" / "mine" / "triplets.jsonl").read_text() == '{"key": "final\'s"}\n'
    # a unit begun in job 1's run directory (an interrupted training) goes back to job 1, whichever job is free first
    shutil.rmtree(final / "dpo")
    (mod.RUN / "final.job1" / "models" / "dpo-seed3").mkdir(parents=True)
    for log in (mod.RUN / "logs").glob("*.log"):
        log.unlink()
    calls.clear()
    mod.run_unit(config, mod.RUN / "final", final, [1, 2, 3], [], ["mnrl", "dpo"], jobs=2)
    assert sorted(calls) == [(None, k, ["dpo"]) for k in (1, 2, 3)]
    assert (mod.RUN / "logs" / "final.job1-dpo-seed3.log").exists()
    calls.clear()  # a run directory without a finished mining: its first unit runs alone, on every core, first
    _fake_mining(mod.RUN / "final", key="cut off", status="running")
    mod.run_unit(config, mod.RUN / "n8", kept / "data" / "n8", [1, 2], ["--max_triplets", "8"], ["dpo"], jobs=2)
    assert calls[0] == (8, 1, ["dpo"]) and len(calls) == 2
    assert not (mod.RUN / "logs" / "n8-dpo-seed1.log").exists()  # alone: its output in this process's
    assert len(list((mod.RUN / "logs").glob("n8*-dpo-seed2.log"))) == 1
    assert {p.read_text() for p in (mod.RUN / "logs").glob("*.log")} == {f"threads {max(1, (os.cpu_count() or 1) // 2)}"}
    calls.clear()
    mod.run_unit(config, mod.RUN / "final", final, [1, 2, 3], [], ["mnrl", "dpo"], jobs=2)
    assert calls == []
    shutil.rmtree(final)
    real = mod._cli

    def failing(*args, log=None, threads=None):
        if args[args.index("--seeds") + 1] == "1" and args[args.index("--losses") + 1] == "dpo":
            raise subprocess.CalledProcessError(1, ["python", *args])
        real(*args, log=log, threads=threads)

    monkeypatch.setattr(mod, "_cli", failing)
    with pytest.raises(subprocess.CalledProcessError):
        mod.run_unit(config, mod.RUN / "final", final, [1, 2, 3], [], ["mnrl", "dpo"], jobs=2)
    assert len(calls) < 5  # the queue stops after the failure (at most the other job's running unit finishes)


def test_data_runs_the_plans_models_first_and_adds_the_best_variant_after_the_finals(study, tmp_path,
                                                                                      monkeypatch, capsys):
    """Before every final seed of the DPO variants is recorded, data runs the plan's data_models and says
    the variant follows; once they are, the variant best on dev joins and only its (size, seed) runs train
    (sizes smallest first, one compare call per size, seed and model, no WiSE-FT). The report reads a size that has
    only some models: the missing ones are rows without seeds and in no comparison."""
    mod, rep, kept, configs = study
    calls = []
    _fake_compare(monkeypatch, mod, tmp_path, calls)
    # the protocol's drift is the tuning points' and the final models': a data run's model is not scored for it
    monkeypatch.setattr(mod, "_drift_pool", lambda: pytest.fail("a data unit asked for the drift pool"))
    (configs / "study.yaml").write_text(yaml.safe_dump({
        "fast_depth": 20, "seeds": [1, 2, 3], "data_sizes": [128, 64], "data_seeds": [1, 2],
        "data_models": ["mnrl", "dpo"], "contrastive_models": ["mnrl", "cmnrl"],
        "dpo_models": ["dpo", "sdpo", "dpo-hinge"]}))
    config = configs / "final.yaml"
    config.write_text(yaml.safe_dump({"losses": ["mnrl", "dpo", "sdpo", "dpo-hinge"], "variants": {
        "mnrl": {"loss": "contrastive", "wise_ft": [0.5]}, "dpo": {"beta": 0.5}, "sdpo": {"loss": "sdpo"},
        "dpo-hinge": {"loss": "dpo", "loss_type": "hinge"}}}))
    sha = mod.config_sha(config)

    def final_seeds(model, seeds, dev):
        for seed in seeds:
            _export(kept / "final", model, seed, {"scifact": 0.0, "scifact-dev": dev})
            path = kept / "final" / model / f"seed{seed}.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), "config_sha": sha}))

    final_seeds("sdpo", [1, 2, 3], 0.05)
    final_seeds("dpo-hinge", [1, 2], 0.0)  # one variant still lacks a final seed
    mod.data()
    assert calls == [(n, k, [m]) for n in (64, 128) for k in (1, 2) for m in ("mnrl", "dpo")]
    out = capsys.readouterr().out
    assert out.count("the best DPO variant's data runs follow once the finals are recorded") == 1
    assert sorted(p.relative_to(kept / "data" / "n64").as_posix() for p in (kept / "data" / "n64").rglob("*.json")) \
        == ["base.json", "dpo/seed1.json", "dpo/seed2.json", "mnrl/seed1.json", "mnrl/seed2.json"]  # no WiSE-FT
    calls.clear()
    final_seeds("dpo-hinge", [3], 0.0)
    mod.data()
    assert calls == [(64, 1, ["sdpo"]), (64, 2, ["sdpo"]), (128, 1, ["sdpo"]), (128, 2, ["sdpo"])]
    assert "follow once" not in capsys.readouterr().out
    calls.clear()
    mod.data()
    assert calls == []
    # amendment 4: a final.yaml with one DPO variant (freeze keeps the best on dev) runs it from the start
    one = dict(yaml.safe_load(config.read_text()), losses=["mnrl", "dpo", "dpo-hinge"])
    config.write_text(yaml.safe_dump(one))
    assert mod.data_models(yaml.safe_load((configs / "study.yaml").read_text())) == ["mnrl", "dpo", "dpo-hinge"]
    config.write_text(yaml.safe_dump(dict(one, losses=["mnrl", "dpo", "sdpo", "dpo-hinge"])))
    # the report while n128 lacks the variant (and one seed of dpo)
    shutil.rmtree(kept / "data" / "n128" / "sdpo")
    (kept / "data" / "n128" / "dpo" / "seed2.json").unlink()
    p = yaml.safe_load((configs / "study.yaml").read_text())
    data = rep.data_section(p, rep.load_group(kept / "final", sha), sha, ["mnrl", "dpo", "sdpo"])
    rows = {(r["size"], r["model"]): r for r in data["rows"]}
    assert rows[(64, "sdpo")]["seeds"] == [1, 2] and rows[(128, "dpo")]["seeds"] == [1]
    assert rows[(128, "sdpo")]["seeds"] == [] and rows[(128, "sdpo")]["mean"] is None
    assert {(c["label"], c["model"]) for c in data["comparisons"]} == {("64", "dpo"), ("64", "sdpo"), ("128", "dpo")}
    md = rep.render({"tuning": {}, "final": {"rows": {}, "comparisons": {}}, "data_efficiency": data, "verdicts": None})
    assert "| 128 | sdpo | — | not recorded |" in md
    # "all" (the finals at data_seeds) has sdpo and nothing of mnrl or dpo: plotted without them
    assert rows[("all", "sdpo")]["seeds"] == [1, 2] and rows[("all", "mnrl")]["mean"] is None
    rep.plots(data, {"beta_curve": []})
    assert (kept / "data_efficiency.png").exists()
    # the finals' variant before any size recorded it: a row per size with no seeds, in no comparison
    fresh = rep.data_section(p, rep.load_group(kept / "final", sha), sha, ["mnrl", "dpo", "dpo-mnrl"])
    rows = {(r["size"], r["model"]): r for r in fresh["rows"]}
    assert all(rows[(n, "dpo-mnrl")]["seeds"] == [] and rows[(n, "dpo-mnrl")]["mean"] is None for n in (64, 128, "all"))
    assert "dpo-mnrl" not in {c["model"] for c in fresh["comparisons"]}


def test_ablation_trains_a_final_model_with_options_changed_and_tests_it_against_that_model(study, tmp_path,
                                                                                              monkeypatch):
    """study.yaml's ablations: one compare call per missing seed, the final model's variant (no WiSE-FT) with `set`
    on top, scored with the finals' drift; the report tests each ablation against its model at the seeds both have
    (paired, Holm over the section), says provisional until every ablation seed is in, and no verdict moves."""
    mod, rep, kept, configs = study
    abl = importlib.import_module("study_ablation")
    calls, config, final = _two_losses(study, tmp_path, monkeypatch)
    fake, variants, drift = mod._cli, [], []
    monkeypatch.setattr(mod, "_cli", lambda *a, **k: (variants.append(json.loads(a[a.index("--variants") + 1])),
                                                      fake(*a, **k)))
    monkeypatch.setattr(mod, "_drift_pool", lambda: drift.append(1))
    p = yaml.safe_load((configs / "study.yaml").read_text())
    (configs / "study.yaml").write_text(yaml.safe_dump({**p, "ablations": {"dpo-b1": {"of": "dpo", "set": {"beta": 1.0}}},
                                                        "ablation_seeds": [1, 2]}))
    abl.ablation()
    assert calls == [(None, 1, ["dpo-b1"]), (None, 2, ["dpo-b1"])] and len(drift) == 2
    assert variants[0] == {"dpo-b1": {"beta": 1.0}}
    assert sorted(p.relative_to(kept / "ablation").as_posix() for p in (kept / "ablation").rglob("*.json")) == [
        "base.json", "dpo-b1/seed1.json", "dpo-b1/seed2.json"]
    calls.clear()
    abl.ablation()
    assert calls == []  # all recorded
    (configs / "study.yaml").write_text(yaml.safe_dump({**p, "ablations": {"x": {"of": "sdpo", "set": {}}},
                                                        "ablation_seeds": [1]}))
    with pytest.raises(SystemExit, match="ablation x: its model 'sdpo' is not a variant of"):
        abl.ablation()
    # the report: finals of dpo at seeds 1-3, the ablation at seed 1 so far, 0.03 above dpo everywhere; also
    # tested against mnrl (its `against` list), 0.01 above it
    (configs / "study.yaml").write_text(yaml.safe_dump({**p, "ablations": {"dpo-b1": {"of": "dpo", "set": {"beta": 1.0},
                                                                                      "against": ["mnrl"]}},
                                                        "ablation_seeds": [1, 2]}))
    shutil.rmtree(kept / "ablation")
    config.unlink()
    sets = ("scifact", "scifact-dev", "dbpedia-entity-5k")
    _export(final, "base", None, dict.fromkeys(sets, 0.0))
    for model, shift in (("mnrl", 0.02), ("cmnrl", 0.01), ("dpo", 0.0), ("sdpo", 0.0)):
        for seed in (1, 2, 3):
            _export(final, model, seed, dict.fromkeys(sets, shift))
    _export(kept / "ablation", "dpo-b1", 1, dict.fromkeys(sets, 0.03))
    before = rep.write_study_report()
    sec = before["ablations"]
    assert not sec["complete"] and {r["seeds"] == [1] for r in sec["rows"]} == {True}  # dpo at seed 1 only
    assert [(c["a"], c["b"], c["dataset"]) for c in sec["comparisons"]] == [
        ("dpo-b1", b, ds) for b in ("dpo", "mnrl") for ds in sets]
    assert [r["model"] for r in sec["rows"]] == ["dpo-b1", "dpo", "mnrl"]
    assert all(abs(c["diff"] - (0.03 if c["b"] == "dpo" else 0.01)) < 0.005 for c in sec["comparisons"])
    assert all(c["p_holm"] < 0.05 for c in sec["comparisons"] if c["b"] == "dpo")
    _export(kept / "ablation", "dpo-b1", 2, dict.fromkeys(sets, 0.03))
    out = rep.write_study_report()
    assert out["ablations"]["complete"] and out["ablations"]["rows"][0]["seeds"] == [1, 2]
    assert out["verdicts"] == before["verdicts"] and out["final"]["rows"] == before["final"]["rows"]
    md = (rep.OUT / "study_scifact.results.md").read_text()
    assert "## Ablations (post hoc" in md and "- dpo-b1: dpo with beta 1.0; also tested against mnrl" in md
    assert "| dpo-b1 − dpo | scifact |" in md and "| dpo-b1 − mnrl | scifact |" in md
    readme = sys.modules["study_readme"].README.read_text()
    assert "Ablations (post hoc" in readme and "| dpo-b1 − dpo | dbpedia-entity-5k | 0.53" in readme


def test_finals_and_data_units_end_to_end(study, tmp_path, tiny_model_path, monkeypatch):
    """run_unit on a tiny BEIR set and model: one compare call per missing seed and loss, each exported (base, each
    variant, the WiSE-FT model) under the config's identity; a second call runs nothing; data-size units
    with the variants' WiSE-FT dropped, two jobs side by side, export only what they trained."""
    from test_compare import write_tiny_beir

    mod, _, kept, configs = study
    data = write_tiny_beir(tmp_path / "tiny")
    monkeypatch.setattr(mod, "RUN", tmp_path / "run")
    config = configs / "final.yaml"
    config.write_text(yaml.safe_dump({
        "dataset": str(data), "model": tiny_model_path, "losses": ["mnrl", "dpo"], "seed": 1,
        "variants": {"mnrl": {"loss": "contrastive", "wise_ft": [0.5]}, "dpo": {"beta": 0.5, "train_negatives": 2}},
        "max_triplets": 10, "per_device_train_batch_size": 4, "train_max_seq_length": 32, "eval_max_seq_length": 32,
        "precision": "fp32", "top_k": 20, "rank_min": 2, "rank_max": 12, "dev_fraction": 0.2,
        "negatives": 2, "train_negatives": 1}))  # as freeze writes it when a final trains on 2 negatives
    mod.run_unit(config, mod.RUN / "final", kept / "final", [2, 3], [], ["mnrl", "dpo"])
    got = sorted(p.relative_to(kept / "final").as_posix() for p in (kept / "final").rglob("*.json"))
    assert got == sorted(["base.json", *[f"{m}/seed{k}.json" for m in ("dpo", "mnrl", "mnrl-wiseft0.5") for k in (2, 3)]])
    entry = json.loads((kept / "final" / "dpo" / "seed3.json").read_text())
    assert entry["config_sha"] == mod.config_sha(config) and entry["train_key"]["beta"] == 0.5
    assert set(entry["datasets"]) == {"tiny", "tiny-dev"} and entry["train_seconds"] > 0
    # the study's triplets are pinned at the first run: the mined file's first negatives, and the file itself
    pinned = json.loads((kept / "triplets.json").read_text())
    mined = mod.RUN / "final" / "mine" / "triplets.jsonl"
    assert pinned["sha256_16"] == mod.first_negative_sha(mined) and pinned["negatives_2"]["sha256_16"] == mod._sha(mined)
    assert entry["train_key"].get("negatives") is None  # dpo trains on all 2 mined
    mnrl = json.loads((kept / "final" / "mnrl" / "seed3.json").read_text())
    assert mnrl["train_key"]["negatives"] == 1

    def no_run(*args, **kw):
        raise AssertionError(f"ran {args}")

    real_cli = mod._cli
    monkeypatch.setattr(mod, "_cli", no_run)
    mod.run_unit(config, mod.RUN / "final", kept / "final", [2, 3], [], ["mnrl", "dpo"])  # all recorded
    monkeypatch.setattr(mod, "_cli", real_cli)
    no_wise = json.dumps({"mnrl": {"loss": "contrastive"}, "dpo": {"beta": 0.5}})
    mod.run_unit(config, mod.RUN / "n8", kept / "data" / "n8", [2, 3], ["--max_triplets", "8", "--variants", no_wise],
                 ["mnrl"], jobs=2)  # two compare processes: n8 (a copy of the finals' mining) and n8.job1
    got = sorted(p.relative_to(kept / "data" / "n8").as_posix() for p in (kept / "data" / "n8").rglob("*.json"))
    assert got == ["base.json", "mnrl/seed2.json", "mnrl/seed3.json"]
    assert (mod.RUN / "n8.job1" / "eval" / "mnrl-seed3").is_dir() or (mod.RUN / "n8.job1" / "eval" / "mnrl-seed2").is_dir()
    assert json.loads((kept / "data" / "n8" / "mnrl" / "seed3.json").read_text())["train_key"]["seed"] == 3


def test_the_edge_rule_stops_a_sweep_built_on_an_edge_best(study):
    """A base sweep whose best lies on an edge of a learning-rate, beta or scale axis must be extended (the
    plan's amendment) before anything is built on it; an interior best, or an edge on another axis, passes."""
    mod, _, kept, _ = study
    kept.mkdir(parents=True, exist_ok=True)

    def sweep(grid, best):
        points = [{"options": best, "fast_dev": {"ndcg@10": 0.7}}]
        (kept / "tune_g.json").write_text(json.dumps({"grid": {"grid": grid}, "best": best, "points": points}))

    sweep({"learning_rate": [1e-5, 2e-5, 4e-5], "beta": [1.0, 3.0, 10.0]}, {"learning_rate": 2e-5, "beta": 10.0})
    with pytest.raises(SystemExit, match="edge: add beta 30 to configs/study/tune_g.yaml"):
        mod.best_point(["g"])
    sweep({"learning_rate": [1e-5, 2e-5, 4e-5]}, {"learning_rate": 1e-5})
    assert mod.grid_edges(json.loads((kept / "tune_g.json").read_text())) == {"learning_rate": 5e-6}
    sweep({"learning_rate": [1e-5, 2e-5, 4e-5], "num_train_epochs": [1, 2]},
          {"learning_rate": 2e-5, "num_train_epochs": 2})
    assert mod.best_point(["g"])["options"]["learning_rate"] == 2e-5
