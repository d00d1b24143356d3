"""Named training variants for ``compare``: the same run trains several settings side by side.

A config file (or ``--variants`` JSON) maps a name to a loss and the options it changes::

    losses: [contrastive-tuned, dpo-tuned, dpo-hinge]
    variants:
      contrastive-tuned: {loss: contrastive, learning_rate: 1.0e-4, mnrl_scale: 20}
      dpo-tuned: {loss: dpo, beta: 0.3, learning_rate: 5.0e-5}
      dpo-hinge: {loss: dpo, loss_type: hinge, hinge_margin: 1.0}

A name in ``losses`` that is a variant trains its loss with the run's options overridden by the
variant's (the training budget - ``train_max_seq_length``, ``num_train_epochs``,
``per_device_train_batch_size``, ``learning_rate``, ``warmup_steps`` -, ``train_negatives``, ``wise_ft``,
and any DPO or loss option such as ``beta``, ``scale``, ``policy``, ``loss_type``, ``dropout``,
``mnrl_scale``), and is called by its name in ``models/``, ``eval/``, the report and the plots. A variant
named after a loss (``contrastive: {learning_rate: 1.0e-4}``) needs no ``loss``. Mining, the triplets, the
seeds and the evaluation sets stay the run's, so every variant trains on the same triplets and batches;
``train_negatives: N`` trains on the first N of each triplet's mined negatives, so mining (``negatives``,
the run's) must give at least N, else the variant is refused before anything runs.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import TYPE_CHECKING, Any

from dpo_retrieval.errors import UserInputError
from dpo_retrieval.training.args import LOSSES, DPOArgs

if TYPE_CHECKING:
    from dpo_retrieval.experiment.compare_args import CompareArgs

#: the run options a variant may change (besides ``loss`` and the DPOArgs fields)
VARIANT_OPTIONS = ("train_max_seq_length", "train_negatives", "num_train_epochs", "per_device_train_batch_size",
                   "learning_rate", "warmup_steps", "wise_ft")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$")
_RESERVED = re.compile(r"(^base$)|(-seed-?\d+$)|(-wiseft[0-9.eE+-]+$)")


def parse_variants(value: Any) -> dict[str, dict]:
    """``{name: {option: value}}`` from a mapping, a JSON string or None (raises UserInputError
    ``variants: ...`` naming the variant and option at fault). Each entry gets its ``loss``."""
    if value is None or value == "" or value == {}:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise UserInputError(f"variants: not a JSON mapping ({err.msg} at column {err.colno})") from None
    if not isinstance(value, dict):
        raise UserInputError(f"variants: must map names to options, got {type(value).__name__}")
    dpo_fields = {f.name for f in dataclasses.fields(DPOArgs)}
    out: dict[str, dict] = {}
    for name, options in value.items():
        name = str(name)
        if not _NAME.match(name) or _RESERVED.search(name):
            raise UserInputError(f"variants: bad name {name!r} (letters, digits and _.+=-; not 'base', not ending "
                                 "in -seed<k> or -wiseft<A>)")
        if not isinstance(options, dict):
            raise UserInputError(f"variants: {name}: must be a mapping of option: value")
        options = {str(k).replace("-", "_"): v for k, v in options.items()}
        loss = options.pop("loss", name if name in LOSSES else None)
        if loss not in LOSSES:
            raise UserInputError(f"variants: {name}: loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        unknown = sorted(k for k in options if k not in dpo_fields and k not in VARIANT_OPTIONS)
        if unknown:
            raise UserInputError(f"variants: {name}: unknown option {', '.join(map(repr, unknown))} (a variant sets "
                                 f"its loss, {', '.join(VARIANT_OPTIONS)} and DPO/loss options)")
        out[name] = {"loss": loss, **options}
    return out


def variant_config(cfg: "CompareArgs", name: str) -> tuple[str, "CompareArgs"]:
    """``(loss, the run's config with the variant's options)`` for a name in ``cfg.losses`` (a plain loss
    name that is no variant: that loss with the run's options). ``cfg`` is the config as given (not yet
    resolved), so a variant's ``policy`` brings that policy's default beta and scale; the result is
    resolved. Raises UserInputError ``variants: <name>: <option>: ...`` on a bad value."""
    options = dict(cfg.variants.get(name) or {"loss": name})
    loss = options.pop("loss")
    dpo = {k: options.pop(k) for k in list(options) if k in {f.name for f in dataclasses.fields(DPOArgs)}}
    try:
        out = dataclasses.replace(cfg, **options, losses=[loss], variants={},
                                  dpo=dataclasses.replace(cfg.dpo, **dpo))
    except UserInputError as err:
        raise UserInputError(f"variants: {name}: {err}") from None
    return loss, out.resolved()


def wise_ft_name(name: str, alpha: float | None) -> str:
    """A WiSE-FT model's name: ``<model>-wiseft<alpha>`` (``name`` itself for None)."""
    return name if alpha is None else f"{name}-wiseft{alpha:g}"


def seed_model_name(name: str, seed: int, main_seed: int) -> str:
    """A trained model's name under models/, eval/ and embeddings/: ``<name>`` for the run's own ``--seed``
    (so a single-seed run's directories and stage hashes are those of before ``--seeds`` existed, and
    a multi-seed run that includes ``--seed`` reuses them), ``<name>-seed<k>`` for every other seed."""
    return name if seed == main_seed else f"{name}-seed{seed}"
