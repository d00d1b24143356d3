"""Query-passage scores, the one place they are computed: for the policy and for the reference
(precomputed and online), for each query's own candidates (:func:`candidate_scores`) and for every
passage of the batch (:func:`in_batch_scores`).

Scores are the model's own similarity (its ``similarity_fn_name``: cosine, the default, or dot; the
same score evaluation and the FAISS index use), computed from float32 embeddings with autocast off,
so they do not depend on the precision the encoder ran in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dpo_retrieval.errors import UserInputError

SIMILARITIES = ("cosine", "dot")


def model_similarity(model) -> str:
    """The similarity to score ``model`` with: its ``similarity_fn_name`` (None = cosine, as in
    sentence-transformers); raises :class:`UserInputError` for one DPO does not support."""
    name = getattr(model, "similarity_fn_name", None) or "cosine"
    name = str(getattr(name, "value", name))
    if name not in SIMILARITIES:
        raise UserInputError(f"the model's similarity {name!r} is not supported for DPO scoring; "
                             f"supported: {', '.join(SIMILARITIES)}")
    return name


def float32_math(device: torch.device | str) -> contextlib.AbstractContextManager:
    """Autocast off on ``device`` (inputs must be cast to float32 by the caller)."""
    device_type = torch.device(device).type
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _float32(t: Tensor) -> Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _check_similarity(similarity: str) -> None:
    if similarity not in SIMILARITIES:
        raise UserInputError(f"similarity {similarity!r} is not supported for DPO scoring; "
                             f"supported: {', '.join(SIMILARITIES)}")


def _stack(candidate_embs: Sequence[Tensor] | Tensor) -> Tensor:
    """(B, 1+k, d) float32 from a list of (B, d) tensors or one (B, 1+k, d) tensor."""
    if isinstance(candidate_embs, Tensor):
        return candidate_embs.float()
    return torch.stack([e.float() for e in candidate_embs], dim=1)


def candidate_scores(query_emb: Tensor, candidate_embs: Sequence[Tensor] | Tensor, similarity: str) -> Tensor:
    """(B, 1+k) float32 scores of each query with its own positive and negatives.

    ``candidate_embs`` is a list of (B, d) tensors (positive, negative_1..k) or one (B, 1+k, d)
    tensor; ``similarity`` is "cosine" or "dot" (see :func:`model_similarity`). Computed from float32
    embeddings with autocast off, so the result does not depend on the precision the encoder ran in.
    """
    _check_similarity(similarity)
    with float32_math(query_emb.device):
        q, c = query_emb.float(), _stack(candidate_embs)
        if similarity == "cosine":
            q, c = F.normalize(q, p=2, dim=-1), F.normalize(c, p=2, dim=-1)
        return torch.einsum("bd,bkd->bk", q, c)


def in_batch_scores(query_emb: Tensor, candidate_embs: Sequence[Tensor] | Tensor, similarity: str) -> Tensor:
    """(B, (1+k)·B) float32 scores of each query with every passage of the batch.

    Columns in sentence-transformers' ``MultipleNegativesRankingLoss`` order: all positives, then
    every row's negative_1, ..., negative_k; so query i's positive is column i and its negative j
    column ``j·B + i``. Same inputs, precision and similarity as :func:`candidate_scores`.
    """
    _check_similarity(similarity)
    with float32_math(query_emb.device):
        q, c = query_emb.float(), _stack(candidate_embs)  # (B, d), (B, 1+k, d)
        passages = c.transpose(0, 1).reshape(-1, c.shape[-1])  # (1+k)·B rows: positives first
        if similarity == "cosine":
            q, passages = F.normalize(q, p=2, dim=-1), F.normalize(passages, p=2, dim=-1)
        return q @ passages.T


def mnrl_loss(scores: Tensor, *, scale: float) -> Tensor:
    """(B,) MultipleNegativesRankingLoss (InfoNCE) per query: ``−log softmax_j(scale·s_ij)[i]`` over the
    in-batch scores of :func:`in_batch_scores` (query i's positive is column i); float32, autocast off.
    sentence-transformers' ``MultipleNegativesRankingLoss`` is the mean of this."""
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    with float32_math(scores.device):
        logits = scale * _float32(scores)
        target = torch.arange(logits.shape[0], device=logits.device)
        return F.cross_entropy(logits, target, reduction="none")
