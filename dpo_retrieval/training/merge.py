"""WiSE-FT (Wortsman et al. 2022, arXiv:2109.01903): interpolate the weights of a fine-tuned model with
its starting model, ``theta = (1 - alpha) * theta_base + alpha * theta_finetuned``.

The cheap way to keep out-of-domain quality: alpha 0 is the base, 1 the fine-tuned model, and the
points between often keep most of the in-domain gain at a fraction of the out-of-domain loss.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dpo_retrieval.errors import UserInputError
from dpo_retrieval.retrieval.args import RemoteCodeArgs

logger = logging.getLogger(__name__)


@dataclass
class MergeArgs(RemoteCodeArgs):
    """``merge``: WiSE-FT weight interpolation of a fine-tuned model with its base."""

    base: str | None = field(default=None, metadata={"help": "the starting model (name or directory)"})
    finetuned: str | None = field(default=None, metadata={"help": "the fine-tuned model's directory"})
    output: str | None = field(default=None, metadata={"help": "new directory for the merged model"})
    alpha: float = field(default=0.5, metadata={
        "help": "the fine-tuned model's weight in [0, 1]: (1-alpha)*base + alpha*finetuned"})

    def __post_init__(self) -> None:
        for name in ("base", "finetuned", "output"):
            if not getattr(self, name):
                raise UserInputError(f"{name}: required (the base, the fine-tuned model and the output directory)")


def _architecture(model) -> list[str]:
    """The module classes of a SentenceTransformer, in order (e.g. Transformer, Pooling, Normalize)."""
    return [type(module).__name__ for module in model]


def interpolate_state_dicts(base: dict[str, torch.Tensor], finetuned: dict[str, torch.Tensor],
                            alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * base + alpha * finetuned`` for every floating-point tensor (computed in float32,
    stored in the fine-tuned tensor's dtype); other tensors (integer buffers such as position ids)
    must be equal and are copied. Raises :class:`UserInputError` when the keys or shapes differ."""
    if base.keys() != finetuned.keys():
        only = sorted(set(base) ^ set(finetuned))
        raise UserInputError(f"merge: the models' weights differ in names ({len(only)} not in both, e.g. {only[0]})")
    merged = {}
    for name, ft in finetuned.items():
        b = base[name]
        if b.shape != ft.shape:
            raise UserInputError(f"merge: weight {name} has shape {tuple(b.shape)} in the base and "
                                 f"{tuple(ft.shape)} in the fine-tuned model")
        if ft.is_floating_point():
            mixed = (1.0 - alpha) * b.detach().float().cpu() + alpha * ft.detach().float().cpu()
            merged[name] = mixed.to(ft.dtype)
        elif torch.equal(b.cpu(), ft.cpu()):
            merged[name] = ft.detach().clone()
        else:
            raise UserInputError(f"merge: non-float weight {name} differs between the models")
    return merged


def merge_models(base: str | Path, finetuned: str | Path, out: str | Path, alpha: float = 0.5, *,
                 trust_remote_code: bool = False) -> Path:
    """WiSE-FT: save ``(1 - alpha) * base + alpha * finetuned`` (weights) as a sentence-transformers model.

    Args:
        base: the starting model (name or directory), e.g. the one ``train`` started from.
        finetuned: the fine-tuned model's directory; it must have the base's architecture (same
            modules, weight names and shapes, similarity and vocabulary).
        out: a new (or empty) directory for the merged model; written atomically: the model is saved
            next to it and renamed into place, so a failure leaves nothing at ``out``.
        alpha: the fine-tuned model's weight, in [0, 1] (0 the base, 1 the fine-tuned model).

    The merged model keeps the fine-tuned model's configuration (modules, prompts, max length).
    Returns ``out``. Raises :class:`UserInputError` (one line) for a bad alpha, an existing non-empty
    ``out``, or mismatched models.
    """
    from dpo_retrieval.losses import model_similarity
    from dpo_retrieval.models import load_model

    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
        raise UserInputError(f"alpha: must be a number in [0, 1], got {alpha}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserInputError(f"output: {out} already exists and is not an empty directory")
    base_model = load_model(str(base), device="cpu", trust_remote_code=trust_remote_code)
    ft_model = load_model(str(finetuned), device="cpu", trust_remote_code=trust_remote_code)
    if _architecture(base_model) != _architecture(ft_model):
        raise UserInputError(f"merge: different architectures: base {'/'.join(_architecture(base_model))}, "
                             f"fine-tuned {'/'.join(_architecture(ft_model))}")
    if model_similarity(base_model) != model_similarity(ft_model):
        raise UserInputError(f"merge: the base scores with {model_similarity(base_model)}, the fine-tuned model "
                             f"with {model_similarity(ft_model)}")
    base_tok, ft_tok = getattr(base_model, "tokenizer", None), getattr(ft_model, "tokenizer", None)
    if base_tok is not None and ft_tok is not None and base_tok.get_vocab() != ft_tok.get_vocab():
        raise UserInputError("merge: the models have different vocabularies")
    merged = interpolate_state_dicts(base_model.state_dict(), ft_model.state_dict(), float(alpha))
    del base_model
    ft_model.load_state_dict(merged)
    ft_model.model_card_data.add_tags(["wise-ft"])

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.merging-", dir=out.parent))
    try:
        ft_model.save(str(tmp))
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("WiSE-FT: %s = %.3g * %s + %.3g * %s", out, 1 - alpha, base, alpha, finetuned)
    return out
