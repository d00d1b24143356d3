"""The study of issue 14: does a DPO variant beat the tuned contrastive loss on SciFact - in domain, out of
domain (dbpedia-entity-5k), with little data - and does it harm fewer queries?

Every step resumes, across sessions too: what a step finishes is written under benchmarks/results/study/
(kept in git) and a later run does only what is missing there. Models and run directories live under
runs/study/ and may be lost between sessions. Everything runs at fp32, so a figure does not depend on
whether the session's CPU has fast bf16.

    export DPO_RETRIEVAL_DATA=../shared/data/beir
    python scripts/study.py tune contrastive dpo          # dev sweeps: configs/study/tune_<name>.yaml
    python scripts/study.py freeze                        # configs/study/final.yaml from the best dev points
    python scripts/study.py finals                        # configs/study/final.yaml, seeds of study.yaml
    python scripts/study.py data                          # data efficiency: sizes x seeds of study.yaml
    python scripts/study.py report                        # study_scifact.{json,md} + plots
    python scripts/study.py status                        # what is recorded and what is left

Plan, budgets and the criteria stated before the finals: configs/study/study.yaml and
benchmarks/results/study_scifact.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = Path("runs") / "study"                      # relative to ROOT (the sweep's point ids hold this path)
KEPT = Path("benchmarks") / "results" / "study"   # what is kept in git
CONFIGS = Path("configs") / "study"
MINE = RUN / "mine"
#: a model directory's name in a compare run: <variant>[-seed<k>][-wiseft<alpha>]
MODEL_DIR = re.compile(r"^(?P<variant>.+?)(?:-seed(?P<seed>-?\d+))?(?:-wiseft(?P<alpha>[0-9.]+))?$")


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "dpo_retrieval", *args], check=True, cwd=ROOT)


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _write(path: Path, data) -> None:
    from dpo_retrieval._io import write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(data, path)


def plan() -> dict:
    import yaml

    return yaml.safe_load((CONFIGS / "study.yaml").read_text())


# ---------------------------------------------------------------------------------------------- triplets
def check_triplets(triplets: Path, *, what: str) -> str:
    """The triplet file's digest, checked against the one recorded when the study first mined: a session on
    another CPU must train on the same triplets (else every recorded result would be another experiment)."""
    digest = _sha(triplets)
    record = KEPT / "triplets.json"
    known = json.loads(record.read_text()) if record.exists() else {}
    if not known:
        _write(record, {"sha256_16": digest, "file": str(triplets), "lines": sum(1 for _ in open(triplets)),
                        "commit": _commit()})
    elif known["sha256_16"] != digest:
        raise SystemExit(f"{triplets}: triplets differ from the study's ({digest} != {known['sha256_16']} in {record}); "
                         f"{what} would train on other data. Find out why (mining settings, precision) before going on.")
    return digest


def ensure_mine() -> Path:
    """The study's mined triplets and dev split (the same mining as compare's: seed 42, fp32)."""
    if not (MINE / "triplets.jsonl").exists():
        _cli("mine", "--dataset", "scifact", "--output", str(MINE), "--precision", "fp32")
    check_triplets(MINE / "triplets.jsonl", what="the sweeps")
    return MINE


# ---------------------------------------------------------------------------------------------- tune
def best_point(names: list[str]) -> dict:
    """The row with the highest fast dev nDCG@10 over the recorded sweeps ``names`` together."""
    rows = []
    for other in names:
        done = KEPT / f"tune_{other}.json"
        if not done.exists():
            raise SystemExit(f"needs the sweep {other} first (python scripts/study.py tune {other})")
        rows += json.loads(done.read_text()).get("points", [])
    if not rows:
        raise SystemExit(f"the sweeps {', '.join(names)} have no scored point yet")
    return max(rows, key=lambda r: r["fast_dev"]["ndcg@10"])


def resolved_grid(name: str) -> Path:
    """configs/study/tune_<name>.yaml with ``base_on: [sweeps]`` resolved: the options of the best point of
    those sweeps together become this sweep's fixed options (before the file's own fixed); written under
    runs/study/tune/."""
    import yaml

    spec = yaml.safe_load((CONFIGS / f"tune_{name}.yaml").read_text())
    others = spec.pop("base_on", None)
    if others:
        spec["fixed"] = {**best_point([others] if isinstance(others, str) else others)["options"],
                         **(spec.get("fixed") or {})}
    spec.update({"mine": str(MINE), "output": str(RUN / "tune" / name)})
    out = RUN / "tune" / f"{name}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


def tune(names: list[str]) -> None:
    from dpo_retrieval.experiment.sweep import SweepArgs, run_sweep

    unknown = [n for n in names if not (CONFIGS / f"tune_{n}.yaml").exists()]
    if unknown:
        known = sorted(p.stem[5:] for p in CONFIGS.glob("tune_*.yaml"))
        raise SystemExit(f"tune: no sweep {', '.join(unknown)} (configs/study/tune_<name>.yaml); known: {', '.join(known)}")
    ensure_mine()
    for name in names:
        share_pool(KEPT / f"tune_{name}.json")
        summary = run_sweep(SweepArgs(grid=str(resolved_grid(name)), results=str(KEPT / f"tune_{name}.json"),
                                      precision="fp32", fast_depth=plan()["fast_depth"]))
        print(f"tune {name}: best {summary['best']}")


def share_pool(results: Path) -> None:
    """Start a new sweep's results file with the fast dev pool (and the base's scores on it) another sweep
    recorded: the same dev queries, base and depth, so it is not encoded again (run_sweep checks the key)."""
    if results.exists():
        return
    pool = _drift_pool()
    if pool:
        _write(results, {"points": [], "fast_pool": pool})


# ---------------------------------------------------------------------------------------------- freeze
#: the finals' models: name -> (the sweeps its best dev point is taken from, a filter on their rows)
FINALS = {
    "mnrl": (["contrastive", "contrastive_epochs"], lambda o: o["loss"] == "contrastive"),
    "cmnrl": (["cmnrl", "cmnrl_epochs"], lambda o: o["loss"] == "cmnrl"),
    "dpo": (["dpo", "dpo_epochs", "dpo_knobs"], lambda o: o["loss"] == "dpo"),
    "dpo-mnrl": (["variants"], lambda o: o["loss"] == "dpo+mnrl"),
    "sdpo": (["variants"], lambda o: o["loss"] == "sdpo"),
    "dpo-hinge": (["variants"], lambda o: o["loss"] == "dpo" and o.get("loss_type") == "hinge"),
}
#: the run-level settings every final shares (compare's names); a variant holds what its tuning changed
FINAL_RUN = {"dataset": "scifact", "preset": "full", "train_max_seq_length": 128, "per_device_train_batch_size": 32,
             "num_train_epochs": 1.0, "warmup_steps": 0.1, "seed": 42, "precision": "fp32",
             "eval_datasets": ["dbpedia-entity-5k"]}
_SWEEP_ONLY = {"max_seq_length", "seed", "loss"}


def variant_of(options: dict) -> dict:
    """A sweep point's options as a compare variant (``loss`` + what differs from the shared run settings)."""
    out = {"loss": options["loss"]}
    for k, v in options.items():
        if k in _SWEEP_ONLY or FINAL_RUN.get(k) == v:
            continue
        out[k] = v
    if options.get("max_seq_length", 128) != FINAL_RUN["train_max_seq_length"]:
        out["train_max_seq_length"] = options["max_seq_length"]
    return out


