"""Training: settings (:mod:`.args`), the trainer and its callbacks (:mod:`.trainer`), checkpoints and
the final save (:mod:`.save`), the reference scores (:mod:`.reference`) and :func:`train` (:mod:`.train`)."""

from dpo_retrieval.training.args import LOSSES, TRAINING_DEFAULTS, DPOArgs, TrainArgs, training_arguments
from dpo_retrieval.training.train import build_loss, train

__all__ = ["LOSSES", "TRAINING_DEFAULTS", "DPOArgs", "TrainArgs", "build_loss", "train", "training_arguments"]
