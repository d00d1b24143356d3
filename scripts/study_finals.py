"""The study's finals and data-efficiency runs (``python scripts/study.py finals|data|status``): each missing
(model, seed) of configs/study/final.yaml run by ``dpo-retrieval compare`` and kept, one file per model and
seed, under benchmarks/results/study/ (so a later session runs only what is missing)."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import study as S

#: a model directory's name in a compare run: <variant>[-seed<k>][-wiseft<alpha>]
MODEL_DIR = re.compile(r"^(?P<variant>.+?)(?:-seed(?P<seed>-?\d+))?(?:-wiseft(?P<alpha>[0-9.]+))?$")


def parse_model_dir(name: str) -> tuple[str, int | None]:
    """``(model, seed)`` of a compare run's model directory: ``dpo-seed3`` -> ("dpo", 3),
    ``contrastive-seed2-wiseft0.5`` -> ("contrastive-wiseft0.5", 2), ``base`` -> ("base", None)."""
    m = MODEL_DIR.match(name)
    model = m["variant"] + (f"-wiseft{m['alpha']}" if m["alpha"] else "")
    return model, (int(m["seed"]) if m["seed"] else None)


def export_run(run: Path, kept: Path, *, config_sha: str, seeds: list[int], models: list[str] | None = None,
               drift_pool: dict | None = None) -> list[Path]:
    """Each model and seed of a compare run directory -> ``kept/<model>/seed<k>.json`` (its report entry per
    evaluation set, train time, the training key, commit, CPU), ``kept/base.json`` for the base model;
    only the given training seeds and (with ``models``) those models. With ``drift_pool`` (a sweep results file's fast_pool) each model's
    ``drift_dev``: its pool scores against the base's (mean |s - s_ref| on held-out dev pairs)."""
    from dpo_retrieval.experiment.compare import _to_report_entry
    from dpo_retrieval.models import cpu_name

    written = []
    for model_dir in sorted(p for p in (run / "eval").iterdir() if p.is_dir()):
        model, seed = parse_model_dir(model_dir.name)
        if model != "base" and (seed not in seeds or (models is not None and model not in models)):
            continue
        stage_file = run / "models" / f"{model_dir.name}.stage.json"
        stage = json.loads(stage_file.read_text()) if stage_file.exists() else {}
        entry = {"model": model, "seed": seed, "config_sha": config_sha, "commit": S._commit(), "cpu": cpu_name(),
                 "train_seconds": stage.get("train_seconds"),
                 "train_key": stage.get("key", {}).get("train"),
                 "datasets": {p.stem: _to_report_entry(json.loads(p.read_text()), None)
                              for p in sorted(model_dir.glob("*.json")) if not p.name.endswith(".stage.json")}}
        if drift_pool and model != "base" and (run / "models" / model_dir.name).is_dir():
            entry["drift_dev"] = model_drift(run / "models" / model_dir.name, drift_pool, run / "mine")
        path = kept / ("base.json" if model == "base" else f"{model}/seed{seed}.json")
        S._write(path, entry)
        written.append(path)
    return written


def model_drift(model_dir: Path, fast_pool: dict, mine: Path) -> dict:
    """score_drift of a trained model's dev pool scores against the base's (the sweep's pool and base run),
    on the dev split of the run's own mining."""
    from dpo_retrieval.data.beir import load_beir
    from dpo_retrieval.experiment.compare import _read_qids
    from dpo_retrieval.experiment.fast_dev import score_drift, score_pool
    from dpo_retrieval.mining import subset_queries
    from dpo_retrieval.models import load_model

    qids = _read_qids(mine / "dev_qrels.tsv")
    if sorted(qids) != sorted(fast_pool["pool"]):
        raise SystemExit(f"{mine / 'dev_qrels.tsv'}: not the dev queries of the recorded fast dev pool")
    dev = subset_queries(load_beir("scifact", "train"), qids)
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


def final_models(config: Path, losses: list[str] | None = None, extra: list[str] = ()) -> list[str]:
    """The report names a compare config's run produces: each of its losses, and <loss>-wiseft<A> for
    each WiSE-FT alpha the variant (or the run) asks for; ``--variants JSON`` in ``extra`` replaces the
    config's variants."""
    import yaml

    cfg = yaml.safe_load(config.read_text())
    extra = list(extra)
    variants = json.loads(extra[extra.index("--variants") + 1]) if "--variants" in extra else cfg.get("variants")
    names = []
    for loss in losses or cfg["losses"]:
        own = (variants or {}).get(loss) or {}
        names += [loss] + [f"{loss}-wiseft{float(a):g}" for a in own.get("wise_ft", cfg.get("wise_ft") or [])]
    return names


SEEDED = ("mine", "mine.stage.json", "file_hashes.json", "embeddings/base", "eval/base")


def _mine_stage(run: Path) -> dict:
    try:
        return json.loads((run / "mine.stage.json").read_text())
    except (OSError, ValueError):
        return {}


def mined(run: Path) -> bool:
    """Whether run directory ``run`` holds a finished mining (its stage marker says done)."""
    return _mine_stage(run).get("status") == "done"


def seed_run_dir(src: Path, dst: Path) -> None:
    """Start ``dst`` from ``src``'s mining and base evaluation (their stage keys do not hold the path); a copy
    whose mining is not ``src``'s finished one (another key's hash, a mining cut off) is replaced: it would mine
    again beside ``src``. Under ``dst``'s compare lock: a compare still running there fails in one line instead
    of losing its mining mid-run."""
    from dpo_retrieval._io import hold_lock

    dst.mkdir(parents=True, exist_ok=True)
    with hold_lock(dst / "compare.lock", what="a compare"):
        theirs, ours = _mine_stage(src), _mine_stage(dst)
        if theirs.get("status") == "done" and ours and (ours.get("status"), ours.get("hash")) != ("done", theirs["hash"]):
            for rel in SEEDED:
                d = dst / rel
                shutil.rmtree(d) if d.is_dir() else d.unlink(missing_ok=True)
        for rel in SEEDED:
            s, d = src / rel, dst / rel
            if s.exists() and not d.exists():
                d.parent.mkdir(parents=True, exist_ok=True)
                (shutil.copytree if s.is_dir() else shutil.copy2)(s, d)


def missing_losses(config: Path, kept: Path, seed: int, extra: list[str], losses: list[str]) -> list[str]:
    """The losses of ``losses`` whose seed is not recorded under ``kept`` from this config: the loss itself or
    one of its report names (``<loss>-wiseft<A>``, see :func:`final_models`) lacks ``<name>/seed<k>.json``."""
    sha = S.config_sha(config)
    return [loss for loss in losses if seed not in recorded_seeds(kept, final_models(config, [loss], extra), sha)]


@dataclass(frozen=True)
class Unit:
    """One compare call of the finals or the data runs: ``loss`` at ``seed`` from ``config``, in run directory
    ``out`` (or a job's copy of it), exported to ``kept`` (``drift``: with its drift on the dev pool, as the
    protocol asks of the final models)."""
    config: Path
    out: Path
    kept: Path
    seed: int
    loss: str
    extra: tuple[str, ...] = ()
    drift: bool = False


def pending_units(config: Path, out: Path, kept: Path, seeds: list[int], extra: list[str],
                  losses: list[str], drift: bool = False) -> list[Unit]:
    """The (seed, loss) units of ``losses`` whose export is missing (:func:`missing_losses`), seed by seed."""
    return [Unit(config, out, kept, seed, loss, tuple(extra), drift) for seed in sorted(seeds)
            for loss in missing_losses(config, kept, seed, list(extra), losses)]


def run_unit(config: Path, out: Path, kept: Path, seeds: list[int], extra: list[str], losses: list[str],
             jobs: int = 1, drift: bool = False) -> None:
    """Each seed of ``losses`` from ``config`` (a compare config) in run directory ``out``: one compare call per
    (seed, loss) whose export is missing (:func:`missing_losses`), each exported to ``kept`` as soon as it
    finishes, so a session that stops mid-seed keeps every model it finished: every report name of a retrained
    loss (a WiSE-FT model and its loss come from one training), no other model's recorded export. ``jobs``:
    :func:`run_units`."""
    units = pending_units(config, out, kept, seeds, extra, losses, drift)
    if not units:
        print(f"{kept}: seeds {seeds} of {', '.join(losses)} recorded")
    run_units(units, jobs)


def job_dir(out: Path, slot: int) -> Path:
    """Job ``slot``'s run directory for units of ``out``: ``out`` itself for slot 0, ``out.job<slot>`` else."""
    return out if slot == 0 else out.with_name(f"{out.name}.job{slot}")


def run_units(units: list[Unit], jobs: int = 1) -> None:
    """Run ``units`` in order, ``jobs`` compare processes side by side (each on cpu_count // jobs threads, its
    output in runs/study/logs/; one job per run directory: job k > 0 works in a copy of the unit's mining and base
    evaluation, :func:`job_dir`). A run directory without a mining yet runs its first unit alone first. A failed
    unit lets the running ones finish, starts no more, and is raised."""
    import threading

    if not units:
        return
    for out in dict.fromkeys(u.out for u in units):
        if out != S.RUN / "final":
            seed_run_dir(S.RUN / "final", out)
    if jobs <= 1:
        for unit in units:
            run_one(unit, unit.out)
        return
    threads = max(1, (os.cpu_count() or 1) // jobs)
    units = list(units)
    for out in dict.fromkeys(u.out for u in units):
        if not mined(out):  # its mining and base evaluation, once, alone (a stale one is redone there too)
            first = next(u for u in units if u.out == out)
            units.remove(first)
            run_one(first, out, threads=os.cpu_count() or 1)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def take(slot: int) -> Unit | None:
        """The next unit for job ``slot``: one it had started (its model directory is in this job's run
        directory: an interrupted training resumes from its checkpoint, a trained model is only evaluated),
        else the first that no other job had started, else the first."""
        with lock:
            if not units:
                return None
            mine = [u for u in units if started(u, job_dir(u.out, slot))]
            free = [u for u in units if not any(started(u, job_dir(u.out, k)) for k in range(jobs) if k != slot)]
            unit = (mine or free or units)[0]
            units.remove(unit)
            return unit

    def worker(slot: int) -> None:
        while not errors:
            unit = take(slot)
            if unit is None:
                return
            where = job_dir(unit.out, slot)
            if where != unit.out:
                seed_run_dir(unit.out, where)
            log = S.RUN / "logs" / f"{where.name}-{unit.loss}-seed{unit.seed}.log"
            try:
                run_one(unit, where, log=log, threads=threads)
            except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
                print(f"job {slot}: {unit.kept} seed {unit.seed} {unit.loss} failed; its log: {log}", flush=True)
                errors.append(err)

    pool = [threading.Thread(target=worker, args=(slot,), daemon=True) for slot in range(jobs)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise errors[0]


def started(unit: Unit, where: Path) -> bool:
    """Whether run directory ``where`` holds ``unit``'s model directory (a training begun or done there)."""
    import yaml

    from dpo_retrieval.experiment.variants import seed_model_name

    main_seed = (yaml.safe_load(unit.config.read_text()) or {}).get("seed", 42)
    return (where / "models" / seed_model_name(unit.loss, unit.seed, main_seed)).is_dir()


def run_one(unit: Unit, where: Path, log: Path | None = None, threads: int | None = None) -> None:
    """One compare call (``unit.loss`` at ``unit.seed``) in run directory ``where``, then its export."""
    extra = list(unit.extra)
    new = final_models(unit.config, [unit.loss], extra)  # a retrained loss's every name: a WiSE-FT pair, one training
    print(f"{unit.kept}: seed {unit.seed}: training {unit.loss} (for {', '.join(new)})"
          + (f" in {where}, log {log}" if log else ""), flush=True)
    if (where / "mine" / "triplets.jsonl").exists():
        S.check_triplets(where / "mine" / "triplets.jsonl", what=str(where))
    args = ("compare", str(unit.config), "--seeds", str(unit.seed), "--output", str(where), "--losses", unit.loss,
            "--no_show_progress_bar", *extra)
    S._cli(*args, log=log, threads=threads)
    S.check_triplets(where / "mine" / "triplets.jsonl", what=str(where))
    export_run(where, unit.kept, config_sha=S.config_sha(unit.config), seeds=[unit.seed], models=new,
               drift_pool=S._drift_pool() if unit.drift else None)
    if log:
        print(f"{unit.kept}: seed {unit.seed}: {unit.loss} done", flush=True)


def finals(jobs: int = 1) -> None:
    p = S.plan()
    config = S.CONFIGS / "final.yaml"
    run_unit(config, S.RUN / "final", S.KEPT / "final", p["seeds"], [], final_losses(config), jobs, drift=True)


def final_losses(config: Path) -> list[str]:
    import yaml

    return list(yaml.safe_load(config.read_text())["losses"])


def data_models(p: dict) -> list[str]:
    """The data-efficiency models: the plan's, plus the DPO variant of the finals (not dpo itself): the one
    final.yaml holds (amendment 4: freeze keeps the variant best on dev), or, in a config with several, the one
    best on dev over the recorded finals once every final seed of them is recorded; until then the plan's alone,
    said in one line."""
    from study_report import DEV, best_of, load_group

    config = S.CONFIGS / "final.yaml"
    losses = final_losses(config)
    variants = [m for m in p["dpo_models"] if m not in p["data_models"] and m in losses]
    if len(variants) <= 1:
        return list(p["data_models"]) + variants
    finals = load_group(S.KEPT / "final", S.config_sha(config))
    if any(not set(p["seeds"]) <= set(finals["models"].get(m, {})) for m in variants):
        print(f"data: {', '.join(p['data_models'])} only; the best DPO variant's data runs follow once the finals "
              f"are recorded (it is chosen on dev over the finals' seeds {p['seeds']})")
        return list(p["data_models"])
    best = best_of(finals, variants, DEV)
    if best is None:
        raise SystemExit(f"data: no DPO variant ({', '.join(variants)}) has {DEV} scores in the finals")
    return list(p["data_models"]) + [best]


def data(jobs: int = 1) -> None:
    """Each (size, seed) of the data-efficiency models, smallest size first, one compare call per (size, seed)
    and model it lacks (``jobs`` side by side, :func:`run_units`)."""
    import yaml

    p = S.plan()
    config = S.CONFIGS / "final.yaml"
    models = data_models(p)
    variants = yaml.safe_load(config.read_text()).get("variants") or {}
    no_wise_ft = {k: {o: v for o, v in opts.items() if o != "wise_ft"} for k, opts in variants.items()}
    units = [u for n in sorted(p["data_sizes"]) for u in pending_units(
        config, S.RUN / f"n{n}", S.KEPT / "data" / f"n{n}", p["data_seeds"],
        ["--max_triplets", str(n), "--eval_datasets", "", "--variants", json.dumps(no_wise_ft)], models)]
    if not units:
        print(f"data: sizes {sorted(p['data_sizes'])}, seeds {p['data_seeds']} of {', '.join(models)} recorded")
    run_units(units, jobs)


# ---------------------------------------------------------------------------------------------- status
def status() -> None:
    p = S.plan()
    for path in sorted(S.KEPT.glob("tune_*.json")):
        s = json.loads(path.read_text())
        print(f"{path.name}: {len(s.get('points', []))} points, best {s.get('best')}")
    config = S.CONFIGS / "final.yaml"
    if config.exists():
        sha = S.config_sha(config)
        print(f"finals: seeds recorded {sorted(recorded_seeds(S.KEPT / 'final', final_models(config), sha))} "
              f"of {p['seeds']}")
        models = data_models(p)
        for n in sorted(p["data_sizes"]):
            got = recorded_seeds(S.KEPT / "data" / f"n{n}", models, sha)
            print(f"data n{n}: seeds recorded for {', '.join(models)}: {sorted(got)} of {p['data_seeds']}")
        for name in p.get("ablations") or {}:
            got = recorded_seeds(S.KEPT / "ablation", [name], sha)
            print(f"ablation {name}: seeds recorded {sorted(got)} of {p['ablation_seeds']}")
    else:
        print("finals: configs/study/final.yaml not written yet (after tuning)")
