"""``dpo-retrieval compare``'s options: :class:`CompareArgs`, the budget presets and which DPO options each
loss reads (what enters its training stage key). The run itself is :mod:`dpo_retrieval.experiment.compare`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from dpo_retrieval.errors import UserInputError, positive, require
from dpo_retrieval.experiment.variants import parse_variants
from dpo_retrieval.mining import MineArgs
from dpo_retrieval.retrieval.args import ModelArgs, ScoringArgs
from dpo_retrieval.training.args import LOSSES, TRAINING_DEFAULTS, DPOArgs, budget_defaults
from dpo_retrieval.training.defaults import BUDGET, capped_default, describe

#: The presets: budgets. ``quick`` trains on a fixed-seed subsample of the mined triplets for one epoch at a
#: shorter max length, so the whole comparison fits in well under half an hour on a 2-core CPU; evaluation is
#: still on the full test split at max length 256. ``full`` trains on every triplet for each loss's own number
#: of epochs. A preset fills only the fields left None; what it leaves None (learning rate, batch size, epochs
#: under ``full``, negatives) is each loss's default (:mod:`dpo_retrieval.training.defaults`).
PRESETS = {
    "quick": {"max_triplets": 256, "train_max_seq_length": 128, "num_train_epochs": 1.0},
    "full": {"max_triplets": None, "train_max_seq_length": 256},
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
    losses: list[str] = field(default_factory=lambda: ["dpo+mnrl", "contrastive"], metadata={
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
                "default by loss, at most --negatives: " + describe("negatives") + "; other losses: all)"})
    num_train_epochs: float | None = field(default=None, metadata={
        "help": "training epochs (default: the preset's, else by loss: " + describe("num_train_epochs") +
                f"; other losses {TRAINING_DEFAULTS['num_train_epochs']:g})"})
    per_device_train_batch_size: int | None = field(default=None, metadata={
        "help": "triplets per training batch (default by loss: " + describe("per_device_train_batch_size") +
                "; other losses " + f"{TRAINING_DEFAULTS['per_device_train_batch_size']})"})
    learning_rate: float | None = field(default=None, metadata={
        "help": "learning rate (default by loss: " + describe("learning_rate") +
                f"; other losses {TRAINING_DEFAULTS['learning_rate']:g})"})
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
        """The preset's values where a budget field is None; for a config of one loss (a variant's, see
        ``variant_config``) that loss's defaults where still None (:mod:`dpo_retrieval.training.defaults`:
        learning rate, epochs, batch size, negatives at most the mined, loss options), the policy's beta and
        scale where None (what the report records as used), and this seed in the mining settings. A config
        of several losses leaves the per-loss fields None (each model's are in the report's ``models``)."""
        values = {k: (getattr(self, k) if getattr(self, k) is not None else v) for k, v in PRESETS[self.preset].items()}
        loss = self.losses[0] if len(self.losses) == 1 and self.losses[0] in LOSSES else None
        if loss is not None:
            values.update({k: v for k, v in budget_defaults(loss).items()
                           if k in BUDGET and values.get(k, getattr(self, k)) is None})
            if self.train_negatives is None:
                values["train_negatives"] = capped_default(loss, self.mining.negatives)
            dpo = self.dpo.resolved(loss)
        else:  # several losses: the per-loss options stay as given (each model's are in config.models)
            dpo = dataclasses.replace(self.dpo.resolved(), mnrl_scale=self.dpo.mnrl_scale,
                                      mnrl_weight=self.dpo.mnrl_weight)
        return dataclasses.replace(self, **values, dpo=dpo, mining=dataclasses.replace(self.mining, seed=self.seed))


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
