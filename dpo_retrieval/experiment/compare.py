"""``dpo-retrieval compare``: mine triplets, train each loss from one base, evaluate on BEIR, report.

Every stage writes under the run directory and records a hash of its inputs and settings in a
``*.stage.json`` file beside its output; a re-run skips each stage whose hash still matches, and a
training run that was interrupted resumes from its last checkpoint.

    RUN/mine/                  triplets.jsonl, train_qrels.tsv, dev_qrels.tsv, mining.json (train queries
                               with a test or dev query's text are dropped, and listed there)
    RUN/train_triplets.jsonl   the triplets every loss trains on (the preset's subsample)
    RUN/models/<loss>/         trained models (sentence-transformers format) + train_log.jsonl
    RUN/reference_cache/       the frozen reference's embeddings of the training texts (DPO-family losses)
    RUN/embeddings/<model>/    corpus embeddings per model and dataset (reused while their key matches)
    RUN/file_hashes.json       sha256 of the base model's files per (path, size, mtime)
    RUN/eval/<model>/          metrics per dataset and split (JSON, with per-query scores)
    RUN/report.json, report.md, *.png
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import shutil
import time
from pathlib import Path

from dpo_retrieval._io import hold_lock, write_json
from dpo_retrieval.errors import UserInputError
from dpo_retrieval.experiment.compare_args import (  # noqa: F401  (re-exported: compare's options live there)
    DPO_ONLY, LOSS_FIELDS, METRIC_NAMES, PRESETS, CompareArgs, loss_settings, training_seeds)
from dpo_retrieval.experiment.stages import Stage, _dataset_stamp, fingerprint  # noqa: F401
from dpo_retrieval.experiment.variants import VARIANT_OPTIONS, seed_model_name, variant_config, wise_ft_name
from dpo_retrieval.training.args import DPOArgs

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
def _to_report_entry(result: dict, train_time: float | None) -> dict:
    per_query: dict[str, dict[str, float]] = {name: {} for name in METRIC_NAMES.values()}
    for qid, row in result["per_query"].items():
        for key, name in METRIC_NAMES.items():
            if key in row:
                per_query[name][qid] = row[key]
    t = result["timings"]
    return {
        "metrics": {name: result["metrics"][key] for key, name in METRIC_NAMES.items() if key in result["metrics"]},
        "per_query": per_query,
        "train_time_s": train_time,
        "eval_time_s": round(sum(v for k, v in t.items() if k.endswith("_s") and not k.endswith("per_s")), 2),
    }


#: the training arguments that enter a training stage's key: those that change the trained model (not how often
#: it logs or saves a checkpoint)
TRAINING_KEY = ("num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
                "learning_rate", "warmup_steps", "seed")


def _train_config(cfg: CompareArgs, loss: str, output: Path, triplets: Path):
    """``(TrainArgs, DPOArgs, training arguments)`` of one loss's training run, checked (``cfg`` resolved)."""
    from dpo_retrieval.training.args import (CHECKPOINT_STEPS, TrainArgs, check_training_arguments,
                                             training_arguments)

    # the number trained on reaches train() as given (None only for a loss without a default: every mined one);
    # the stage key leaves out "every mined negative" (train_settings), as it did before the option existed
    inputs = TrainArgs(triplets=str(triplets), model=cfg.model, loss=loss, max_seq_length=cfg.train_max_seq_length,
                       negatives=cfg.train_negatives, device=cfg.device, precision=cfg.precision,
                       trust_remote_code=cfg.trust_remote_code).check()
    args = training_arguments(str(output), num_train_epochs=cfg.num_train_epochs,
                              per_device_train_batch_size=cfg.per_device_train_batch_size,
                              learning_rate=cfg.learning_rate, warmup_steps=cfg.warmup_steps, seed=cfg.seed,
                              logging_steps=1, save_steps=CHECKPOINT_STEPS, disable_tqdm=not cfg.show_progress_bar)
    check_training_arguments(args)
    return inputs, cfg.dpo, args


