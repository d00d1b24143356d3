"""The settings of one training run (:class:`TrainConfig`) and their checks."""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field

from dpo_retrieval.errors import UserInputError
from dpo_retrieval.losses import POLICY_DEFAULTS, policy_defaults

LOSSES = ("dpo", "contrastive", "dpr")


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
        beta, scale = policy_defaults(self.policy, self.beta, self.scale)
        return dataclasses.replace(self, beta=beta, scale=scale)
