"""``dpo-retrieval compare``: mine triplets, train each loss from one base, evaluate on BEIR, report.

Every stage writes under the run directory and records a hash of its inputs and settings in a
``*.stage.json`` file beside its output; a re-run skips each stage whose hash still matches, and a
training run that was interrupted resumes from its last checkpoint.

    RUN/mine/                  triplets.jsonl, train_qrels.tsv, dev_qrels.tsv, mining.json (train queries
                               with a test or dev query's text are dropped, and listed there)
    RUN/train_triplets.jsonl   the triplets every loss trains on (the preset's subsample)
    RUN/models/<loss>/         trained models (sentence-transformers format) + train_log.jsonl
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dpo_retrieval._io import write_json
from dpo_retrieval.errors import UserInputError, positive, require
from dpo_retrieval.experiment.stages import Stage, _dataset_stamp, fingerprint  # noqa: F401
from dpo_retrieval.experiment.variants import parse_variants, seed_model_name, variant_config, wise_ft_name  # noqa: F401
from dpo_retrieval.mining import MineArgs
from dpo_retrieval.retrieval.args import ModelArgs, ScoringArgs
from dpo_retrieval.training.args import LOSSES, DPOArgs

logger = logging.getLogger(__name__)

#: The presets. ``quick`` trains on a fixed-seed subsample of the mined triplets with a shorter
#: max length so the whole comparison fits in about 15 minutes on a 2-core CPU; evaluation is
#: still on the full test split at max length 256. ``full`` is the real experiment. A preset fills
#: only the fields left None.
PRESETS = {
    "quick": {"max_triplets": 256, "train_max_seq_length": 128, "num_train_epochs": 1.0,
              "per_device_train_batch_size": 32, "learning_rate": 5e-5},
    "full": {"max_triplets": None, "train_max_seq_length": 256, "num_train_epochs": 1.0,
             "per_device_train_batch_size": 32, "learning_rate": 2e-5},
}
#: DPOArgs fields only the DPO loss reads (training.build_loss / train): left out of the other
#: losses' stage keys, so a DPO-only change does not retrain contrastive or dpr.
DPO_ONLY = ("beta", "scale", "policy", "loss_type", "label_smoothing", "reference_free", "reference", "reference_model")
#: the loss-specific DPOArgs fields each loss reads (the rest, e.g. dropout, every loss reads): only these
#: enter a loss's training stage key, so changing one loss's option retrains that loss only
LOSS_FIELDS = {"dpo": DPO_ONLY + ("hinge_margin",),
               "dpo+mnrl": DPO_ONLY + ("hinge_margin", "mnrl_weight", "mnrl_scale"),
               "sdpo": DPO_ONLY + ("sdpo_gamma",), "contrastive": ("mnrl_scale",),
               "cmnrl": ("mini_batch_size", "mnrl_scale")}
_LOSS_SPECIFIC = {k for fields in LOSS_FIELDS.values() for k in fields}


def loss_settings(loss: str, dpo: DPOArgs) -> dict:
    """The DPOArgs values ``loss`` reads (what its training stage key holds)."""
    own = set(LOSS_FIELDS.get(loss, ()))
    return {k: v for k, v in dataclasses.asdict(dpo).items() if k not in _LOSS_SPECIFIC or k in own}
METRIC_NAMES = {"ndcg@10": "NDCG@10", "recall@100": "Recall@100", "map@100": "MAP@100", "mrr@10": "MRR@10"}


def _names(value) -> list[str]:
    """``"dpo,contrastive"``, ``["dpo", "contrastive"]`` or ``["dpo,contrastive"]`` -> ``["dpo", "contrastive"]``."""
    items = [value] if isinstance(value, str) else list(value or ())
    return [x.strip() for item in items for x in str(item).split(",") if x.strip()]


@dataclass(kw_only=True)
class CompareArgs(ScoringArgs, ModelArgs):
    """``compare``: the whole experiment. The DPO options are :class:`DPOArgs`, the mining options
    :class:`MineArgs` (its seed is this seed); the training budget has the training arguments' names and
    defaults from the preset where None. Checked when made; errors name the field."""

    dataset: str = field(metadata={"help": "BEIR dataset with train and test splits (name or path)"})
    output: str = field(metadata={"help": "run directory"})
    losses: list[str] = field(default_factory=lambda: ["dpo", "contrastive"], metadata={
        "help": "losses to train, space- or comma-separated: " + ", ".join(LOSSES) + " (see train --help, --loss), "
                "or names of --variants"})
    variants: dict | str | None = field(default=None, metadata={
        "help": "named variants, NAME: {loss: LOSS, option: value, ...} (a config file's mapping, or JSON here): a "
                "variant's name in --losses trains its loss with these options over the run's (the training budget, "
                "wise_ft, DPO and loss options), reported under its name; see experiment/variants.py"})
    eval_datasets: list[str] = field(default_factory=list, metadata={
        "help": "extra BEIR test sets for out-of-domain retention, e.g. dbpedia-entity-5k"})
    preset: Literal["quick", "full"] = field(default="quick", metadata={
        "help": "budget preset: " + "; ".join(f"{k}: " + ", ".join(f"{n}={v}" for n, v in d.items())
                                              for k, d in PRESETS.items()) + "; options override it"})
    max_triplets: int | None = field(default=None, metadata={
        "help": "train on a seeded subsample of this many triplets"})
    train_max_seq_length: int | None = field(default=None, metadata={"help": "tokens per text in training"})
    train_negatives: int | None = field(default=None, metadata={
        "help": "train on the first N mined negatives of each triplet, at most --negatives (train's --negatives; "
                "default: all)"})
    num_train_epochs: float | None = field(default=None, metadata={"help": "training epochs (default: the preset's)"})
    per_device_train_batch_size: int | None = field(default=None, metadata={
        "help": "triplets per training batch (default: the preset's)"})
    learning_rate: float | None = field(default=None, metadata={"help": "learning rate (default: the preset's)"})
    warmup_steps: float = field(default=0.1, metadata={"help": "warm-up: a ratio of the steps (< 1) or steps"})
    seed: int = field(default=42, metadata={"help": "seed for mining, subsampling and training"})
    seeds: list[str] = field(default_factory=list, metadata={
        "help": "training seeds, comma- or space-separated: each loss trained once per seed (mining, the dev split and "
                "the triplet subsample use --seed; include --seed to reuse an earlier run's models; default: --seed)"})
    wise_ft: list[float] = field(default_factory=list, metadata={
        "help": "WiSE-FT: also evaluate each trained model's weights interpolated with the base's, "
                "(1-A)*base + A*trained, for each A given (e.g. 0.5), as <loss>-wiseft<A>"})
    top_k: int = field(default=1000, metadata={"help": "documents retrieved per query"})
    dpo: DPOArgs = field(default_factory=DPOArgs, metadata={"help": "the DPO loss (dropout: every loss)"})
    mining: MineArgs = field(default_factory=MineArgs, metadata={"help": "mining settings"})
    show_progress_bar: bool = field(default=True, metadata={"help": "progress bars while encoding and training"})

    def __post_init__(self) -> None:
        ModelArgs.__post_init__(self)
        ScoringArgs.__post_init__(self)
        self.losses, self.eval_datasets = _names(self.losses), _names(self.eval_datasets)
        self.variants = parse_variants(self.variants)
        self.seeds = [_seed(s) for s in _names([str(x) for x in ([self.seeds] if isinstance(self.seeds, (str, int))
                                                                   else self.seeds)])]
        training_seeds(self)
        unknown = [loss for loss in self.losses if loss not in LOSSES and loss not in self.variants]
        require([
            (not unknown and self.losses,
             f"losses: unknown {', '.join(unknown) or '(none)'}; choose from {', '.join([*LOSSES, *self.variants])}"),
            (len(set(self.losses)) == len(self.losses), f"losses: each name once, got {', '.join(self.losses)}"),
            (self.preset in PRESETS, f"preset: choose one of {', '.join(PRESETS)}, got {self.preset!r}"),
            (positive(self.max_triplets, optional=True), f"max_triplets: must be > 0, got {self.max_triplets}"),
            (positive(self.train_max_seq_length, optional=True),
             f"train_max_seq_length: must be > 0, got {self.train_max_seq_length}"),
            (positive(self.train_negatives, optional=True), f"train_negatives: must be > 0, got {self.train_negatives}"),
            (self.train_negatives is None or self.train_negatives <= self.mining.negatives,
             f"train_negatives: {self.train_negatives} is more than the {self.mining.negatives} mined per positive; "
             f"mine at least {self.train_negatives} (negatives: {self.train_negatives})"),
            (positive(self.num_train_epochs, optional=True),
             f"num_train_epochs: must be a finite number > 0, got {self.num_train_epochs}"),
            (positive(self.per_device_train_batch_size, optional=True),
             f"per_device_train_batch_size: must be > 0, got {self.per_device_train_batch_size}"),
            (positive(self.learning_rate, optional=True),
             f"learning_rate: must be a finite number > 0, got {self.learning_rate}"),
            (self.warmup_steps >= 0, f"warmup_steps: must be >= 0, got {self.warmup_steps}"),
            (positive(self.top_k), f"top_k: must be > 0, got {self.top_k}"),
            (all(0.0 < float(a) < 1.0 for a in self.wise_ft), f"wise_ft: each alpha in (0, 1), got {self.wise_ft}"),
            (len(set(self.wise_ft)) == len(self.wise_ft), f"wise_ft: each alpha once, got {self.wise_ft}"),
        ])
        self.dpo.resolved()  # checks every DPO field

    def resolved(self) -> "CompareArgs":
        """The preset's values where a budget field is None, the policy's beta and scale where None (what
        the report records as used), and this seed in the mining settings."""
        values = {k: (getattr(self, k) if getattr(self, k) is not None else v) for k, v in PRESETS[self.preset].items()}
        return dataclasses.replace(self, **values, dpo=self.dpo.resolved(),
                                   mining=dataclasses.replace(self.mining, seed=self.seed))


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


#: the training arguments that enter a training stage's key
TRAINING_KEY = ("num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
                "learning_rate", "warmup_steps", "logging_steps", "save_steps", "seed")


def _train_config(cfg: CompareArgs, loss: str, output: Path, triplets: Path):
    """``(TrainArgs, DPOArgs, training arguments)`` of one loss's training run, checked (``cfg`` resolved)."""
    from dpo_retrieval.training.args import TrainArgs, check_training_arguments, training_arguments

    # every mined negative (mining.negatives of them) is all of them: no option, so the stage key is unchanged
    negatives = None if cfg.train_negatives == cfg.mining.negatives else cfg.train_negatives
    inputs = TrainArgs(triplets=str(triplets), model=cfg.model, loss=loss, max_seq_length=cfg.train_max_seq_length,
                       negatives=negatives, device=cfg.device, precision=cfg.precision,
                       trust_remote_code=cfg.trust_remote_code).check()
    args = training_arguments(str(output), num_train_epochs=cfg.num_train_epochs,
                              per_device_train_batch_size=cfg.per_device_train_batch_size,
                              learning_rate=cfg.learning_rate, warmup_steps=cfg.warmup_steps, seed=cfg.seed,
                              logging_steps=1, save_steps=50, disable_tqdm=not cfg.show_progress_bar)
    check_training_arguments(args)
    return inputs, cfg.dpo, args