def train_settings(inputs, loss: str, dpo: DPOArgs, targs, all_negatives: int | None = None) -> dict:
    """What a training stage's key holds of its run: the TrainArgs (not the file, which the data stage's hash
    stands for, nor the model's name), the DPOArgs ``loss`` reads and :data:`TRAINING_KEY`. ``negatives``
    only when it is not every one (None, or ``all_negatives``: the number mined), so the keys of runs made
    before the option existed still match."""
    own = {k: v for k, v in dataclasses.asdict(inputs).items()
           if k not in ("triplets", "model") and not (k == "negatives" and v in (None, all_negatives))}
    return {**own, **loss_settings(loss, dpo), **{k: getattr(targs, k) for k in TRAINING_KEY}}


def model_settings(loss: str, own: CompareArgs) -> dict:
    """What one model of the run trains with (its variant's resolved config): the loss, the budget, its negatives
    and the loss options it reads (the report's ``config.models``, so per-loss defaults are on record)."""
    budget = [k for k in VARIANT_OPTIONS if k != "wise_ft"]
    reads = set(LOSS_FIELDS.get(loss, ())) | {"dropout"}
    return {"loss": loss, **{k: getattr(own, k) for k in budget},
            **{k: v for k, v in dataclasses.asdict(own.dpo).items() if k in reads}}


def check_options(cfg: CompareArgs) -> tuple[CompareArgs, str]:
    """Every option check of the whole run, before any dataset or model is read or anything written:
    the resolved config and the precision encoding and training really use (raises UserInputError)."""
    from dpo_retrieval.models import resolve_device, resolve_precision

    plan = {name: variant_config(cfg, name) for name in cfg.losses}
    cfg = cfg.resolved()
    run = Path(cfg.output)
    for name, (loss, own) in plan.items():  # the same checks train() runs after mining
        _train_config(own, loss, run / "models" / name, run / "train_triplets.jsonl")
    precision = resolve_precision(cfg.precision, resolve_device(cfg.device))
    if run.exists() and not run.is_dir():
        raise UserInputError(f"output: {run} exists and is not a directory")
    return cfg, precision


def run_compare(cfg: CompareArgs) -> dict:
    """Run (or resume) the whole comparison; returns what ``write_report`` returned.

    Stage keys (and the corpus-embeddings caches) hold :func:`~dpo_retrieval.retrieval.cache.encoding_key`:
    the model's weights (the base by a hash of its files, a trained model by its training stage's
    hash), the resolved precision, a hash of the texts and the package version."""
    from dpo_retrieval.data.beir import load_beir
    from dpo_retrieval.models import resolve_model_path

    plan = {name: variant_config(cfg, name) for name in cfg.losses}  # name -> (loss, its resolved options)
    cfg, precision = check_options(cfg)
    seeds = training_seeds(cfg)
    run = Path(cfg.output)
    started = time.perf_counter()
    # Load every dataset first: a bad name or file fails before anything is written.
    train_split = load_beir(cfg.dataset, "train")
    test_sets = [load_beir(cfg.dataset, "test")] + [load_beir(d, "test") for d in cfg.eval_datasets]
    base_path = resolve_model_path(cfg.model)
    run.mkdir(parents=True, exist_ok=True)
    # one compare per run directory: a second one would retrain and rewrite the same stages beside the first
    with hold_lock(run / "compare.lock", what="a compare"):
        return _run_stages(cfg, plan, precision, seeds, run, started, train_split, test_sets, base_path)


