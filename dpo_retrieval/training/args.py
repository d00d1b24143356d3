"""The settings of one training run, each option declared once (a dataclass field with its help):

* :class:`TrainArgs`: what to train (triplets, starting model, loss) and where it runs;
* :class:`DPOArgs`: the DPO loss and its variants (dpo+mnrl, sdpo, hinge), cmnrl's mini-batch, the
  reference and the policy's dropout;
* sentence-transformers' own :class:`~sentence_transformers.SentenceTransformerTrainingArguments` for
  the optimiser, schedule, logging, checkpoints and the hub; :func:`training_arguments` builds one
  with this package's defaults (:data:`TRAINING_DEFAULTS`).

``dpo-retrieval train`` is generated from the three with ``transformers.HfArgumentParser`` (a YAML or
JSON config file works too). Checks raise :class:`~dpo_retrieval.errors.UserInputError` naming the
field (``beta: must be a finite number > 0, got -1.0``); the CLI shows the flag instead.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Literal

from dpo_retrieval.errors import positive, require
from dpo_retrieval.losses import policy_defaults
from dpo_retrieval.training.defaults import BUDGET, LOSS_OPTIONS, OPTION_FALLBACK, describe, loss_default
from dpo_retrieval.retrieval.args import BaseModelArgs

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformerTrainingArguments

LOSSES = ("dpo", "contrastive", "dpr", "cmnrl", "dpo+mnrl", "sdpo")
#: the losses that need the frozen reference (unless reference_free, or sdpo with sdpo_gamma 0)
REFERENCE_LOSSES = ("dpo", "dpo+mnrl", "sdpo")

#: this package's defaults for sentence-transformers' training arguments (the CLI's too)
TRAINING_DEFAULTS = {
    "num_train_epochs": 1.0, "per_device_train_batch_size": 32, "learning_rate": 2e-5,
    "warmup_steps": 0.1,  # transformers 5: a float < 1 is a ratio of the total steps
    "logging_steps": 10, "save_steps": 500, "save_total_limit": 2, "seed": 42, "report_to": "none",
}
#: the checkpoint interval of the drivers' trainings (compare, sweep): a training interrupted by a session's end
#: resumes from its last checkpoint, losing at most this many steps; not part of any stage key (it changes no weight)
CHECKPOINT_STEPS = 10


@dataclass
class TrainArgs(BaseModelArgs):
    """What to train and where (model, device, precision and trust_remote_code come from
    :class:`~dpo_retrieval.retrieval.args.BaseModelArgs`, shared with the encoding commands); the rest is
    :class:`DPOArgs` and the training arguments."""

    triplets: str = field(metadata={"help": "triplet file: .jsonl/.json (query/positive/negative or negatives:[...]; "
                                            "FlagEmbedding query/pos/neg; Tevatron positive_passages/negative_passages; "
                                            "sentence-transformers anchor/positive/negative_1..k or query/answer/"
                                            "negative*), .tsv/.csv, .parquet, a saved HF datasets directory, or a "
                                            "dataset name (org/name, hf://org/name[:config]); id triplets need "
                                            "--corpus/--queries"})
    corpus: str | None = field(default=None, metadata={"help": "BEIR corpus.jsonl to resolve id triplets"})
    queries: str | None = field(default=None, metadata={"help": "BEIR queries.jsonl to resolve id triplets"})
    loss: Literal["dpo", "contrastive", "dpr", "cmnrl", "dpo+mnrl", "sdpo"] = field(default="contrastive", metadata={
        "help": "default contrastive, the study's winner once its ablation gave it dpo+mnrl's settings (README, "
                "Results); dpo: the DPO loss against a frozen reference; contrastive: MultipleNegativesRankingLoss (cosine, "
                "scale --mnrl-scale, default 20, in-batch + hard negatives); dpr: the same with dot product and "
                "scale 1; cmnrl: the contrastive loss with GradCache (CachedMultipleNegativesRankingLoss) for large "
                "batches, see --mini-batch-size; dpo+mnrl: mnrl_weight*contrastive + (1-mnrl_weight)*dpo; sdpo: "
                "softmax DPO over "
                "the batch, -log softmax_j(beta*scale*(s_j - sdpo_gamma*s_ref_j))[positive]"})
    max_seq_length: int = field(default=256, metadata={"help": "tokens per text"})
    negatives: int | None = field(default=None, metadata={
        "help": "use only the first N hard negatives of each triplet row (default by loss, the study's, at most "
                "the file's: " + describe("negatives") + "; other losses: all)"})
    resume: bool = field(default=False, metadata={"help": "continue from the newest checkpoint in the output directory"})
    eval_data: str | None = field(default=None, metadata={
        "help": "BEIR dataset (name or directory) whose dev queries are scored against its corpus during training "
                "(with --eval_strategy steps/epoch) by sentence-transformers' InformationRetrievalEvaluator; "
                "logged as eval_dev_<similarity>_ndcg@10, ... in train_log.jsonl"})
    eval_qrels: str | None = field(default=None, metadata={
        "help": "qrels TSV of the dev queries, e.g. the dev_qrels.tsv of dpo-retrieval mine (default: eval_data's "
                "qrels/dev.tsv; without eval_data its ids refer to --corpus/--queries)"})
    eval_triplets: str | None = field(default=None, metadata={
        "help": "held-out triplet file (any --triplets format): the eval loss (eval_loss) and, for dpo, "
                "eval_rewards/*"})
    early_stopping_patience: int | None = field(default=None, metadata={
        "help": "stop after this many evaluations without an improvement of metric_for_best_model (transformers' "
                "EarlyStoppingCallback; default metric: the evaluator's nDCG@10, else eval_loss)"})
    early_stopping_threshold: float = field(default=0.0, metadata={
        "help": "the least change of metric_for_best_model that counts as an improvement for early stopping"})

    def check(self) -> "TrainArgs":
        require([
            (self.loss in LOSSES, f"loss: unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}"),
            (self.max_seq_length > 0, f"max_seq_length: must be > 0, got {self.max_seq_length}"),
            (self.negatives is None or (isinstance(self.negatives, int) and not isinstance(self.negatives, bool)
                                        and self.negatives > 0),
             f"negatives: must be an integer > 0, got {self.negatives}"),
            (self.early_stopping_patience is None or self.early_stopping_patience > 0,
             f"early_stopping_patience: must be > 0, got {self.early_stopping_patience}"),
            (self.early_stopping_threshold >= 0 and math.isfinite(self.early_stopping_threshold),
             f"early_stopping_threshold: must be a finite number >= 0, got {self.early_stopping_threshold}"),
        ])
        return self


@dataclass
class DPOArgs:
    """The DPO loss's options (read by dpo, dpo+mnrl and sdpo; dropout and on_nonfinite by every loss),
    and the other losses' own (mnrl_weight, mnrl_scale, sdpo_gamma, mini_batch_size)."""

    beta: float | None = field(default=None, metadata={
        "help": "DPO beta: strength of the pull toward the reference (default by policy: linear 10, the study's, sigmoid 10)"})
    scale: float | None = field(default=None, metadata={
        "help": "DPO policy scale a in log pi(p|q) = log sigma(a * s(q,p)) (default by policy: linear 20, sigmoid 10)"})
    policy: Literal["linear", "sigmoid"] = field(default="linear", metadata={
        "help": "DPO policy: linear = scale*s (log of a softmax over candidates), sigmoid = log sigma(scale*s)"})
    loss_type: Literal["sigmoid", "ipo", "hinge"] = field(default="sigmoid", metadata={
        "help": "DPO objective on h, the log-ratio difference: sigmoid -log sigma(beta*h) (Rafailov et al. 2023), "
                "ipo (h - 1/(2 beta))^2 (Azar et al. 2023) or hinge max(0, hinge_margin - beta*h) (SLiC/RSO)"})
    hinge_margin: float = field(default=1.0, metadata={
        "help": "margin m of loss_type hinge: pairs with beta*h >= m add no loss (bounded movement from the reference)"})
    label_smoothing: float = field(default=0.0, metadata={"help": "cDPO label smoothing epsilon in [0, 0.5)"})
    reference_free: bool = field(default=False, metadata={"help": "drop the reference from the DPO loss"})
    reference: Literal["precomputed", "online"] = field(default="precomputed", metadata={
        "help": "precomputed: score every triplet with the frozen reference once before training, then free it; "
                "online: keep a frozen copy and score each batch"})
    reference_model: str | None = field(default=None, metadata={
        "help": "model that supplies reference scores (default: the starting model)"})
    separate_towers: bool = field(default=False, metadata={
        "help": "train separate query and passage encoders (saved as one sentence-transformers model)"})
    dropout: Literal["on", "off"] = field(default="on", metadata={
        "help": "dropout in the trained encoder: on = the model's own; off = p 0, so the DPO policy starts exactly "
                "at the reference (TRL's DPO default)"})
    mnrl_weight: float | None = field(default=None, metadata={
        "help": "dpo+mnrl: weight lambda in [0, 1] of the contrastive term (cosine, scale mnrl_scale) in "
                "lambda*MNRL + (1-lambda)*DPO; 1 is the contrastive loss, 0 is dpo (default: 0.75, the study's)"})
    mnrl_scale: float | None = field(default=None, metadata={
        "help": "the scale (inverse temperature) of the MNRL softmax over cosine scores for losses contrastive, "
                "cmnrl and the MNRL term of dpo+mnrl (dpr stays dot product at scale 1); a finite number > 0 "
                "(default by loss, the study's: " + describe("mnrl_scale") + ")"})
    sdpo_gamma: float = field(default=1.0, metadata={
        "help": "sdpo: share gamma in [0, 1] of the reference's scores subtracted, "
                "-log softmax_j(beta*scale*(s_j - gamma*s_ref_j)); 0 is the contrastive loss at scale beta*scale "
                "(no reference), 1 listwise DPO against the reference"})
    mini_batch_size: int = field(default=32, metadata={
        "help": "cmnrl: texts embedded at a time (the memory of a batch this size; the loss sees the whole "
                "per-device batch)"})
    on_nonfinite: Literal["stop", "skip"] = field(default="stop", metadata={
        "help": "when a loss or gradient is NaN/inf: stop with a message naming the step, or skip the batch"})

    def resolved(self, loss: str | None = None) -> "DPOArgs":
        """Check every field and fill the policy-dependent beta and scale and ``loss``'s defaults of the loss
        options left None (:mod:`~dpo_retrieval.training.defaults`; raises UserInputError)."""
        from dpo_retrieval.losses import POLICY_DEFAULTS

        self = dataclasses.replace(self, **{k: loss_default(loss, k, OPTION_FALLBACK[k]) for k in LOSS_OPTIONS
                                            if getattr(self, k) is None})

        require([
            (self.policy in POLICY_DEFAULTS, f"policy: unknown policy {self.policy!r}; choose linear or sigmoid"),
            (self.loss_type in ("sigmoid", "ipo", "hinge"),
             f"loss_type: unknown {self.loss_type!r}; choose sigmoid, ipo or hinge"),
            (self.reference in ("precomputed", "online"), "reference: choose precomputed or online"),
            (self.on_nonfinite in ("stop", "skip"), "on_nonfinite: choose stop or skip"),
            (self.dropout in ("on", "off"), f"dropout: choose on or off, got {self.dropout!r}"),
            (positive(self.beta, optional=True), f"beta: must be a finite number > 0, got {self.beta}"),
            (positive(self.scale, optional=True), f"scale: must be a finite number > 0, got {self.scale}"),
            (0.0 <= self.label_smoothing < 0.5, f"label_smoothing: must be in [0, 0.5), got {self.label_smoothing}"),
            (positive(self.hinge_margin), f"hinge_margin: must be a finite number > 0, got {self.hinge_margin}"),
            (0.0 <= self.mnrl_weight <= 1.0, f"mnrl_weight: must be in [0, 1], got {self.mnrl_weight}"),
            (positive(self.mnrl_scale), f"mnrl_scale: must be a finite number > 0, got {self.mnrl_scale}"),
            (0.0 <= self.sdpo_gamma <= 1.0, f"sdpo_gamma: must be in [0, 1], got {self.sdpo_gamma}"),
            (isinstance(self.mini_batch_size, int) and self.mini_batch_size > 0,
             f"mini_batch_size: must be an integer > 0, got {self.mini_batch_size}"),
        ])
        beta, scale = policy_defaults(self.policy, self.beta, self.scale)
        return dataclasses.replace(self, beta=beta, scale=scale)

    def check_loss(self, loss: str) -> "DPOArgs":
        """The checks that depend on the loss (raises UserInputError); returns self."""
        require([(loss != "sdpo" or self.policy == "linear",
                 "policy: sdpo is a softmax over beta*scale*s (the linear policy); drop policy sigmoid")])
        return self

    def needs_reference(self, loss: str) -> bool:
        """Whether ``loss`` with these options scores against the frozen reference."""
        return loss in REFERENCE_LOSSES and not self.reference_free and not (loss == "sdpo" and self.sdpo_gamma == 0)


