"""``dpo-retrieval train``: one call from a triplet file to a saved sentence-transformers model.

Built on :class:`sentence_transformers.SentenceTransformerTrainer`; what this module adds is the
glue: the reference scores, the loss choice, reward metrics in the log, a JSONL log, a guard
against non-finite losses and gradients, and an atomic final save.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformerTrainer
from transformers import TrainerCallback

from dpo_retrieval.errors import UserInputError
from dpo_retrieval.losses import DPOLoss

logger = logging.getLogger(__name__)

LOSSES = ("dpo", "contrastive", "dpr")
# Defaults that depend on the policy (see the prototype figures in the README).
POLICY_DEFAULTS = {"linear": {"beta": 1.0, "scale": 20.0}, "sigmoid": {"beta": 10.0, "scale": 10.0}}


@dataclass
class TrainConfig:
    """Settings of one training run; every field has a help string (``--help`` shows the same)."""

    triplets: str = field(metadata={"help": "triplet file or saved HF dataset directory"})
    output: str = field(metadata={"help": "directory for the model, train_log.jsonl and checkpoints"})
    corpus: str | None = field(default=None, metadata={"help": "BEIR corpus.jsonl for id triplets"})
    queries: str | None = field(default=None, metadata={"help": "BEIR queries.jsonl for id triplets"})
    model: str | None = field(default=None, metadata={"help": "starting model (default: packaged all-MiniLM-L6-v2)"})
    loss: str = field(default="dpo", metadata={"help": "dpo, contrastive (MNRL, cosine, scale 20) or dpr (MNRL, dot, scale 1)"})
    beta: float | None = field(default=None, metadata={"help": "DPO beta (default by policy: linear 1, sigmoid 10)"})
    scale: float | None = field(default=None, metadata={"help": "DPO policy scale a (default by policy: linear 20, sigmoid 10)"})
    policy: str = field(default="linear", metadata={"help": "DPO policy: linear (a*s) or sigmoid (log sigma(a*s))"})
    loss_type: str = field(default="sigmoid", metadata={"help": "DPO objective: sigmoid or ipo"})
    label_smoothing: float = field(default=0.0, metadata={"help": "cDPO epsilon in [0, 0.5)"})
    reference_free: bool = field(default=False, metadata={"help": "drop the reference from the DPO loss"})
    reference: str = field(default="precomputed", metadata={"help": "precomputed or online reference scores"})
    reference_model: str | None = field(default=None, metadata={"help": "reference encoder (default: the starting model)"})
    separate_towers: bool = field(default=False, metadata={"help": "separate query and passage encoders"})
    dropout: str = field(default="on", metadata={"help": "on (the model's own dropout) or off (p = 0, as TRL's "
                                                 "DPO trainer does by default)"})
    epochs: float = field(default=1.0, metadata={"help": "training epochs"})
    max_steps: int = field(default=-1, metadata={"help": "stop after this many optimizer steps (-1: off)"})
    batch_size: int = field(default=32, metadata={"help": "triplets per batch"})
    lr: float = field(default=2e-5, metadata={"help": "peak learning rate"})
    warmup: float = field(default=0.1, metadata={"help": "warm-up ratio if < 1, else steps"})
    max_seq_length: int = field(default=256, metadata={"help": "tokens per text"})
    logging_steps: int = field(default=10, metadata={"help": "log every N steps"})
    seed: int = field(default=42, metadata={"help": "random seed (model init, shuffling, dropout)"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, mps or auto"})
    precision: str = field(default="auto", metadata={"help": "auto, fp32, bf16 or fp16"})
    gradient_accumulation: int = field(default=1, metadata={"help": "batches per optimizer step"})
    save_steps: int = field(default=500, metadata={"help": "checkpoint every N steps"})
    resume: bool = field(default=False, metadata={"help": "resume from the newest checkpoint in output"})
    on_nonfinite: str = field(default="stop", metadata={"help": "stop or skip on a NaN/inf loss or gradient"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code from the model directory"})
    show_progress_bar: bool = field(default=True, metadata={"help": "show progress bars"})

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names})

    def resolved(self) -> "TrainConfig":
        """Fill the policy-dependent defaults and check the choices (raises UserInputError)."""
        checks = [
            (self.loss in LOSSES, f"--loss: unknown loss {self.loss!r}; choose dpo, contrastive or dpr"),
            (self.policy in POLICY_DEFAULTS, f"--policy: unknown policy {self.policy!r}; choose linear or sigmoid"),
            (self.loss_type in ("sigmoid", "ipo"), f"--loss-type: unknown {self.loss_type!r}; choose sigmoid or ipo"),
            (self.reference in ("precomputed", "online"), "--reference: choose precomputed or online"),
            (self.on_nonfinite in ("stop", "skip"), "--on-nonfinite: choose stop or skip"),
            (self.dropout in ("on", "off"), f"--dropout: choose on or off, got {self.dropout!r}"),
            (self.batch_size > 0, f"--batch-size: must be > 0, got {self.batch_size}"),
            (self.epochs > 0, f"--epochs: must be > 0, got {self.epochs}"),
            (self.lr > 0, f"--lr: must be > 0, got {self.lr}"),
            (self.warmup >= 0, f"--warmup: must be >= 0, got {self.warmup}"),
            (self.max_seq_length > 0, f"--max-seq-length: must be > 0, got {self.max_seq_length}"),
            (self.gradient_accumulation > 0, "--gradient-accumulation: must be > 0"),
            (self.beta is None or (self.beta > 0 and math.isfinite(self.beta)), f"--beta: must be > 0, got {self.beta}"),
            (self.scale is None or (self.scale > 0 and math.isfinite(self.scale)), f"--scale: must be > 0, got {self.scale}"),
            (0.0 <= self.label_smoothing < 0.5, f"--label-smoothing: must be in [0, 0.5), got {self.label_smoothing}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserInputError(message)
        defaults = POLICY_DEFAULTS[self.policy]
        return dataclasses.replace(
            self,
            beta=self.beta if self.beta is not None else defaults["beta"],
            scale=self.scale if self.scale is not None else defaults["scale"],
        )


def disable_dropout(model: torch.nn.Module) -> int:
    """Set every dropout probability in ``model`` to 0 and return how many modules changed.

    DPO compares the policy's score with the reference's; with dropout on, the policy's scores carry
    noise the reference (scored in eval mode) does not, so the implicit reward is noisy even at step
    0, which is why TRL's DPO trainer turns dropout off by default (``disable_dropout=True``). Here
    it stays on by default: on SciFact's dev split, the quick preset's DPO lost nDCG@10 with it off
    (README, "Dropout"). The saved model's config is untouched, so loading it restores its dropout.
    """
    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout) and module.p != 0:
            module.p = 0.0
            changed += 1
    return changed


class NonFiniteError(RuntimeError):
    """A NaN or infinite loss or gradient under ``on_nonfinite="stop"``."""


class PreferenceTrainer(SentenceTransformerTrainer):
    """SentenceTransformerTrainer that logs the loss's reward metrics and guards against NaN/inf losses.

    Any loss with a ``pop_metrics()`` method (such as :class:`~dpo_retrieval.losses.DPOLoss`) gets
    its metrics (``rewards/chosen``, ``rewards/margins``, ...) merged into each training log, as TRL does.
    """

    def __init__(self, *args, on_nonfinite: str = "stop", **kwargs):
        super().__init__(*args, **kwargs)
        self.on_nonfinite = on_nonfinite
        self.skipped_batches = 0
        for cb in self.callback_handler.callbacks:
            if isinstance(cb, FiniteGradientCallback):
                cb.trainer = self  # it reads the accelerator's gradient scaler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                   num_items_in_batch=num_items_in_batch)
        loss = out[0] if return_outputs else out
        if model.training and not torch.isfinite(loss.detach()).all():
            step = self.state.global_step + 1
            if self.on_nonfinite == "stop":
                raise NonFiniteError(f"non-finite loss ({loss.item()}) at step {step}")
            self.skipped_batches += 1
            logger.warning("step %d: non-finite loss, batch skipped (%d so far)", step, self.skipped_batches)
            # A zero loss with no path to the weights: this batch adds no gradient.
            loss = torch.zeros((), device=loss.device, requires_grad=True)
            out = (loss, out[1]) if return_outputs else loss
        return out

    def log(self, logs, *args, **kwargs):
        pop = getattr(self.loss, "pop_metrics", None)
        if pop is not None and "loss" in logs:
            logs.update(pop())
        guards = [cb for cb in self.callback_handler.callbacks if isinstance(cb, FiniteGradientCallback)]
        skipped = self.skipped_batches + sum(cb.skipped for cb in guards)
        if skipped:  # non-finite losses and non-finite gradients alike
            logs["skipped_batches"] = skipped
        scaler_skipped = sum(cb.scaler_skipped for cb in guards)
        if scaler_skipped:  # fp16 overflows the loss scaler skipped (its business, not the guard's)
            logs["scaler_skipped_steps"] = scaler_skipped
        super().log(logs, *args, **kwargs)


class JsonlLogCallback(TrainerCallback):
    """Appends every training log (loss, rewards/*, learning rate, ...) to ``train_log.jsonl``.

    Also makes sure the final step is logged, whatever ``logging_steps`` is.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_step_end(self, args, state, control, **kwargs):
        if state.max_steps and state.global_step >= state.max_steps:
            control.should_log = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            record = {"step": state.global_step, **{k: _plain(v) for k, v in logs.items()}}
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


class FiniteGradientCallback(TrainerCallback):
    """Stops (or skips the update) when a gradient is NaN/inf, before the optimizer applies it.

    Under fp16 mixed precision a gradient scaler (``GradScaler``) is active, and an overflow is its
    routine: its initial scale (65536) is meant to overflow, the scaler then skips the step and lowers
    the scale. There the guard stands aside: it never stops and never zeroes the gradients (that would
    hide the overflow from the scaler); it only counts the steps the scaler skipped (``scaler_skipped``),
    apart from the batches it skipped itself (``skipped``). fp32 and bf16 have no scaler.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.skipped = 0
        self.scaler_skipped = 0
        self.trainer = None  # set by PreferenceTrainer; its accelerator holds the scaler
        self._scale_before: float | None = None

    def _scaler(self):
        return getattr(getattr(self.trainer, "accelerator", None), "scaler", None)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        scaler = self._scaler()
        if scaler is not None:  # the scaler checks the gradients and skips the step itself
            self._scale_before = scaler.get_scale()
            return control
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if grads and not torch.stack([torch.isfinite(g).all() for g in grads]).all().item():  # one device sync
            step = state.global_step + 1
            if self.mode == "stop":
                raise NonFiniteError(f"non-finite gradient at step {step}")
            self.skipped += 1
            logger.warning("step %d: non-finite gradient, update skipped", step)
            for p in model.parameters():
                p.grad = None
        return control

    def on_optimizer_step(self, args, state, control, **kwargs):
        # The scaler lowers its scale exactly when it found inf/NaN and skipped the update. (accelerate's
        # ``optimizer_step_was_skipped`` misses that with fused optimizers such as transformers' default
        # adamw_torch_fused, which receive the step call and skip inside it.)
        scaler, before = self._scaler(), self._scale_before
        self._scale_before = None
        if scaler is not None and before is not None and scaler.get_scale() < before:
            self.scaler_skipped += 1
            logger.info("step %d: fp16 gradient overflow; the loss scaler skipped the update and lowered its "
                        "scale to %g (%d such steps so far)", state.global_step + 1, scaler.get_scale(),
                        self.scaler_skipped)
        return control


def _plain(value):
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


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


def build_loss(cfg: TrainConfig, model, reference=None):
    """The loss object for ``cfg.loss`` (DPO here; the baselines are sentence-transformers' own)."""
    if cfg.loss == "dpo":
        return DPOLoss(model, beta=cfg.beta, scale=cfg.scale, policy=cfg.policy, loss_type=cfg.loss_type,
                       label_smoothing=cfg.label_smoothing, reference_free=cfg.reference_free, reference=reference)
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.util import cos_sim, dot_score

    if cfg.loss == "contrastive":
        return MultipleNegativesRankingLoss(model, scale=20.0, similarity_fct=cos_sim)
    if cfg.loss == "dpr":  # Karpukhin et al. 2020: dot product, no temperature
        return MultipleNegativesRankingLoss(model, scale=1.0, similarity_fct=dot_score)
    raise ValueError(f"Unknown loss {cfg.loss!r}; choose one of {', '.join(LOSSES)}")


def _latest_checkpoint(checkpoints: Path) -> str | None:
    """The newest complete checkpoint. The trainer writes ``trainer_state.json`` last, so a
    checkpoint without it was cut short (a kill mid-save) and is skipped."""
    found = [p for p in checkpoints.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    complete = [p for p in found if (p / "trainer_state.json").is_file()]
    for p in sorted(set(found) - set(complete)):
        logger.warning("%s is incomplete (no trainer_state.json, an interrupted save?); not resuming from it", p)
    return str(max(complete, key=lambda p: int(p.name.split("-")[-1]))) if complete else None


def _truncate_log(log_path: Path, step: int) -> None:
    """Drop log records after ``step`` (and a line cut short by a kill) before a resumed run appends."""
    if not log_path.exists():
        return
    keep = []
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            keep.append(line + "\n")
    tmp = log_path.with_name(log_path.name + ".tmp")
    tmp.write_text("".join(keep), encoding="utf-8")
    os.replace(tmp, log_path)


def save_model_atomically(model, output: Path, *, model_card: bool = True) -> None:
    """Write the model into ``output`` so that an interrupted save never leaves a loadable half-model.

    The model is saved to a temporary folder first (removed if that fails). An earlier model's
    ``modules.json`` and ``config.json`` (the files ``SentenceTransformer(path)`` starts from) are
    removed, the new files move in, and those two come last, so that a save cut short never loads
    (not even as a plain transformer with default pooling).
    """
    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            raise NonFiniteError(f"weights contain NaN/inf ({name}); the model was not saved")
    tmp = output / ".saving"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save(str(tmp), create_model_card=model_card)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    last = ("modules.json", "config.json")
    for name in last:  # old and new files mixed must not load
        (output / name).unlink(missing_ok=True)
    entries = sorted(tmp.iterdir(), key=lambda p: last.index(p.name) + 1 if p.name in last else 0)
    for entry in entries:
        dest = output / entry.name
        if dest.is_dir() and entry.is_dir():
            shutil.rmtree(dest)
        os.replace(entry, dest)
    tmp.rmdir()


def train(cfg: TrainConfig) -> Path:
    """Train one model as ``cfg`` says and return its directory. Bad input fails before anything is written."""
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers

    from dpo_retrieval.data import load_triplets
    from dpo_retrieval.models import has_two_towers, load_model, make_two_towers, resolve_device, resolve_precision
    from dpo_retrieval.reference import OnlineReference, add_reference_scores

    cfg = cfg.resolved()
    output = Path(cfg.output)
    checkpoints = output / "checkpoints"
    resume_from = _latest_checkpoint(checkpoints) if cfg.resume else None
    if output.exists() and not output.is_dir():
        raise UserInputError(f"--output: {output} exists and is not a directory")
    if output.exists() and any(output.iterdir()) and not cfg.resume:
        raise UserInputError(f"--output: {output} already exists and is not empty; pass --resume to continue "
                             "its training or choose a new directory")
    if cfg.resume and resume_from is None and (output / "modules.json").exists():
        raise UserInputError(f"--resume: {output} holds a finished model and no checkpoint to resume")

    # Everything that can fail on bad input happens before the output directory exists.
    dataset = load_triplets(cfg.triplets, corpus=cfg.corpus, queries=cfg.queries)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    model = load_model(cfg.model, device=device, max_seq_length=cfg.max_seq_length,
                       trust_remote_code=cfg.trust_remote_code)
    card = model.model_card_data  # filled by sentence-transformers from the loss's config and citation
    card.add_tags(["dpo-retrieval", f"loss-{cfg.loss}"])
    card.model_name = f"{Path(str(cfg.model or 'all-MiniLM-L6-v2')).name} fine-tuned with dpo-retrieval ({cfg.loss})"
    reference = None
    ref_stats = None
    if cfg.loss == "dpo" and not cfg.reference_free:
        ref_model = (load_model(cfg.reference_model, device=device, max_seq_length=cfg.max_seq_length,
                                trust_remote_code=cfg.trust_remote_code)
                     if cfg.reference_model else None)
        if cfg.reference == "precomputed":
            dataset, ref_stats = add_reference_scores(dataset, ref_model or model, precision=precision,
                                                      show_progress_bar=cfg.show_progress_bar)
            del ref_model
        else:
            if ref_model is not None and ref_model.tokenizer.get_vocab() != model.tokenizer.get_vocab():
                raise UserInputError("--reference online: the reference model must share the policy's tokenizer; "
                                     "use --reference precomputed")
            reference = OnlineReference(ref_model) if ref_model is not None else OnlineReference.frozen_copy(model)
    elif "label" in dataset.column_names:
        dataset = dataset.remove_columns("label")
    query_col, *doc_cols = [c for c in dataset.column_names if c != "label"]
    prompts = training_prompts(model, query_col, doc_cols)
    if cfg.separate_towers and not has_two_towers(model):
        shared = model
        model = make_two_towers(model)
        model.prompts, model.default_prompt_name = dict(shared.prompts), shared.default_prompt_name
        del shared
    if cfg.dropout == "off":
        logger.info("dropout off in %d modules", disable_dropout(model))

    loss = build_loss(cfg, model, reference)
    if prompts:
        logger.info("training with the model's prompts: %s", prompts)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation,
        learning_rate=cfg.lr,
        warmup_steps=cfg.warmup,  # transformers 5: a float < 1 is a ratio of the total steps
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        batch_sampler=BatchSamplers.NO_DUPLICATES,  # duplicate texts would poison in-batch negatives
        router_mapping=({query_col: "query", **{c: "document" for c in doc_cols}} if has_two_towers(model) else {}),
        prompts=prompts or None,  # the texts encode_query/encode_document see (reference, mining, evaluation)
        report_to="none",
        disable_tqdm=not cfg.show_progress_bar,
        dataloader_drop_last=False,
    )
    output.mkdir(parents=True, exist_ok=True)
    log_path = output / "train_log.jsonl"
    if not cfg.resume and log_path.exists():
        log_path.unlink()
    if resume_from is not None:  # the steps after the checkpoint run again: log them once
        _truncate_log(log_path, int(Path(resume_from).name.split("-")[-1]))
    grad_guard = FiniteGradientCallback(cfg.on_nonfinite)
    trainer = PreferenceTrainer(
        model=model, args=args, train_dataset=dataset, loss=loss, on_nonfinite=cfg.on_nonfinite,
        callbacks=[JsonlLogCallback(log_path), grad_guard],
    )
    logger.info("training %s on %d triplets (negatives per query: %d), device %s, precision %s",
                cfg.loss, len(dataset), len(doc_cols) - 1, device, precision)
    start = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=resume_from)
    except NonFiniteError as err:
        raise UserInputError(f"training stopped: {err}; nothing was saved (try a lower --lr, "
                             "--precision fp32, or --on-nonfinite skip)") from err
    seconds = time.perf_counter() - start
    save_model_atomically(model, output)
    summary = {
        "config": dataclasses.asdict(cfg),
        "device": device,
        "precision": precision,
        "steps": trainer.state.global_step,
        "train_seconds": round(seconds, 3),
        "seconds_per_step": round(seconds / max(1, trainer.state.global_step), 4),
        "train_loss": result.training_loss,
        "reference_precompute": ref_stats,
        "skipped_batches": trainer.skipped_batches + grad_guard.skipped,
        "scaler_skipped_steps": grad_guard.scaler_skipped,
    }
    tmp = output / "train_summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    os.replace(tmp, output / "train_summary.json")
    logger.info("trained %d steps in %.1fs (%.2fs/step)", summary["steps"], seconds, summary["seconds_per_step"])
    return output
