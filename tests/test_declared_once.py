"""Each option is declared once: a field name that two command dataclasses share is the same
``dataclasses.Field`` (inherited or composed), unless it is in :data:`MEANING_DIFFERS`."""

from __future__ import annotations

import dataclasses
from typing import get_type_hints

from dpo_retrieval.cli import COMMANDS, _spec

#: field names declared by more than one class on purpose: the same word, a different thing per command
MEANING_DIFFERS = {
    "output": "what a command writes: an index dir, a run file, a results JSON, a run/sweep/model dir",
    "dataset": "index: the corpus to index; evaluate/mine/compare: the dataset scored or mined",
    "split": "evaluate: the scored split (test); mine: the mined split (train)",
    "corpus": "index: the corpus to encode; train: resolves id triplets",
    "queries": "search: the queries to run; train: resolves id triplets",
    "index": "search: the index searched; evaluate: an index reused instead of building one",
    "factory": "index: the index built; evaluate: the throwaway index (same help, another default use)",
    "top_k": "search: hits shown (10); evaluate/compare: retrieval depth scored (1000)",
    "max_seq_length": "encoding: None = the index's; train: 256",
    "negatives": "mine/compare: hard negatives mined per positive; train: the first N of each triplet row used",
    "seed": "mining's sampling seed vs the training arguments' seed (compare sets both from its own)",
    # compare's training budget: None = the preset's, unlike the training arguments' fixed defaults
    "num_train_epochs": "compare: None = the preset's", "per_device_train_batch_size": "compare: None = the preset's",
    "learning_rate": "compare: None = the preset's", "warmup_steps": "compare: a ratio or steps, one default",
}


def _fields(dtype, seen=None):
    """Every (name, Field, owner) a dataclass contributes to its parser, nested dataclasses flattened."""
    hints = get_type_hints(dtype)
    for f in dataclasses.fields(dtype):
        hint = hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            yield from _fields(hint)
        elif f.init:
            yield f.name, f, dtype.__name__


def _command_classes():
    from sentence_transformers import SentenceTransformerTrainingArguments

    from dpo_retrieval.training.args import DPOArgs, TrainArgs

    classes = {TrainArgs, DPOArgs, SentenceTransformerTrainingArguments}
    for name in COMMANDS:
        if name != "train":
            classes.update(_spec(name)[0])
    return classes


def test_every_option_is_declared_once():
    declared: dict[str, dict[int, str]] = {}
    for dtype in _command_classes():
        for name, f, owner in _fields(dtype):
            declared.setdefault(name, {}).setdefault(id(f), owner)
    twice = {name: sorted(owners.values()) for name, owners in declared.items()
             if len(owners) > 1 and name not in MEANING_DIFFERS}
    assert not twice, f"declared in more than one class (share a base class, or list in MEANING_DIFFERS): {twice}"


def test_allow_list_is_not_stale():
    declared: dict[str, set[int]] = {}
    for dtype in _command_classes():
        for name, f, _ in _fields(dtype):
            declared.setdefault(name, set()).add(id(f))
    stale = [n for n in MEANING_DIFFERS if len(declared.get(n, ())) < 2]
    assert not stale, f"declared once now: drop {stale} from MEANING_DIFFERS"


def test_model_options_shared_by_train_and_encoding():
    from dpo_retrieval.retrieval.args import ModelArgs
    from dpo_retrieval.training.args import TrainArgs

    for name in ("model", "device", "precision", "trust_remote_code"):
        assert TrainArgs.__dataclass_fields__[name] is ModelArgs.__dataclass_fields__[name]
    assert "backend" not in TrainArgs.__dataclass_fields__
