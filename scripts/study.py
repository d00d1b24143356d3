"""The study of issue 14: does a DPO variant beat the tuned contrastive loss on SciFact - in domain, out of
domain (dbpedia-entity-5k), with little data - and does it harm fewer queries?

Every step resumes, across sessions too: what a step finishes is written under benchmarks/results/study/
(kept in git) and a later run does only what is missing there. Models and run directories live under
runs/study/ and may be lost between sessions. Everything runs at fp32, so a figure does not depend on
whether the session's CPU has fast bf16.

    export DPO_RETRIEVAL_DATA=../shared/data/beir
    python scripts/study.py tune contrastive dpo          # dev sweeps: configs/study/tune_<name>.yaml
    python scripts/study.py tune contrastive_negatives    # mine_negatives: k mines runs/study/mine_neg<k> first
    python scripts/study.py freeze                        # configs/study/final.yaml from the best dev points
    python scripts/study.py finals                        # configs/study/final.yaml, seeds of study.yaml
    python scripts/study.py data                          # data efficiency: sizes x seeds of study.yaml
    python scripts/study.py finals --jobs 2               # two trainings side by side (logs: runs/study/logs/)
    python scripts/study.py ablation --jobs 2             # post hoc: a final model with options changed
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
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = Path("runs") / "study"                      # relative to ROOT (the sweep's point ids hold this path)
KEPT = Path("benchmarks") / "results" / "study"   # what is kept in git
CONFIGS = Path("configs") / "study"
MINE = RUN / "mine"


def _cli(*args: str, log: Path | None = None, threads: int | None = None) -> None:
    """``dpo-retrieval <args>``; with ``log`` its output goes to that file (appended) instead of this one's, with
    ``threads`` it computes on that many threads (OMP_NUM_THREADS, MKL_NUM_THREADS)."""
    env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "dpo_retrieval", *args]
    if log is None:
        subprocess.run(command, check=True, cwd=ROOT, env=env)
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        subprocess.run(command, check=True, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def config_sha(path: Path) -> str:
    """A compare config's identity: its parsed content (comments and layout do not count)."""
    import yaml

    return hashlib.sha256(json.dumps(yaml.safe_load(Path(path).read_text()), sort_keys=True).encode()).hexdigest()[:16]


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
    another CPU must train on the same triplets (else every recorded result would be another experiment).

    A file with k > 1 negatives per row (mined with ``--negatives k``) must hold the study's triplets as its
    anchor, positive and negative_1 (:func:`first_negative_sha`), and is itself recorded under
    ``negatives_<k>`` the first time, then refused if it changes."""
    digest = _sha(triplets)
    record = KEPT / "triplets.json"
    known = json.loads(record.read_text()) if record.exists() else {}
    k = negatives_per_row(triplets)
    first = digest if k == 1 else first_negative_sha(triplets)
    with open(triplets) as f:
        lines = sum(1 for _ in f)
    if not known:
        known = {"sha256_16": first, "file": str(triplets), "lines": lines, "commit": _commit()}
        _write(record, known)
    elif known["sha256_16"] != first:
        column = "" if k == 1 else " in anchor, positive and negative_1"
        raise SystemExit(f"{triplets}: triplets differ from the study's{column} ({first} != {known['sha256_16']} in "
                         f"{record}); {what} would train on other data. Find out why (mining settings, precision) "
                         "before going on.")
    key = f"negatives_{k}"
    if k > 1 and key not in known:
        _write(record, {**known, key: {"sha256_16": digest, "file": str(triplets), "lines": lines,
                                       "commit": _commit()}})
    elif k > 1 and known[key]["sha256_16"] != digest:
        raise SystemExit(f"{triplets}: triplets differ from the study's with {k} negatives ({digest} != "
                         f"{known[key]['sha256_16']} under {key} in {record}); {what} would train on other data.")
    return digest


def negatives_per_row(triplets: Path) -> int:
    """How many negative_<i> columns a triplet file (JSON Lines as mining writes them) has in its first row."""
    with open(triplets, encoding="utf-8") as f:
        return sum(1 for key in json.loads(f.readline()) if key.startswith("negative_"))


def first_negative_sha(triplets: Path) -> str:
    """The digest :func:`_sha` would give the file of the same rows with their first negative only, written
    as mining writes it (``save_triplets``): equal to the study's recorded digest iff anchor, positive and
    negative_1 are the study's triplets, row by row, in order."""
    h = hashlib.sha256()
    with open(triplets, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            first = {"anchor": row["anchor"], "positive": row["positive"], "negative_1": row["negative_1"]}
            h.update((json.dumps(first, ensure_ascii=False) + "\n").encode("utf-8"))
    return h.hexdigest()[:16]


def ensure_mine() -> Path:
    """The study's mined triplets and dev split (the same mining as compare's: seed 42, fp32)."""
    if not (MINE / "triplets.jsonl").exists():
        _cli("mine", "--dataset", "scifact", "--output", str(MINE), "--precision", "fp32", "--negatives", "1")
    check_triplets(MINE / "triplets.jsonl", what="the sweeps")
    return MINE


def ensure_mine_negatives(k: int) -> Path:
    """runs/study/mine_neg<k>: the study's mining with k negatives per positive (the same seed, model and
    precision; the corpus embeddings of runs/study/mine reused while their key matches). Its dev split must
    be the study's byte for byte and its first negatives the study's triplets (:func:`check_triplets`)."""
    mine = ensure_mine()
    out = RUN / f"mine_neg{k}"
    if not (out / "mining.json").exists():  # mining.json is written last: an interrupted mining runs again
        out.mkdir(parents=True, exist_ok=True)
        for name in ("corpus_embeddings.npy", "corpus_embeddings.npy.json"):
            if (mine / name).exists():
                shutil.copy2(mine / name, out / name)
        _cli("mine", "--dataset", "scifact", "--output", str(out), "--precision", "fp32", "--negatives", str(k))
    if (out / "dev_qrels.tsv").read_bytes() != (mine / "dev_qrels.tsv").read_bytes():
        raise SystemExit(f"{out / 'dev_qrels.tsv'}: not the study's dev split ({mine / 'dev_qrels.tsv'}); the sweeps "
                         f"with {k} negatives would score on other queries. Find out why before going on.")
    check_triplets(out / "triplets.jsonl", what=f"the sweeps with {k} negatives")
    return out


# ---------------------------------------------------------------------------------------------- tune
#: the edge rule of study_scifact.md: a grid axis whose best value is its smallest or largest is extended one step
EDGE_STEPS = {"learning_rate": 2.0, "beta": 3.0, "mnrl_scale": 2.0, "scale": 2.0}


def grid_edges(recorded: dict) -> dict[str, float]:
    """``{axis: the next value to sweep}`` for each axis of a finished sweep's grid (``recorded``: its results
    file) on which the best point lies at an edge (:data:`EDGE_STEPS` axes with 2 or more values)."""
    grid, best = (recorded.get("grid") or {}).get("grid") or {}, recorded.get("best") or {}
    out = {}
    for axis, step in EDGE_STEPS.items():
        values = sorted(grid.get(axis) or [])
        if len(values) >= 2 and best.get(axis) in (values[0], values[-1]):
            out[axis] = float(f"{best[axis] * step if best[axis] == values[-1] else best[axis] / step:.3g}")
    return out


def best_point(names: list[str], keep=lambda options: True) -> dict:
    """The row with the highest fast dev nDCG@10 over the sweeps ``names`` together (their current grid's
    rows, those whose options pass ``keep``); every sweep must have run to its end (its file has ``best``)
    with its best inside its grid (:func:`grid_edges`, the plan's edge rule)."""
    rows = []
    for other in names:
        done = KEPT / f"tune_{other}.json"
        recorded = json.loads(done.read_text()) if done.exists() else {}
        if not recorded.get("best"):
            raise SystemExit(f"needs the sweep {other} run to its end first (python scripts/study.py tune {other})")
        edges = grid_edges(recorded)
        if edges:
            raise SystemExit(f"the sweep {other}'s best lies on its grid's edge: add "
                             f"{', '.join(f'{a} {v:g}' for a, v in edges.items())} to configs/study/tune_{other}.yaml "
                             f"(the edge rule of study_scifact.md) and run `python scripts/study.py tune {other}`")
        rows += [r for r in recorded.get("points", []) if keep(r["options"])]
    if not rows:
        raise SystemExit(f"the sweeps {', '.join(names)} have no scored point of this kind")
    return max(rows, key=lambda r: r["fast_dev"]["ndcg@10"])


def resolved_grid(name: str) -> Path:
    """configs/study/tune_<name>.yaml with ``base_on: [sweeps]`` resolved: the options of the best point of
    those sweeps together become this sweep's fixed options (before the file's own fixed); with
    ``mine_negatives: k`` the points train on runs/study/mine_neg<k>'s triplets (:func:`ensure_mine_negatives`;
    the dev split stays runs/study/mine's; ``negatives: 1`` unless the fixed options or a point say otherwise, so
    a base point from a one-negative sweep trains on the same data as there); written under runs/study/tune/."""
    import yaml

    spec = yaml.safe_load((CONFIGS / f"tune_{name}.yaml").read_text())
    others = spec.pop("base_on", None)
    if others:
        spec["fixed"] = {**best_point([others] if isinstance(others, str) else others)["options"],
                         **(spec.get("fixed") or {})}
    confirm = spec.pop("confirm", None)
    if confirm is not None and not (isinstance(confirm, dict) and all(isinstance(v, str) for v in confirm.values())):
        raise SystemExit(f"{CONFIGS / f'tune_{name}.yaml'}: confirm: a mapping of final model to sweep name, "
                         f"got {confirm!r}")
    if confirm:
        from study_freeze import confirm_points

        spec["points"] = confirm_points(confirm, spec.get("fixed") or {}) + list(spec.get("points") or [])
        if not spec["points"]:
            raise SystemExit(f"tune {name}: nothing to confirm (no screened setting beat its screening base)")
    k = spec.pop("mine_negatives", None)
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise SystemExit(f"{CONFIGS / f'tune_{name}.yaml'}: mine_negatives: an integer > 1, got {k!r}")
        spec["triplets"] = str(ensure_mine_negatives(k) / "triplets.jsonl")
        # a point from a one-negative sweep says nothing of negatives; on this file it means the first only
        spec["fixed"] = {"negatives": 1, **(spec.get("fixed") or {})}
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


def _drift_pool() -> dict | None:
    for path in sorted(KEPT.glob("tune_*.json")):
        pool = json.loads(path.read_text()).get("fast_pool")
        if pool and pool.get("base_run"):
            return pool
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    t = sub.add_parser("tune", help="dev sweeps configs/study/tune_<name>.yaml (results: benchmarks/results/study/)")
    t.add_argument("names", nargs="+", help="sweep names, run in order (a base_on sweep needs its base first)")
    f = sub.add_parser("freeze", help="write configs/study/final.yaml from the best dev point of each model's sweeps")
    f.add_argument("--force", action="store_true", help="replace an existing final.yaml (the finals' config)")
    for step, text in (("finals", "configs/study/final.yaml on SciFact test, dev and dbpedia-entity-5k, each seed"),
                       ("data", "data efficiency: data_models at data_sizes triplets, data_seeds"),
                       ("ablation", "post-hoc ablations: study.yaml's ablations (a final model with options "
                                    "changed) at ablation_seeds, scored like the finals")):
        sub.add_parser(step, help=text).add_argument(
            "--jobs", type=int, default=1, help="trainings side by side, each on cpu_count // jobs threads, each "
            "logged under runs/study/logs/ (default 1; on 2 CPU cores 2 jobs train ~1.4x faster in all, "
            "benchmarks/results/bench_threads.json)")
    sub.add_parser("report", help="benchmarks/results/study_scifact.{json,md} and plots from what is recorded")
    sub.add_parser("status", help="what is recorded and what is left")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT / "scripts"))
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(key, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from dpo_retrieval.errors import UserInputError

    try:
        if args.step == "tune":
            import logging

            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                                datefmt="%H:%M:%S")
            tune(args.names)
        elif args.step == "report":
            from study_report import write_study_report

            write_study_report()
        elif args.step == "freeze":
            from study_freeze import freeze

            print(f"wrote {freeze(args.force)}")
        else:
            if args.step != "status" and not (CONFIGS / "final.yaml").exists():
                raise SystemExit(f"{args.step}: {CONFIGS / 'final.yaml'} not written yet: tune, then "
                                 "python scripts/study.py freeze")
            import study_finals

            if args.step == "status":
                study_finals.status()
            else:
                if args.jobs < 1:
                    raise SystemExit(f"study {args.step}: --jobs must be 1 or more, got {args.jobs}")
                from study_ablation import ablation

                {"finals": study_finals.finals, "data": study_finals.data, "ablation": ablation}[args.step](args.jobs)
    except UserInputError as err:
        raise SystemExit(f"study {args.step}: {err}") from None
    except subprocess.CalledProcessError as err:
        raise SystemExit(f"study {args.step}: `{' '.join(map(str, err.cmd[1:]))}` failed (exit {err.returncode}); "
                         "its own error is above") from None


if __name__ == "__main__":
    main()
