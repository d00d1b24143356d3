"""The trainer: sentence-transformers' trainer plus reward metrics in the log (``rewards/*`` in training
lines, ``eval_rewards/*`` in evaluation lines), train_log.jsonl (the trainer's ``state.log_history``), and
a guard against non-finite losses and gradients."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformerTrainer
from transformers import TrainerCallback

from dpo_retrieval._io import write_json, write_text

logger = logging.getLogger(__name__)


def disable_dropout(model: torch.nn.Module) -> int:
    """Set every dropout probability in ``model`` to 0 and return how many modules changed.

    DPO compares the policy's score with the reference's; with dropout on, the policy's scores carry
    noise the reference (scored in eval mode) does not, so the implicit reward is noisy even at step
    0, which is why TRL's DPO trainer turns dropout off by default (``disable_dropout=True``). Here
    it stays on by default (as sentence-transformers trains) until the dev-split ablation decides.
    The saved model's config is untouched, so loading it restores its dropout.
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
    its metrics (``rewards/chosen``, ``rewards/margins``, ...) merged into each training log, as TRL does;
    the batches an evaluation scores (``eval_triplets``) are averaged apart and logged as
    ``eval_rewards/*`` with the other evaluation metrics, never in a training line.
    """

    def __init__(self, *args, on_nonfinite: str = "stop", **kwargs):
        super().__init__(*args, **kwargs)
        self.on_nonfinite = on_nonfinite
        self.skipped_batches = 0
        self._loss_metrics = {True: _Means(), False: _Means()}  # model.training -> the batches' metrics
        for cb in self.callback_handler.callbacks:
            if isinstance(cb, FiniteGradientCallback):
                cb.trainer = self  # it reads the accelerator's gradient scaler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                   num_items_in_batch=num_items_in_batch)
        loss = out[0] if return_outputs else out
        pop = getattr(self.loss, "pop_metrics", None)
        if pop is not None:  # each batch's metrics, to the training or the evaluation side
            self._loss_metrics[model.training].add(pop())
        # Under DDP a skipped batch on one rank would leave the others waiting for its gradients: there a
        # non-finite loss reaches the all-reduced gradients, which FiniteGradientCallback checks on every rank.
        if model.training and self.args.world_size == 1 and not torch.isfinite(loss.detach()).all():
            step = self.state.global_step + 1
            if self.on_nonfinite == "stop":
                raise NonFiniteError(f"non-finite loss ({loss.item()}) at step {step}")
            self.skipped_batches += 1
            logger.warning("step %d: non-finite loss, batch skipped (%d so far)", step, self.skipped_batches)
            # A zero loss with no path to the weights: this batch adds no gradient.
            loss = torch.zeros((), device=loss.device, requires_grad=True)
            out = (loss, out[1]) if return_outputs else loss
        return out

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        self._loss_metrics[False].take()  # nothing left from an evaluation that failed midway
        output = super().evaluation_loop(dataloader, description, prediction_loss_only=prediction_loss_only,
                                         ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        metrics = _mean_across_ranks(self._loss_metrics[False].take(), self.args.world_size)
        output.metrics.update({f"{metric_key_prefix}_{k}": v for k, v in metrics.items()})
        return output

    def log(self, logs, *args, **kwargs):
        if "loss" in logs:  # a training line
            logs.update(_mean_across_ranks(self._loss_metrics[True].take(), self.args.world_size))
        guards = [cb for cb in self.callback_handler.callbacks if isinstance(cb, FiniteGradientCallback)]
        skipped = self.skipped_batches + sum(cb.skipped for cb in guards)
        if skipped:  # non-finite losses and non-finite gradients alike
            logs["skipped_batches"] = skipped
        scaler_skipped = sum(cb.scaler_skipped for cb in guards)
        if scaler_skipped:  # fp16 overflows the loss scaler skipped (its business, not the guard's)
            logs["scaler_skipped_steps"] = scaler_skipped
        super().log(logs, *args, **kwargs)


def _mean_across_ranks(metrics: dict[str, float], world: int) -> dict[str, float]:
    """Under DDP, each metric averaged over the ranks that have it (every rank calls this: a collective)."""
    if world <= 1:
        return metrics
    from dpo_retrieval.training.distributed import gather_objects

    ranks = gather_objects(metrics)
    keys = dict.fromkeys(k for m in ranks for k in m)
    return {k: sum(m[k] for m in ranks if k in m) / sum(k in m for m in ranks) for k in keys}


class _Means:
    """Per-batch metric dicts, averaged when taken (then reset)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, metrics: dict[str, float]) -> None:
        if metrics:
            for key, value in metrics.items():
                self.sums[key] = self.sums.get(key, 0.0) + value
            self.count += 1

    def take(self) -> dict[str, float]:
        out = {k: v / self.count for k, v in self.sums.items()} if self.count else {}
        self.sums, self.count = {}, 0
        return out


class JsonlLogCallback(TrainerCallback):
    """``train_log.jsonl``: the trainer's ``state.log_history``, one JSON object per entry (training
    lines with loss, rewards/*, learning rate, ...; evaluation lines with eval_*; the final summary).

    The file is rewritten whole and atomically when training begins (a resumed run starts from its
    checkpoint's history, so the steps after it appear once) and when it ends; in between each new
    entry is appended. Also makes sure the final step is logged, whatever ``logging_steps`` is. Under DDP
    rank 0 alone writes (every rank keeps the same history).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.written = 0

    def _rewrite(self, state) -> None:
        if not state.is_world_process_zero:
            return
        write_text(self.path, "".join(_line(entry) for entry in state.log_history))
        self.written = len(state.log_history)

    def on_train_begin(self, args, state, control, **kwargs):
        self._rewrite(state)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if state.max_steps and state.global_step >= state.max_steps:
            control.should_log = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        new = state.log_history[self.written:]
        if new and state.is_world_process_zero:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("".join(_line(entry) for entry in new))
            self.written = len(state.log_history)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self._rewrite(state)
        return control


class TrainTimeCallback(TrainerCallback):
    """Training seconds across interruptions: each checkpoint keeps the seconds trained up to it
    (``train_time.json``), and a run resumed from it counts on from there, so ``train_seconds`` is the
    whole training's, not the last leg's. Resumed from a checkpoint without the file (an older one, or a kill
    between the save and this callback), the summary says ``train_seconds_complete: false``."""

    FILE = "train_time.json"

    def __init__(self, resume_from: str | None = None) -> None:
        before = self.read(resume_from) if resume_from else 0.0
        #: False when resumed from a checkpoint without the file: the seconds before it are then unknown
        self.complete = before is not None
        if not self.complete:
            logger.warning("%s has no %s: train_seconds counts only the training from it on", resume_from, self.FILE)
        self.before = before or 0.0
        self.start = time.perf_counter()

    @classmethod
    def read(cls, checkpoint: str | Path) -> float | None:
        try:
            return float(json.loads((Path(checkpoint) / cls.FILE).read_text())["train_seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.start

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()
        return control

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"  # transformers' PREFIX_CHECKPOINT_DIR
        if state.is_world_process_zero and folder.is_dir():
            if self.complete:  # an unknown start stays unknown in every later checkpoint
                write_json({"train_seconds": round(self.seconds(), 3), "step": state.global_step},
                           folder / self.FILE)
        return control


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


def _line(entry: dict) -> str:
    record = {"step": entry.get("step"), **{k: _plain(v) for k, v in entry.items()}}
    return json.dumps(record) + "\n"


def _plain(value):
    if isinstance(value, torch.Tensor) or type(value).__module__ == "numpy":
        value = value.item() if getattr(value, "ndim", 0) == 0 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
