"""``train``: one call from a triplet file to a saved sentence-transformers model.

Built on :class:`sentence_transformers.SentenceTransformerTrainer`; what this package adds is the
glue: the reference scores, the loss choice, reward metrics in the log, a JSONL log, a guard
against non-finite losses and gradients, and an atomic final save.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from dpo_retrieval._io import write_json
from dpo_retrieval.errors import UserInputError
from dpo_retrieval.losses import DPOLoss, DPOMNRLLoss, SDPOLoss, cached_mnrl
from dpo_retrieval.training.args import LOSSES, DPOArgs, TrainArgs, check_training_arguments
from dpo_retrieval.training.distributed import barrier, world_size
from dpo_retrieval.training.dev import (best_model_settings, build_evaluator, check_eval_args, early_stopping,
                                        eval_metric_names, load_dev_split, load_eval_triplets, primary_metric,
                                        strategy)
from dpo_retrieval.training.save import _latest_checkpoint, save_model_atomically
from dpo_retrieval.training.trainer import (FiniteGradientCallback, JsonlLogCallback, NonFiniteError,
                                            PreferenceTrainer, TrainTimeCallback, disable_dropout)

logger = logging.getLogger(__name__)
#: the training arguments recorded in train_summary.json
TRAINING_SUMMARY = ("output_dir", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                    "gradient_accumulation_steps", "learning_rate", "lr_scheduler_type", "warmup_steps",
                    "weight_decay", "logging_steps", "save_steps", "seed", "report_to", "push_to_hub", "hub_model_id",
                    "eval_strategy", "eval_steps", "load_best_model_at_end", "metric_for_best_model")


def task_prompt(model, task: str) -> str | None:
    """The prompt ``model.encode_query`` (``task="query"``) or ``model.encode_document``
    (``task="document"``) prepends, resolved the way sentence-transformers does; None for none."""
    prompts = getattr(model, "prompts", None) or {}
    names = ("query",) if task == "query" else ("document", "passage", "corpus")
    name = next((n for n in names if n in prompts), getattr(model, "default_prompt_name", None))
    return (prompts.get(name) or None) if name is not None else None


def training_prompts(model, query_col: str, doc_cols: list[str]) -> dict[str, str]:
    """sentence-transformers' per-column ``prompts`` training argument: the query column gets the
    model's query prompt, the positive/negative columns its document prompt, so the policy trains on
    the texts the reference, mining and evaluation encode. Empty when the model has no prompts."""
    query, document = task_prompt(model, "query"), task_prompt(model, "document")
    prompts = {query_col: query} if query else {}
    if document:
        prompts.update({col: document for col in doc_cols})
    return prompts


def default_negatives(cfg: TrainArgs, dataset) -> int | None:
    """The negatives per triplet to train on: ``cfg.negatives`` if given, else the loss's default
    (:mod:`~dpo_retrieval.training.defaults`) capped at what the file has, else None (all)."""
    from dpo_retrieval.data.triplets import count_negatives
    from dpo_retrieval.training.defaults import capped_default

    return cfg.negatives if cfg.negatives is not None else capped_default(cfg.loss, count_negatives(dataset))


def build_loss(loss: str, model, dpo: DPOArgs | None = None, reference=None, reference_similarity: str | None = None):
    """The loss object for ``loss`` (one of :data:`LOSSES`), set by ``dpo``; the contrastive baselines are
    sentence-transformers' own. ``reference``: an online reference (None: precomputed labels);
    ``reference_similarity``: sdpo's similarity for precomputed reference embeddings (default the policy's)."""
    dpo = (dpo or DPOArgs()).resolved(loss).check_loss(loss)
    options = dict(beta=dpo.beta, scale=dpo.scale, policy=dpo.policy, loss_type=dpo.loss_type,
                   label_smoothing=dpo.label_smoothing, reference_free=dpo.reference_free, reference=reference,
                   hinge_margin=dpo.hinge_margin)
    if loss == "dpo":
        return DPOLoss(model, **options)
    if loss == "dpo+mnrl":
        return DPOMNRLLoss(model, mnrl_weight=dpo.mnrl_weight, mnrl_scale=dpo.mnrl_scale, **options)
    if loss == "sdpo":  # reference_free drops the reference: gamma 0
        return SDPOLoss(model, beta=dpo.beta, scale=dpo.scale, gamma=0.0 if dpo.reference_free else dpo.sdpo_gamma,
                        reference=reference, reference_similarity=reference_similarity)
    # under DDP the contrastive baselines score each query against every rank's passages, as one process would
    gather = world_size() > 1
    if loss == "cmnrl":
        return cached_mnrl(model, mini_batch_size=dpo.mini_batch_size, scale=dpo.mnrl_scale,
                           gather_across_devices=gather)
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.util import cos_sim, dot_score

    if loss == "contrastive":
        return MultipleNegativesRankingLoss(model, scale=dpo.mnrl_scale, similarity_fct=cos_sim,
                                            gather_across_devices=gather)
    if loss == "dpr":  # Karpukhin et al. 2020: dot product, no temperature
        return MultipleNegativesRankingLoss(model, scale=1.0, similarity_fct=dot_score, gather_across_devices=gather)
    raise ValueError(f"Unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")


def train(cfg: TrainArgs, args, dpo: DPOArgs | None = None, *, reference_cache: str | Path | None = None) -> Path:
    """Train one model and return its directory, ``args.output_dir``. Bad input fails before anything is written.

    ``reference_cache``: a directory where the precomputed reference keeps the embeddings of the distinct texts
    it encodes, to reuse in a later training from the same start on the same triplets
    (:mod:`dpo_retrieval.training.reference`); compare and sweep pass one in their run directory.

    ``args``: sentence-transformers' ``SentenceTransformerTrainingArguments`` (see
    :func:`~dpo_retrieval.training.args.training_arguments`); checkpoints go to ``output_dir/checkpoints``;
    ``bf16``/``fp16``/``use_cpu`` follow ``cfg.precision`` and ``cfg.device``.

    Under ``torchrun``/``accelerate launch`` every rank reads the same data and runs the same checks (so bad
    input fails on each alike) before any rank writes; the trainer shards the batches; rank 0 alone writes
    the log, checkpoints, model and summary, and the others wait until it has saved."""
    from sentence_transformers.base.sampler import BatchSamplers

    from dpo_retrieval.data.triplets import first_negatives, load_triplets
    from dpo_retrieval.models import has_two_towers, load_model, make_two_towers, resolve_device, resolve_precision
    from dpo_retrieval.losses import model_similarity
    from dpo_retrieval.training.reference import OnlineReference, add_reference_embeddings, add_reference_scores

    cfg = cfg.check()
    dpo = (dpo or DPOArgs()).resolved(cfg.loss).check_loss(cfg.loss)
    check_training_arguments(args)
    check_eval_args(cfg, args)
    output = Path(args.output_dir)
    checkpoints = output / "checkpoints"
    resume_from = _latest_checkpoint(checkpoints) if cfg.resume else None
    if output.exists() and not output.is_dir():
        raise UserInputError(f"output_dir: {output} exists and is not a directory")
    if output.exists() and any(output.iterdir()) and not cfg.resume:
        raise UserInputError(f"output_dir: {output} already exists and is not empty; resume to continue "
                             "its training or choose a new directory")
    if cfg.resume and resume_from is None and (output / "modules.json").exists():
        raise UserInputError(f"resume: {output} holds a finished model and no checkpoint to resume")

    # Everything that can fail on bad input happens before the output directory exists.
    dataset = load_triplets(cfg.triplets, corpus=cfg.corpus, queries=cfg.queries)
    cfg = dataclasses.replace(cfg, negatives=default_negatives(cfg, dataset))  # the summary records what is used
    dataset = first_negatives(dataset, cfg.negatives, cfg.triplets)
    evaluates = strategy(args.eval_strategy) != "no"
    eval_dataset = load_eval_triplets(cfg) if evaluates else None
    dev_split = load_dev_split(cfg) if evaluates else None
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    model = load_model(cfg.model, device=device, max_seq_length=cfg.max_seq_length,
                       trust_remote_code=cfg.trust_remote_code)
    card = model.model_card_data  # filled by sentence-transformers from the loss's config and citation
    card.add_tags(["dpo-retrieval", f"loss-{cfg.loss}"])
    card.model_name = f"{Path(str(cfg.model or 'all-MiniLM-L6-v2')).name} fine-tuned with dpo-retrieval ({cfg.loss})"
    reference = None
    ref_stats = None
    ref_similarity = None
    if dpo.needs_reference(cfg.loss):
        ref_model = (load_model(dpo.reference_model, device=device, max_seq_length=cfg.max_seq_length,
                                trust_remote_code=cfg.trust_remote_code)
                     if dpo.reference_model else None)
        ref_similarity = model_similarity(ref_model or model)
        if dpo.reference == "precomputed":
            # sdpo scores the reference in-batch: it needs each row's embeddings, the others its own scores
            add_reference = add_reference_embeddings if cfg.loss == "sdpo" else add_reference_scores
            dataset, ref_stats = add_reference(dataset, ref_model or model, precision=precision,
                                               show_progress_bar=not args.disable_tqdm, cache_dir=reference_cache)
            if eval_dataset is not None:
                eval_dataset, _ = add_reference(eval_dataset, ref_model or model, precision=precision,
                                                show_progress_bar=not args.disable_tqdm, cache_dir=reference_cache)
            del ref_model
        else:
            if ref_model is not None and ref_model.tokenizer.get_vocab() != model.tokenizer.get_vocab():
                raise UserInputError("reference: online needs a reference model with the policy's tokenizer; "
                                     "use precomputed")
            reference = OnlineReference(ref_model) if ref_model is not None else OnlineReference.frozen_copy(model)
    else:
        dataset, eval_dataset = (d.remove_columns("label") if d is not None and "label" in d.column_names else d
                                 for d in (dataset, eval_dataset))
    query_col, *doc_cols = [c for c in dataset.column_names if c != "label"]
    negatives = len(doc_cols) - 1
    if eval_dataset is not None:  # held-out triplets may have more negatives: prompts and towers for them too
        doc_cols += [c for c in eval_dataset.column_names if c not in doc_cols and c not in (query_col, "label")]
    prompts = training_prompts(model, query_col, doc_cols)
    if dpo.separate_towers and not has_two_towers(model):
        shared = model
        model = make_two_towers(model)
        model.prompts, model.default_prompt_name = dict(shared.prompts), shared.default_prompt_name
        del shared
    if dpo.dropout == "off":
        logger.info("dropout off in %d modules", disable_dropout(model))

    loss = build_loss(cfg.loss, model, dpo, reference, reference_similarity=ref_similarity)
    if prompts:
        logger.info("training with the model's prompts: %s", prompts)
    similarity = str(getattr(model.similarity_fn_name, "value", model.similarity_fn_name))
    evaluator = build_evaluator(dev_split, similarity, args.per_device_eval_batch_size) if dev_split else None
    names = eval_metric_names(similarity if evaluator else None, eval_loss=eval_dataset is not None,
                              rewards=eval_dataset is not None and cfg.loss == "dpo")
    best = best_model_settings(cfg, args, names, primary_metric(similarity) if evaluator else None)
    # checkpoints every save_steps (for --resume); per epoch or at each best where the best model needs it
    save_strategy = strategy(args.save_strategy) if strategy(args.save_strategy) in ("epoch", "best") else "steps"
    try:
        trainer_args = dataclasses.replace(
            args, **best,
            output_dir=str(checkpoints),
            save_strategy=save_strategy,
            data_seed=args.data_seed if args.data_seed is not None else args.seed,
            bf16=precision == "bf16",
            fp16=precision == "fp16",
            use_cpu=device == "cpu",
            batch_sampler=BatchSamplers.NO_DUPLICATES,  # duplicate texts would poison in-batch negatives
            router_mapping=({query_col: "query", **{c: "document" for c in doc_cols}} if has_two_towers(model) else {}),
            prompts=prompts or None,  # the texts encode_query/encode_document see (reference, mining, evaluation)
            dataloader_drop_last=False,
        )
    except ValueError as err:  # transformers' own checks of the combination (save and eval steps, ...)
        raise UserInputError(str(err).strip().splitlines()[0]) from None
    if trainer_args.world_size > 1:  # (sets up the process group) every rank has checked before any writes
        logger.info("rank %d of %d", trainer_args.process_index, trainer_args.world_size)
        barrier()
    output.mkdir(parents=True, exist_ok=True)
    grad_guard = FiniteGradientCallback(dpo.on_nonfinite)
    clock = TrainTimeCallback(resume_from)
    trainer = PreferenceTrainer(
        model=model, args=trainer_args, train_dataset=dataset, loss=loss, on_nonfinite=dpo.on_nonfinite,
        eval_dataset=eval_dataset, evaluator=evaluator,
        callbacks=[JsonlLogCallback(output / "train_log.jsonl"), grad_guard, clock, *early_stopping(cfg)],
    )
    logger.info("training %s on %d triplets (negatives per query: %d), device %s, precision %s",
                cfg.loss, len(dataset), negatives, device, precision)
    try:
        result = trainer.train(resume_from_checkpoint=resume_from)
    except NonFiniteError as err:
        raise UserInputError(f"training stopped: {err}; nothing was saved (try a lower learning_rate, "
                             "precision fp32, or on_nonfinite skip)") from err
    seconds = clock.seconds()  # the whole training's, the legs before a resume included
    if not trainer.is_world_process_zero():  # rank 0 saves; the others leave once it has
        trainer.accelerator.wait_for_everyone()
        return output
    try:
        save_model_atomically(model, output)
        summary = {
            "config": {**dataclasses.asdict(cfg), **dataclasses.asdict(dpo),
                       **{k: v for k, v in {**args.to_dict(), **best}.items() if k in TRAINING_SUMMARY}},
            "device": device,
            "precision": precision,
            "world_size": trainer_args.world_size,
            "steps": trainer.state.global_step,
            "train_seconds": round(seconds, 3),
            "train_seconds_complete": clock.complete,
            "resumed_from_step": int(Path(resume_from).name.split("-")[-1]) if resume_from else None,
            "seconds_per_step": round(seconds / max(1, trainer.state.global_step), 4),
            "train_loss": result.training_loss,
            "reference_precompute": ref_stats,
            "skipped_batches": trainer.skipped_batches + grad_guard.skipped,
            "scaler_skipped_steps": grad_guard.scaler_skipped,
            "best_metric": trainer.state.best_metric,
            "best_model_checkpoint": trainer.state.best_model_checkpoint,
        }
        write_json(summary, output / "train_summary.json", default=str)
    finally:  # the other ranks wait here, also when the save fails (rank 0 then raises)
        trainer.accelerator.wait_for_everyone()
    logger.info("trained %d steps in %.1fs (%.2fs/step)", summary["steps"], seconds, summary["seconds_per_step"])
    return output
