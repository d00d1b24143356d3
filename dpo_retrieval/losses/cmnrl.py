"""``cmnrl``: sentence-transformers' ``CachedMultipleNegativesRankingLoss`` (GradCache, Gao et al. 2021,
arXiv:2101.06983) with the contrastive baseline's settings (cosine similarity, scale ``mnrl_scale``, 20 by
default).

The loss is MNRL's (:func:`~dpo_retrieval.losses.scores.mnrl_loss`), over the whole batch; the
embeddings are computed in chunks of ``mini_batch_size`` texts, first without gradients, then again
with the cached gradients of the loss, so the memory is that of a ``mini_batch_size`` batch whatever
the batch size (e.g. ``per_device_train_batch_size`` 256 with ``mini_batch_size`` 32): the stronger
contrastive baseline people run, at roughly the cost of one more forward pass.
"""

from __future__ import annotations

from dpo_retrieval.losses.dpo_mnrl import MNRL_SCALE


def cached_mnrl(model, mini_batch_size: int = 32, *, scale: float = MNRL_SCALE, gather_across_devices: bool = False):
    """sentence-transformers' ``CachedMultipleNegativesRankingLoss`` on ``model``: cosine, ``scale``
    (20, the contrastive baseline's), chunks of ``mini_batch_size`` (> 0) texts; ``gather_across_devices``:
    under DDP, every rank's passages are negatives (as in one process with the global batch)."""
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss
    from sentence_transformers.util import cos_sim

    if not isinstance(mini_batch_size, int) or mini_batch_size <= 0:
        raise ValueError(f"mini_batch_size must be an integer > 0, got {mini_batch_size}")
    return CachedMultipleNegativesRankingLoss(model, scale=scale, similarity_fct=cos_sim,
                                              mini_batch_size=mini_batch_size,
                                              gather_across_devices=gather_across_devices)