def _run_stages(cfg: CompareArgs, plan: dict, precision: str, seeds: list[int], run: Path, started: float,
                train_split, test_sets: list, base_path: str) -> dict:
    """``run_compare``'s stages (mine, triplets, train, evaluate, report), run under the run directory's lock."""
    from dpo_retrieval.data.triplets import load_triplets, save_triplets
    from dpo_retrieval.evaluation.evaluate import evaluate_model
    from dpo_retrieval.experiment.report import write_report
    from dpo_retrieval.mining import mine, overlapping_queries, subset_queries
    from dpo_retrieval.models import load_model
    from dpo_retrieval.retrieval.cache import corpus_digest, encoding_key, model_id, texts_digest
    from dpo_retrieval.training import train
    from dpo_retrieval.training.merge import merge_models

    models = {name: model_settings(loss, own) for name, (loss, own) in plan.items()}
    write_json({**dataclasses.asdict(cfg), "seeds": list(seeds), "models": models}, run / "config.json", default=str)
    digests: dict[str, str] = {}

    def docs_digest(ds) -> str:
        if str(ds.path) not in digests:
            digests[str(ds.path)] = corpus_digest(ds)
        return digests[str(ds.path)]

    def queries_digest(ds) -> str:
        qids = sorted(ds.queries)
        return texts_digest(qids, (ds.queries[q] for q in qids))

    # 1. mine ------------------------------------------------------------------------------------
    base = None
    mine_dir = run / "mine"
    base_id = model_id(base_path, memo_file=run / "file_hashes.json")
    # never train on a test query (of the dataset or of any --eval-datasets set)
    test_texts = [text for ds in test_sets for text in ds.queries.values()]
    pool = [q for q in train_split.qrels if q in train_split.queries]
    mine_stage = Stage(run / "mine.stage.json", {
        "dataset": _dataset_stamp(train_split.path, run / "file_hashes.json"), "encoding": encoding_key(base_id, precision, docs_digest(train_split), backend=cfg.backend),
        "queries": queries_digest(train_split), "mining": dataclasses.asdict(cfg.mining),
        "dropped_test_overlap": overlapping_queries(pool, train_split.queries, test_texts),
        "eval_max_seq_length": cfg.eval_max_seq_length})
    emb_dir = run / "embeddings"
    if mine_stage.done():
        logger.info("[mine] up to date, skipped (%s)", mine_dir)
    else:
        base = load_model(cfg.model, device=cfg.device, max_seq_length=cfg.eval_max_seq_length,
                          trust_remote_code=cfg.trust_remote_code, backend=cfg.backend)
        mine_stage.start()
        info = mine(base, train_split, mine_dir, cfg.mining, precision=cfg.precision, batch_size=cfg.eval_batch_size,
                    embeddings_cache=emb_dir / "base" / f"{train_split.name}.npy", exclude_texts=test_texts,
                    model_key=base_id, show_progress_bar=cfg.show_progress_bar)
        mine_stage.finish(**info)

    # 2. the triplets every loss trains on ------------------------------------------------------
    triplets = load_triplets(mine_dir / "triplets.jsonl")
    if cfg.max_triplets is not None and cfg.max_triplets < len(triplets):
        picked = sorted(random.Random(cfg.seed).sample(range(len(triplets)), cfg.max_triplets))
        triplets = triplets.select(picked)
    train_file = run / "train_triplets.jsonl"
    data_key = {"mine": mine_stage.hash, "max_triplets": cfg.max_triplets, "seed": cfg.seed}
    data_stage = Stage(run / "train_triplets.stage.json", data_key)
    if not data_stage.done():
        save_triplets(triplets, train_file)
        data_stage.finish(rows=len(triplets))

    # 3. train: each loss once per training seed ------------------------------------------------
    train_times: dict[str, float] = {}
    model_dirs = {"base": base_path}
    model_stages = {"base": base_id}
    for variant, (loss, own) in plan.items():
        for train_seed in seeds:
            name = seed_model_name(variant, train_seed, cfg.seed)
            out = run / "models" / name
            inputs, dpo, targs = _train_config(own, loss, out, train_file)
            targs.seed = train_seed  # the trainer's shuffling, dropout and init; mining keeps cfg.seed
            settings = train_settings(inputs, loss, dpo, targs, all_negatives=cfg.mining.negatives)
            # the training texts are the data stage's (its hash covers the mined triplets' key)
            key = {"encoding": encoding_key(base_id, precision, data_stage.hash), "train": settings}
            stage = Stage(run / "models" / f"{name}.stage.json", key)
            model_stages[name] = stage.hash
            model_dirs[name] = str(out)
            if stage.done():
                logger.info("[train %s] up to date, skipped", name)
            else:
                resume = stage.started_same() and (out / "checkpoints").is_dir()
                if out.exists() and not resume:
                    shutil.rmtree(out)
                stage.start()
                train(dataclasses.replace(inputs, resume=resume), targs, dpo, reference_cache=run / "reference_cache")
                summary = json.loads((out / "train_summary.json").read_text())
                # a training resumed from a checkpoint that lost its time: no train time rather than a wrong one
                seconds = summary["train_seconds"] if summary.get("train_seconds_complete", True) else None
                stage.finish(train_seconds=seconds, steps=summary["steps"])
                # a finished training resumes nothing (a changed key retrains from scratch): its checkpoints, each
                # the model plus the optimiser's state, would only fill the disk over a study's many trainings
                shutil.rmtree(out / "checkpoints", ignore_errors=True)
            train_times[name] = stage.info().get("train_seconds")
            for alpha in own.wise_ft:  # WiSE-FT: the trained weights interpolated with the base's
                merged = wise_ft_name(name, alpha)
                mstage = Stage(run / "models" / f"{merged}.stage.json", {"base": base_id, "trained": stage.hash,
                                                                           "alpha": alpha})
                if not (mstage.done() and (run / "models" / merged).is_dir()):
                    shutil.rmtree(run / "models" / merged, ignore_errors=True)
                    mstage.start()
                    merge_models(base_path, out, run / "models" / merged, alpha,
                                 trust_remote_code=cfg.trust_remote_code)
                    mstage.finish()
                model_stages[merged], model_dirs[merged] = mstage.hash, str(run / "models" / merged)

    # 4. evaluate -------------------------------------------------------------------------------
    dev_qids = _read_qids(mine_dir / "dev_qrels.tsv")
    eval_sets = [(ds.name, ds) for ds in test_sets]
    if dev_qids:
        eval_sets.insert(1, (f"{train_split.name}-dev", subset_queries(train_split, dev_qids)))
    dataset_runs: dict[str, dict] = {name: {"models": {}} for name, _ in eval_sets}
    for name, mdir in model_dirs.items():
        loaded = base if name == "base" else None
        for ds_name, ds in eval_sets:
            path = run / "eval" / name / f"{ds_name}.json"
            stage = Stage(path.with_suffix(".stage.json"), {
                "encoding": encoding_key(model_stages[name], precision, docs_digest(ds), backend=cfg.backend),
                "dataset": _dataset_stamp(ds.path, run / "file_hashes.json"), "split": ds.split, "queries": queries_digest(ds),
                "max_seq_length": cfg.eval_max_seq_length, "top_k": cfg.top_k})
            if not (stage.done() and path.exists()):
                if loaded is None:
                    loaded = load_model(mdir, device=cfg.device, max_seq_length=cfg.eval_max_seq_length,
                                        trust_remote_code=cfg.trust_remote_code, backend=cfg.backend)
                stage.start()
                result = evaluate_model(loaded, ds, top_k=cfg.top_k, precision=cfg.precision,
                                        batch_size=cfg.eval_batch_size, include_run=False, model_name=mdir,
                                        embeddings_cache=emb_dir / name / f"{ds.path.name}.npy",
                                        show_progress_bar=cfg.show_progress_bar, model_key=model_stages[name])
                path.parent.mkdir(parents=True, exist_ok=True)
                write_json(result, path)
                stage.finish()
                logger.info("[eval %s on %s] nDCG@10 %.4f", name, ds_name, result["metrics"]["ndcg@10"])
            else:
                logger.info("[eval %s on %s] up to date, skipped", name, ds_name)
                result = json.loads(path.read_text())
            dataset_runs[ds_name]["models"][name] = _to_report_entry(result, train_times.get(name))
        del loaded
    for ds_run in dataset_runs.values():  # one report model per loss, its seeds inside (averaged over)
        per_name = ds_run["models"]
        ds_run["models"] = {"base": per_name["base"], **{
            wise_ft_name(loss, a): {"seeds": {k: per_name[wise_ft_name(seed_model_name(loss, k, cfg.seed), a)]
                                              for k in seeds}}
            for loss, (_, own) in plan.items() for a in (None, *own.wise_ft)}}

    # 5. report -------------------------------------------------------------------------------
    logs = {name: _read_log(run / "models" / name / "train_log.jsonl") for name in model_dirs if name != "base"}
    results = {"dataset_runs": dataset_runs, "training_logs": logs,
               "config": {**dataclasses.asdict(cfg), "seeds": list(seeds), "models": models,
                          "wall_time_s": round(time.perf_counter() - started, 1)}}
    return write_report(results, run, seed=cfg.seed)


def _read_qids(path: Path) -> list[str]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()[1:]
    return sorted({line.split("\t")[0] for line in lines if line.strip()})


def _read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