def train_settings(inputs, loss: str, dpo: DPOArgs, targs) -> dict:
    """What a training stage's key holds of its run: the TrainArgs (not the file, which the data stage's hash
    stands for, nor the model's name), the DPOArgs ``loss`` reads and :data:`TRAINING_KEY`. ``negatives``
    only when set, so the keys of runs made before the option existed still match."""
    own = {k: v for k, v in dataclasses.asdict(inputs).items()
           if k not in ("triplets", "model") and not (k == "negatives" and v is None)}
    return {**own, **loss_settings(loss, dpo), **{k: getattr(targs, k) for k in TRAINING_KEY}}


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
    from dpo_retrieval.data.triplets import load_triplets, save_triplets
    from dpo_retrieval.evaluation.evaluate import evaluate_model
    from dpo_retrieval.experiment.report import write_report
    from dpo_retrieval.mining import mine, overlapping_queries, subset_queries
    from dpo_retrieval.models import load_model, resolve_model_path
    from dpo_retrieval.retrieval.cache import corpus_digest, encoding_key, model_id, texts_digest
    from dpo_retrieval.training import train
    from dpo_retrieval.training.merge import merge_models

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
    write_json({**dataclasses.asdict(cfg), "seeds": list(seeds)}, run / "config.json", default=str)
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
        "dataset": _dataset_stamp(train_split.path), "encoding": encoding_key(base_id, precision, docs_digest(train_split), backend=cfg.backend),
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
            settings = train_settings(inputs, loss, dpo, targs)
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
                train(dataclasses.replace(inputs, resume=resume), targs, dpo)
                summary = json.loads((out / "train_summary.json").read_text())
                stage.finish(train_seconds=summary["train_seconds"], steps=summary["steps"])
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
                "dataset": _dataset_stamp(ds.path), "split": ds.split, "queries": queries_digest(ds),
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
               "config": {**dataclasses.asdict(cfg), "seeds": list(seeds),
                          "wall_time_s": round(time.perf_counter() - started, 1)}}
    return write_report(results, run, seed=cfg.seed)


def _seed(text: str):
    try:
        return int(text)
    except ValueError:
        return text  # training_seeds() refuses it with the field's name


def training_seeds(cfg: "CompareArgs") -> tuple[int, ...]:
    """The training seeds: ``cfg.seeds``, or ``(cfg.seed,)`` when empty (raises UserInputError on a
    non-integer or repeated seed). Mining, the dev split and the triplet subsample always use ``cfg.seed``."""
    seeds = tuple(cfg.seeds) or (cfg.seed,)
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int)]
    if bad:
        raise UserInputError(f"seeds: integers only, got {bad[0]!r}")
    if len(set(seeds)) < len(seeds):
        raise UserInputError(f"seeds: each seed once, got {','.join(map(str, seeds))}")
    return seeds


def _read_qids(path: Path) -> list[str]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()[1:]
    return sorted({line.split("\t")[0] for line in lines if line.strip()})


def _read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
