"""``dpo-retrieval sweep GRID.yaml``: a grid over training options, each point trained on the same
triplets and scored on the dev split only (never test).

A grid file (YAML or JSON)::

    dataset: scifact                 # BEIR dataset whose train split the triplets were mined from
    mine: runs/quick/mine            # a `dpo-retrieval mine` (or compare's RUN/mine) directory:
                                     #   triplets.jsonl and dev_qrels.tsv (the held-out train queries)
    triplets: runs/quick/train_triplets.jsonl   # optional: train on this file instead of mine/triplets.jsonl
    output: runs/sweep
    fixed: {loss: dpo, max_seq_length: 128, per_device_train_batch_size: 32}
    grid: {beta: [0.3, 1, 3], learning_rate: [2.0e-5, 5.0e-5]}
    points: [{dropout: "off"}, {policy: sigmoid}]   # optional: one-at-a-time variations of fixed
                                     #   ({negatives: 2}: the first 2 hard negatives of each triplet row)

Option names are the fields of :class:`~dpo_retrieval.training.args.TrainArgs`,
:class:`~dpo_retrieval.training.args.DPOArgs` and sentence-transformers'
``SentenceTransformerTrainingArguments``. Every point is a training stage under
``OUTPUT/points/<id>/`` (skipped when done, resumed from its last checkpoint when interrupted) and its
scores are written to ``OUTPUT/sweep.json`` as they come. A point whose row in ``OUTPUT/sweep.json``
has its training key's hash (``train_hash``) and the scores this run asks for is neither trained nor
scored again, even with ``points/`` gone (a results file copied into a fresh OUTPUT, or models deleted
to save disk); ``results`` puts that file elsewhere (e.g. under version control), and it also carries the
fast dev pool and the base model's scores on it, so a fresh machine resumes without re-encoding. A row
records the pool's key and the precision it was scored with; one scored with another pool or precision
is scored again. ``points`` holds this grid's rows in grid order, rows of options the grid no longer has
move to ``stale_points``, and ``best`` is written only once every point is scored.

Each row's ``drift_dev`` is :func:`~dpo_retrieval.experiment.fast_dev.score_drift` of the point's pool
scores against the base model's: the mean ``|s - s_ref|`` on held-out dev pairs (judged and not).

The dev score is fast by default: each dev query re-ranks only its ``fast_depth`` best documents under
the base model plus its judged documents, so a point encodes that pool instead of the corpus.
``full_dev`` also scores full dev retrieval, and the Spearman correlation of the two over the grid
says how far the fast score can be trusted for choosing a configuration.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from dpo_retrieval._io import write_json
from dpo_retrieval.errors import UserInputError, positive, require
from dpo_retrieval.experiment.stages import Stage, fingerprint
from dpo_retrieval.retrieval.args import DeviceArgs, ScoringArgs

logger = logging.getLogger(__name__)

GRID_KEYS = ("dataset", "mine", "triplets", "output", "fixed", "grid", "points")


@dataclass
class SweepArgs(ScoringArgs, DeviceArgs):
    """The sweep's own options; what is trained is the grid file's. Checked when made (errors name the field)."""

    grid: str = field(metadata={"help": "grid file (.yaml/.yml/.json): dataset, mine, triplets, output, fixed, grid"})
    output: str | None = field(default=None, metadata={"help": "sweep directory (default: the grid file's output)"})
    results: str | None = field(default=None, metadata={
        "help": "results file (default: OUTPUT/sweep.json); an existing one is resumed: a point it records with the "
                "same training key and fast depth is not trained or scored again, its fast dev pool is reused (so a "
                "results file kept in git resumes on a machine without the models)"})
    fast_depth: int = field(default=20, metadata={
        "help": "fast dev score: each dev query re-ranks its top N documents under the base model plus its judged "
                "documents (SciFact's 80 dev queries: N 100 pools 3,641 of 5,183 documents, N 20 1,285)"})
    full_dev: bool = field(default=False, metadata={
        "help": "also score full dev retrieval for every point, and report the fast score's Spearman agreement "
                "with it over the grid"})

    def __post_init__(self) -> None:
        DeviceArgs.__post_init__(self)
        ScoringArgs.__post_init__(self)
        require([(positive(self.fast_depth), f"fast_depth: must be > 0, got {self.fast_depth}")])

    def check(self) -> "SweepArgs":
        """Checks again (a field may have been set since) and returns self."""
        self.__post_init__()
        return self


# ----------------------------------------------------------------------------------------------
def read_grid(path: str | Path) -> dict:
    """The grid file as a checked dict (raises UserInputError naming the file)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserInputError.at(p, None, "no such grid file")
    try:
        data = (json.loads(p.read_text(encoding="utf-8-sig")) if p.suffix.lower() == ".json"
                else yaml.safe_load(p.read_text(encoding="utf-8-sig")))
    except Exception as err:  # yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError
        raise UserInputError.at(p, None, f"cannot read the grid: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserInputError.at(p, None, "expected a mapping with dataset, mine, grid ...")
    unknown = sorted(set(data) - set(GRID_KEYS))
    if unknown:
        raise UserInputError.at(p, None, f"unknown key {', '.join(map(repr, unknown))}; known: {', '.join(GRID_KEYS)}")
    for key in ("dataset", "mine"):
        if not data.get(key):
            raise UserInputError.at(p, None, f"{key}: required")
    grid, fixed = data.get("grid") or {}, data.get("fixed") or {}
    if not isinstance(grid, dict) or not isinstance(fixed, dict):
        raise UserInputError.at(p, None, "fixed and grid must be mappings of option: value(s)")
    grid = {str(k).replace("-", "_"): (v if isinstance(v, list) else [v]) for k, v in grid.items()}
    if any(not v for v in grid.values()):
        raise UserInputError.at(p, None, "grid: every option needs at least one value")
    points = data.get("points") or []
    if not isinstance(points, list) or not all(isinstance(x, dict) for x in points):
        raise UserInputError.at(p, None, "points: must be a list of mappings of option: value")
    base = p.parent
    resolve = lambda v: str((base / v) if not Path(v).is_absolute() and (base / v).exists() else v)  # noqa: E731
    return {"dataset": str(data["dataset"]), "mine": resolve(str(data["mine"])),
            "triplets": resolve(str(data["triplets"])) if data.get("triplets") else None,
            "output": data.get("output"), "fixed": {str(k).replace("-", "_"): v for k, v in fixed.items()},
            "grid": grid, "points": [{str(k).replace("-", "_"): v for k, v in x.items()} for x in points]}


def sweep_points(spec: dict) -> list[dict]:
    """Every point's options: ``fixed`` plus each grid combination, then ``fixed`` plus each of the file's
    explicit ``points`` (one-at-a-time variations); a repeated point once."""
    combos = grid_points(spec["grid"]) if spec["grid"] or not spec.get("points") else []
    out: list[dict] = []
    for p in combos + list(spec.get("points") or []):
        options = {**spec["fixed"], **p}
        if options not in out:
            out.append(options)
    return out


def grid_points(grid: dict) -> list[dict]:
    """Every combination of the grid's values, in file order (the first option varies slowest)."""
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def split_options(options: dict) -> tuple[dict, dict, dict]:
    """``(TrainArgs fields, DPOArgs fields, training-argument fields)`` of one point's options."""
    from sentence_transformers import SentenceTransformerTrainingArguments

    from dpo_retrieval.training.args import DPOArgs, TrainArgs

    own = {f.name for f in dataclasses.fields(TrainArgs)}
    dpo = {f.name for f in dataclasses.fields(DPOArgs)}
    hf = {f.name for f in dataclasses.fields(SentenceTransformerTrainingArguments)}
    reserved = {"triplets", "output_dir", "resume", "corpus", "queries"}
    unknown = sorted(k for k in options if k in reserved or k not in own | dpo | hf)
    if unknown:
        raise UserInputError(f"grid: unknown or reserved option {', '.join(map(repr, unknown))} (options are the "
                             "fields of TrainArgs, DPOArgs and SentenceTransformerTrainingArguments)")
    return ({k: v for k, v in options.items() if k in own}, {k: v for k, v in options.items() if k in dpo},
            {k: v for k, v in options.items() if k in hf and k not in own | dpo})


#: the defaults of the settings that became per-loss (``training.defaults``, 2026-12-06), as they were before:
#: a point's key holds a setting it does not give only where today's default differs from these, so a point
#: recorded before keeps its key unless what it trains with changed (``negatives``: None is every negative)
LEGACY_DEFAULTS = {"learning_rate": 2e-5, "num_train_epochs": 1.0, "per_device_train_batch_size": 32,
                   "mnrl_scale": 20.0, "mnrl_weight": 0.5, "negatives": None, "beta": {"linear": 1.0, "sigmoid": 10.0}}


def defaulted_settings(options: dict, file_negatives: int) -> dict:
    """The settings ``options`` leaves to a default whose value now differs from :data:`LEGACY_DEFAULTS`
    (with a triplet file of ``file_negatives`` negatives per row): what a point's key must add to its options."""
    from dpo_retrieval.experiment.compare_args import LOSS_FIELDS
    from dpo_retrieval.training.args import DPOArgs, budget_defaults
    from dpo_retrieval.training.defaults import capped_default

    given = {k: v for k, v in options.items() if v is not None}  # an option set to None is left to its default
    loss = given.get("loss", "dpo")
    dpo_fields = {f.name for f in dataclasses.fields(DPOArgs)}
    dpo = DPOArgs(**{k: v for k, v in given.items() if k in dpo_fields}).resolved(loss)
    negatives = capped_default(loss, file_negatives)
    now = {**{k: v for k, v in budget_defaults(loss).items() if k in LEGACY_DEFAULTS},
           "mnrl_scale": dpo.mnrl_scale, "mnrl_weight": dpo.mnrl_weight, "beta": dpo.beta,
           "negatives": None if negatives is None or negatives >= file_negatives else negatives}
    legacy = {**LEGACY_DEFAULTS, "beta": LEGACY_DEFAULTS["beta"][dpo.policy]}
    reads = set(LOSS_FIELDS.get(loss, ()))  # a loss option the loss does not read changes nothing
    unused = {"num_train_epochs"} if (given.get("max_steps") or 0) > 0 else set()  # max_steps decides the length
    return {k: v for k, v in now.items() if k not in given and k not in unused and v != legacy[k]
            and (k not in ("mnrl_scale", "mnrl_weight", "beta") or k in reads)}


def train_key(options: dict, triplets_digest: str, base_key: str, file_negatives: int = 1) -> tuple[dict, str]:
    """A point's training stage key and its hash (the row's ``train_hash``), known without training: its options
    and the defaulted settings that differ from before per-loss defaults (:func:`defaulted_settings`)."""
    key = {"base": base_key, "triplets": triplets_digest, "options": options}
    changed = defaulted_settings(options, file_negatives)
    if changed:
        key["defaults"] = changed
    return key, fingerprint(key)


def _train_point(options: dict, triplets: Path, out: Path, args: SweepArgs, key: dict,
                 reference_cache: Path | None = None):
    """Train one point (or find it trained) under its stage ``key``; returns ``(model dir, seconds)``. The
    points share ``reference_cache`` (the frozen reference's embeddings of the training texts)."""
    from dpo_retrieval.training import train
    from dpo_retrieval.training.args import CHECKPOINT_STEPS, DPOArgs, TrainArgs, training_arguments

    own, dpo, hf = split_options(options)
    inputs = TrainArgs(triplets=str(triplets), **{"precision": args.precision, "device": args.device, **own}).check()
    dpo_args = DPOArgs(**dpo).resolved(inputs.loss)
    targs = training_arguments(str(out / "model"), inputs.loss, **{"logging_steps": 1, "save_steps": CHECKPOINT_STEPS, "disable_tqdm": True,
                                                              **hf})
    stage = Stage(out / "train.stage.json", key)
    if not stage.done():
        resume = stage.started_same() and (out / "model" / "checkpoints").is_dir()
        if (out / "model").exists() and not resume:
            import shutil

            shutil.rmtree(out / "model")
        stage.start()
        train(dataclasses.replace(inputs, resume=resume), targs, dpo_args, reference_cache=reference_cache)
        summary = json.loads((out / "model" / "train_summary.json").read_text())
        stage.finish(train_seconds=summary["train_seconds"], steps=summary["steps"])
    return out / "model", stage.info().get("train_seconds")


def _file_digest(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _spearman(pairs: list[tuple[float, float]]) -> dict | None:
    if len(pairs) < 3:
        return None
    import math

    from scipy.stats import spearmanr

    fast, full = [a for a, _ in pairs], [b for _, b in pairs]
    if len(set(fast)) < 2 or len(set(full)) < 2:
        return {"spearman": None, "p_value": None, "points": len(pairs), "note": "constant scores: undefined"}
    res = spearmanr(fast, full)
    if not math.isfinite(float(res.statistic)):
        return {"spearman": None, "p_value": None, "points": len(pairs), "note": "undefined"}
    return {"spearman": round(float(res.statistic), 4), "p_value": round(float(res.pvalue), 6), "points": len(pairs)}


# ----------------------------------------------------------------------------------------------
def run_sweep(args: SweepArgs) -> dict:
    """Train and dev-score every grid point (resumable); returns what ``OUTPUT/sweep.json`` holds."""
    from dpo_retrieval.data.beir import load_beir
    from dpo_retrieval.data.triplets import count_negatives, first_negatives, load_triplets
    from dpo_retrieval.evaluation.metrics import evaluate_run, per_query_metrics, report_metrics
    from dpo_retrieval.experiment.compare import _read_qids
    from dpo_retrieval.experiment.fast_dev import candidate_pool, score_drift, score_pool
    from dpo_retrieval.mining import subset_queries
    from dpo_retrieval.models import load_model, resolve_model_path
    from dpo_retrieval.retrieval.cache import model_id

    args = args.check()
    spec = read_grid(args.grid)
    out = Path(args.output or spec["output"] or "")
    if not str(out) or str(out) == ".":
        raise UserInputError("output: required (in the grid file or as an option)")
    mine = Path(spec["mine"])
    triplets = Path(spec["triplets"]) if spec["triplets"] else mine / "triplets.jsonl"
    dev_qids = _read_qids(mine / "dev_qrels.tsv")
    if not triplets.is_file():
        raise UserInputError.at(triplets, None, "no such triplet file")
    if not dev_qids:
        raise UserInputError.at(mine / "dev_qrels.tsv", None, "no dev queries (mine with a dev fraction > 0)")
    points = sweep_points(spec)
    for options in points:  # every point's options are checked before anything is trained
        split_options(options)
    data = load_triplets(str(triplets))
    for options in points:  # and its negatives against the file's
        first_negatives(data, options.get("negatives"), triplets)
    dev = subset_queries(load_beir(spec["dataset"], "train"), dev_qids)
    model_name = spec["fixed"].get("model")
    base_key = model_id(resolve_model_path(model_name), memo_file=out / "file_hashes.json")
    out.mkdir(parents=True, exist_ok=True)

    # the fast dev pool: each dev query's top fast_depth under the base model, plus its judged documents
    pool_file = out / f"fast_dev_pool_{args.fast_depth}.json"
    pool_stage = Stage(pool_file.with_suffix(".stage.json"), {"base": base_key, "dev": sorted(dev_qids),
                                                               "depth": args.fast_depth,
                                                               "max_seq_length": args.eval_max_seq_length})
    results_file = Path(args.results) if args.results else out / "sweep.json"
    carried = json.loads(results_file.read_text()) if results_file.exists() else {}
    fast_pool = carried.get("fast_pool") or {}
    if fast_pool.get("key") == pool_stage.hash:
        pool = fast_pool["pool"]
    elif pool_stage.done() and pool_file.exists():
        pool = json.loads(pool_file.read_text())
    else:
        base = load_model(model_name, device=args.device, max_seq_length=args.eval_max_seq_length)
        pool_stage.start()
        pool = candidate_pool(base, dev, args.fast_depth, batch_size=args.eval_batch_size,
                              precision=args.precision, embeddings_cache=out / "base_corpus.npy", model_key=base_key)
        write_json(pool, pool_file)
        pool_stage.finish(docs=len({d for c in pool.values() for d in c}))
        del base
    pool_docs = len({d for c in pool.values() for d in c})
    logger.info("fast dev: %d queries re-rank %d pooled documents (of %d)", len(pool), pool_docs, len(dev.doc_ids))
    base_run = fast_pool.get("base_run") if fast_pool.get("key") == pool_stage.hash else None

    def reference_run():  # the base model's scores on the pool: the reference of each point's drift
        nonlocal base_run
        if base_run is None:
            base = load_model(model_name, device=args.device, max_seq_length=args.eval_max_seq_length)
            base_run = score_pool(base, dev, pool, batch_size=args.eval_batch_size, precision=args.precision)
        return base_run

    rows = {r["id"]: r for r in carried.get("stale_points", []) + carried.get("points", [])}
    # what a row was scored with: its own record, else (rows written before rows recorded it) the file's
    scored_with = {"pool_key": (carried.get("fast_pool") or {}).get("key"),
                   "precision": (carried.get("sweep") or {}).get("precision")}
    current = {"pool_key": pool_stage.hash, "precision": args.precision}
    summary = {"grid": spec, "sweep": dataclasses.asdict(args), "dev_queries": len(dev_qids),
               "fast_pool_docs": pool_docs, "corpus_docs": len(dev.doc_ids), "points": []}
    digest = _file_digest(triplets)
    file_negatives = count_negatives(data)
    for i, options in enumerate(points, 1):
        pid = fingerprint({"options": options, "triplets": str(triplets)})
        stage_key, train_hash = train_key(options, digest, base_key, file_negatives)
        row = rows.get(pid) or {}
        if (row.get("train_hash") != train_hash or row.get("fast_depth") != args.fast_depth
                or any(row.get(k, scored_with[k]) != v for k, v in current.items())):
            row = {}
        need_full = args.full_dev and "full_dev" not in row
        recorded = "fast_dev" in row and not need_full  # scored with this training key: no model needed
        if not recorded:
            # the model's stage also holds the precision it trains at (the row's train_hash does not: a row
            # records its precision beside it)
            model_dir, train_s = _train_point(options, triplets, out / "points" / pid, args,
                                              {**stage_key, "precision": args.precision}, out / "reference_cache")
            row.update({"id": pid, "options": options, "train_hash": train_hash, "train_seconds": train_s,
                        "fast_depth": args.fast_depth, **current})
            model = load_model(str(model_dir), device=args.device, max_seq_length=args.eval_max_seq_length)
            if "fast_dev" not in row:
                t0 = time.perf_counter()
                run = score_pool(model, dev, pool, batch_size=args.eval_batch_size, precision=args.precision)
                row["fast_dev"] = report_metrics(evaluate_run(dev.qrels, run))
                row["fast_dev_per_query_ndcg@10"] = {q: m["ndcg@10"] for q, m in
                                                     per_query_metrics(dev.qrels, run).items()}
                row["fast_dev_seconds"] = round(time.perf_counter() - t0, 2)
                row["drift_dev"] = score_drift(run, reference_run(), dev.qrels)
            if need_full:
                from dpo_retrieval.evaluation.evaluate import evaluate_model

                t0 = time.perf_counter()
                res = evaluate_model(model, dev, top_k=1000, batch_size=args.eval_batch_size,
                                     precision=args.precision, include_run=False, show_progress_bar=False,
                                     model_name=str(model_dir), model_key=train_hash)
                row["full_dev"] = res["metrics"]
                row["full_dev_seconds"] = round(time.perf_counter() - t0, 2)
            del model
        rows[pid] = row
        ids = [fingerprint({"options": o, "triplets": str(triplets)}) for o in points]
        summary["points"] = [rows[p] for p in ids if p in rows and rows[p].get("options") in points]
        summary["stale_points"] = [r for p, r in rows.items() if r not in summary["points"]]
        pairs = [(r["fast_dev"]["ndcg@10"], r["full_dev"]["ndcg@10"]) for r in summary["points"]
                 if "fast_dev" in r and "full_dev" in r]
        summary["agreement_ndcg@10"] = _spearman(pairs)
        summary["fast_pool"] = {"key": pool_stage.hash, "depth": args.fast_depth, "pool": pool, "base_run": base_run}
        write_json(summary, results_file)
        logger.info("[sweep %d/%d] %s: fast dev nDCG@10 %.4f%s%s", i, len(points), options,
                    row["fast_dev"]["ndcg@10"],
                    f", full dev {row['full_dev']['ndcg@10']:.4f}" if "full_dev" in row else "",
                    " (recorded, skipped)" if recorded else "")
    scored = [r for r in summary["points"] if r["options"] in points]
    key = "full_dev" if args.full_dev else "fast_dev"
    summary["best"] = max(scored, key=lambda r: r[key]["ndcg@10"])["options"] if scored else None
    write_json(summary, results_file)
    return summary