def training_arguments(output_dir: str, loss: str | None = None, **overrides) -> "SentenceTransformerTrainingArguments":
    """sentence-transformers' training arguments: :data:`TRAINING_DEFAULTS`, under ``loss``'s own defaults
    (:func:`budget_defaults`), under ``overrides`` (None values are left to the defaults)."""
    from sentence_transformers import SentenceTransformerTrainingArguments

    values = {**budget_defaults(loss), **{k: v for k, v in overrides.items() if v is not None}}
    # ours first: transformers' own checks raise ValueErrors that do not name the field the same way
    check_training_arguments(SimpleNamespace(**{"gradient_accumulation_steps": 1, **values, "output_dir": output_dir}))
    return SentenceTransformerTrainingArguments(output_dir=str(output_dir), **values)


def budget_defaults(loss: str | None) -> dict:
    """:data:`TRAINING_DEFAULTS` with ``loss``'s own learning rate, epochs and batch size
    (:data:`~dpo_retrieval.training.defaults.LOSS_DEFAULTS`) where it has them."""
    return {**TRAINING_DEFAULTS, **{k: loss_default(loss, k) for k in BUDGET if loss_default(loss, k) is not None}}


def check_training_arguments(args: "SentenceTransformerTrainingArguments") -> None:
    """The checks sentence-transformers leaves to the trainer (raises UserInputError naming the field)."""
    require([
        (args.output_dir, "output_dir: required (the directory for the model, train_log.jsonl and checkpoints)"),
        (args.per_device_train_batch_size > 0,
         f"per_device_train_batch_size: must be > 0, got {args.per_device_train_batch_size}"),
        (positive(args.num_train_epochs), f"num_train_epochs: must be a finite number > 0, got {args.num_train_epochs}"),
        (positive(args.learning_rate), f"learning_rate: must be a finite number > 0, got {args.learning_rate}"),
        (args.warmup_steps >= 0, f"warmup_steps: must be >= 0, got {args.warmup_steps}"),
        (args.gradient_accumulation_steps > 0,
         f"gradient_accumulation_steps: must be > 0, got {args.gradient_accumulation_steps}"),
        (args.save_steps > 0, f"save_steps: must be > 0, got {args.save_steps}"),
        (args.logging_steps > 0, f"logging_steps: must be > 0, got {args.logging_steps}"),
    ])