def freeze() -> Path:
    """configs/study/final.yaml from the best dev point of each model's sweeps (WiSE-FT 0.5 of mnrl)."""
    import yaml

    variants = {}
    for name, (sweeps, keep) in FINALS.items():
        rows = [r for s in sweeps if (KEPT / f"tune_{s}.json").exists()
                for r in json.loads((KEPT / f"tune_{s}.json").read_text()).get("points", []) if keep(r["options"])]
        if not rows:
            raise SystemExit(f"freeze: no tuned point for {name} yet (sweeps {', '.join(sweeps)})")
        variants[name] = variant_of(max(rows, key=lambda r: r["fast_dev"]["ndcg@10"])["options"])
    variants["mnrl"]["wise_ft"] = [0.5]
    path = CONFIGS / "final.yaml"
    header = (f"# the finals' compare config, written by `python scripts/study.py freeze` (commit {_commit()}) from\n"
              "# the best fast-dev point of each model's sweeps in benchmarks/results/study/tune_*.json\n")
    path.write_text(header + yaml.safe_dump({**FINAL_RUN, "losses": list(variants), "variants": variants},
                                            sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------------- finals, data
def parse_model_dir(name: str) -> tuple[str, int | None]:
    """``(model, seed)`` of a compare run's model directory: ``dpo-seed3`` -> ("dpo", 3),
    ``contrastive-seed2-wiseft0.5`` -> ("contrastive-wiseft0.5", 2), ``base`` -> ("base", None)."""
    m = MODEL_DIR.match(name)
    model = m["variant"] + (f"-wiseft{m['alpha']}" if m["alpha"] else "")
    return model, (int(m["seed"]) if m["seed"] else None)


def export_run(run: Path, kept: Path, *, config_sha: str, seeds: list[int], drift_pool: dict | None = None) -> list[Path]:
    """Each model and seed of a compare run directory -> ``kept/<model>/seed<k>.json`` (its report entry per
    evaluation set, train time, the training key, commit, CPU), ``kept/base.json`` for the base model;
    only the given training seeds. With ``drift_pool`` (a sweep results file's fast_pool) each model's
    ``drift_dev``: its pool scores against the base's (mean |s - s_ref| on held-out dev pairs)."""
    from dpo_retrieval.experiment.compare import _to_report_entry
    from dpo_retrieval.models import cpu_name

    written = []
    for model_dir in sorted(p for p in (run / "eval").iterdir() if p.is_dir()):
        model, seed = parse_model_dir(model_dir.name)
        if model != "base" and seed not in seeds:
            continue
        stage_file = run / "models" / f"{model_dir.name}.stage.json"
        stage = json.loads(stage_file.read_text()) if stage_file.exists() else {}
        entry = {"model": model, "seed": seed, "config_sha": config_sha, "commit": _commit(), "cpu": cpu_name(),
                 "train_seconds": (stage.get("info") or stage).get("train_seconds"),
                 "train_key": stage.get("key", {}).get("train"),
                 "datasets": {p.stem: _to_report_entry(json.loads(p.read_text()), None)
                              for p in sorted(model_dir.glob("*.json")) if not p.name.endswith(".stage.json")}}
        if drift_pool and model != "base" and (run / "models" / model_dir.name).is_dir():
            entry["drift_dev"] = model_drift(run / "models" / model_dir.name, drift_pool)
        path = kept / ("base.json" if model == "base" else f"{model}/seed{seed}.json")
        _write(path, entry)
        written.append(path)
    return written


def model_drift(model_dir: Path, fast_pool: dict) -> dict:
    from dpo_retrieval.data.beir import load_beir
    from dpo_retrieval.experiment.compare import _read_qids
    from dpo_retrieval.experiment.fast_dev import score_drift, score_pool
    from dpo_retrieval.mining import subset_queries
    from dpo_retrieval.models import load_model

    dev = subset_queries(load_beir("scifact", "train"), _read_qids(MINE / "dev_qrels.tsv"))
    model = load_model(str(model_dir), device="auto", max_seq_length=256)
    run = score_pool(model, dev, fast_pool["pool"], precision="fp32")
    return score_drift(run, fast_pool["base_run"], dev.qrels)


def recorded_seeds(kept: Path, models: list[str], config_sha: str) -> set[int]:
    """The seeds every one of ``models`` has an export of under ``kept`` made from this config."""
    done = None
    for model in models:
        have = {int(p.stem[4:]) for p in kept.glob(f"{model}/seed*.json")
                if json.loads(p.read_text()).get("config_sha") == config_sha}
        done = have if done is None else done & have
    return done or set()


def final_models(config: Path, losses: list[str] | None = None) -> list[str]:
    """The report names a compare config's run produces: each of its losses, and <loss>-wiseft<A> for
    each WiSE-FT alpha the variant (or the run) asks for."""
    import yaml

    cfg = yaml.safe_load(config.read_text())
    names = []
    for loss in losses or cfg["losses"]:
        own = (cfg.get("variants") or {}).get(loss) or {}
        names += [loss] + [f"{loss}-wiseft{float(a):g}" for a in own.get("wise_ft", cfg.get("wise_ft") or [])]
    return names


def seed_run_dir(src: Path, dst: Path) -> None:
    """Start ``dst`` from ``src``'s mining and base evaluation (their stage keys do not hold the path)."""
    for rel in ("mine", "mine.stage.json", "file_hashes.json", "embeddings/base", "eval/base"):
        s, d = src / rel, dst / rel
        if s.exists() and not d.exists():
            d.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if s.is_dir() else shutil.copy2)(s, d)


def run_unit(config: Path, out: Path, kept: Path, seeds: list[int], extra: list[str], losses: list[str]) -> None:
    sha = _sha(config)
    missing = sorted(set(seeds) - recorded_seeds(kept, final_models(config, losses), sha))
    if not missing:
        print(f"{kept}: seeds {seeds} recorded")
        return
    if out != RUN / "final":
        seed_run_dir(RUN / "final", out)
    for seed in missing:  # one seed per compare call: each finished seed is kept before the next starts
        _cli("compare", str(config), "--seeds", str(seed), "--output", str(out), "--losses", ",".join(losses),
             "--no_show_progress_bar", *extra)
        check_triplets(out / "mine" / "triplets.jsonl", what=str(out))
        pool = _drift_pool()
        export_run(out, kept, config_sha=sha, seeds=[seed], drift_pool=pool)


def _drift_pool() -> dict | None:
    for path in sorted(KEPT.glob("tune_*.json")):
        pool = json.loads(path.read_text()).get("fast_pool")
        if pool and pool.get("base_run"):
            return pool
    return None


def finals() -> None:
    p = plan()
    config = CONFIGS / "final.yaml"
    run_unit(config, RUN / "final", KEPT / "final", p["seeds"], [], final_losses(config))


def final_losses(config: Path) -> list[str]:
    import yaml

    return list(yaml.safe_load(config.read_text())["losses"])


def data() -> None:
    p = plan()
    config = CONFIGS / "final.yaml"
    for n in p["data_sizes"]:
        run_unit(config, RUN / f"n{n}", KEPT / "data" / f"n{n}", p["data_seeds"],
                 ["--max_triplets", str(n), "--eval_datasets", ""], p["data_models"])


# ---------------------------------------------------------------------------------------------- status
def status() -> None:
    p = plan()
    for path in sorted(KEPT.glob("tune_*.json")):
        s = json.loads(path.read_text())
        print(f"{path.name}: {len(s.get('points', []))} points, best {s.get('best')}")
    config = CONFIGS / "final.yaml"
    if config.exists():
        sha = _sha(config)
        print(f"finals: seeds recorded {sorted(recorded_seeds(KEPT / 'final', final_models(config), sha))} "
              f"of {p['seeds']}")
        for n in p["data_sizes"]:
            got = recorded_seeds(KEPT / "data" / f"n{n}", p["data_models"], sha)
            print(f"data n{n}: seeds recorded {sorted(got)} of {p['data_seeds']}")
    else:
        print("finals: configs/study/final.yaml not written yet (after tuning)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    t = sub.add_parser("tune", help="dev sweeps configs/study/tune_<name>.yaml (results: benchmarks/results/study/)")
    t.add_argument("names", nargs="+", help="sweep names, run in order (a base_on sweep needs its base first)")
    sub.add_parser("freeze", help="write configs/study/final.yaml from the best dev point of each model's sweeps")
    sub.add_parser("finals", help="configs/study/final.yaml on SciFact test, dev and dbpedia-entity-5k, each seed")
    sub.add_parser("data", help="data efficiency: data_models at data_sizes triplets, data_seeds")
    sub.add_parser("report", help="benchmarks/results/study_scifact.{json,md} and plots from what is recorded")
    sub.add_parser("status", help="what is recorded and what is left")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(key, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.step == "tune":
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")
        tune(args.names)
    elif args.step == "report":
        sys.path.insert(0, str(ROOT / "scripts"))
        from study_report import write_study_report

        write_study_report()
    else:
        {"freeze": freeze, "finals": finals, "data": data, "status": status}[args.step]()


if __name__ == "__main__":
    main()
