"""Each loss's defaults: its best settings on SciFact dev in the study (issue 14).

Every loss was tuned on the dev split only (80 held-out train queries, fast dev nDCG@10, seed 42), with the same
budget per loss family, on all-MiniLM-L6-v2 with 834 SciFact triplets at max length 128
(``benchmarks/results/study_scifact.md``; every point in ``benchmarks/results/study/tune_*.json``). The best point
of each loss (for ``contrastive``, the best known: see its entry) becomes what ``train`` and ``compare`` use where an option is not given; an option given (flag,
config file, a ``compare`` variant, ``training_arguments(...)``) always wins. Losses without an entry (``dpr``,
untuned) keep :data:`~dpo_retrieval.training.args.TRAINING_DEFAULTS` and every negative of the file.

The DPO-family losses share DPO's beta: the linear policy's default beta (10, ``losses.POLICY_DEFAULTS``) is the
study's; DPO's own knobs (sigmoid policy, dropout off, IPO, scale 10 or 40, no reference) each scored lower on dev.

These are SciFact's settings (a small training set: a 4-epoch default is ~100 steps there): on a large triplet
file, set ``num_train_epochs`` (and perhaps ``learning_rate``) yourself.
"""

from __future__ import annotations

#: the options with a per-loss default: the training arguments, train's ``negatives`` (hard negatives per
#: triplet used) and the DPOArgs loss options (``mnrl_scale``, ``mnrl_weight``)
BUDGET = ("learning_rate", "num_train_epochs", "per_device_train_batch_size")
LOSS_OPTIONS = ("mnrl_scale", "mnrl_weight")

#: loss -> its defaults (the study's best dev point; fast dev nDCG@10 in the comment)
LOSS_DEFAULTS: dict[str, dict] = {
    # 0.7644 (lr 1e-4, beta 10, 4 epochs, 4 negatives)
    "dpo": {"learning_rate": 1e-4, "num_train_epochs": 4.0, "negatives": 4},
    # 0.8074 (lambda 0.75, the MNRL term at scale 20)
    "dpo+mnrl": {"learning_rate": 1e-4, "num_train_epochs": 4.0, "negatives": 4, "mnrl_weight": 0.75,
                 "mnrl_scale": 20.0},
    # 0.7541 (gamma 1, confirmed at 3 epochs: amendment 2 of the study)
    "sdpo": {"learning_rate": 1e-4, "num_train_epochs": 3.0, "negatives": 4},
    # MultipleNegativesRankingLoss at dpo+mnrl's settings (lr 1e-4, 4 epochs, 4 negatives, scale 20): the study's
    # ablation (amendment 7) trained exactly this, dpo+mnrl at lambda 1, and it beat the contrastive search's own
    # best point (lr 2e-4, 2 epochs, 2 negatives; fast dev 0.8007) on full dev nDCG@10 at every common seed
    "contrastive": {"learning_rate": 1e-4, "num_train_epochs": 4.0, "negatives": 4, "mnrl_scale": 20.0},
    # 0.8105 (CachedMultipleNegativesRankingLoss: batch 128, lr 8e-4, scale 40, 3 epochs, 1 negative)
    "cmnrl": {"learning_rate": 8e-4, "num_train_epochs": 3.0, "per_device_train_batch_size": 128, "negatives": 1,
              "mnrl_scale": 40.0},
}
#: what a loss option is where neither the user nor the loss's entry sets it
OPTION_FALLBACK = {"mnrl_scale": 20.0, "mnrl_weight": 0.75}


def loss_default(loss: str | None, name: str, fallback=None):
    """``name``'s default for ``loss`` (its :data:`LOSS_DEFAULTS` entry, else ``fallback``)."""
    return LOSS_DEFAULTS.get(loss or "", {}).get(name, fallback)


def capped_default(loss: str | None, available: int) -> int | None:
    """``loss``'s default negatives per triplet, at most ``available`` (None: the loss has none, so every one)."""
    default = loss_default(loss, "negatives")
    return None if default is None else min(default, available)


def describe(name: str) -> str:
    """``name``'s per-loss defaults for ``--help``: ``"dpo 0.0001, contrastive 0.0002, ..."``."""
    return ", ".join(f"{loss} {d[name]:g}" for loss, d in LOSS_DEFAULTS.items() if name in d)
