"""``dpo+mnrl``: DPO plus a contrastive term on the same batch, ``λ·MNRL + (1 − λ)·DPO``.

DPO only moves scores relative to the reference and to each other: the positive's absolute score
may fall as long as the negatives fall faster. The MNRL (InfoNCE) term pulls the positive up against
every passage of the batch, as RPO (Pang et al. 2024, arXiv:2404.19733) adds an NLL term to DPO.
The MNRL part is the contrastive baseline's: cosine similarity, scale ``mnrl_scale`` (20), in-batch and hard
negatives (sentence-transformers' ``MultipleNegativesRankingLoss``, recomputed in float32 by
:func:`~dpo_retrieval.losses.scores.mnrl_loss`); the DPO part is :class:`~dpo_retrieval.losses.dpo.DPOLoss`
with all its options.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from dpo_retrieval.losses.dpo import DPOLoss
from dpo_retrieval.losses.scores import float32_math, in_batch_scores, mnrl_loss

#: the contrastive baseline's MNRL (``--loss contrastive``): cosine similarity, scale 20 (DPOArgs.mnrl_scale's default)
MNRL_SIMILARITY, MNRL_SCALE = "cosine", 20.0


def dpo_mnrl_loss(mnrl_losses: Tensor, dpo_losses: Tensor, *, mnrl_weight: float) -> Tensor:
    """``λ·MNRL + (1 − λ)·DPO`` per example (λ = ``mnrl_weight`` in [0, 1]); float32."""
    if not 0.0 <= mnrl_weight <= 1.0:
        raise ValueError(f"mnrl_weight must be in [0, 1], got {mnrl_weight}")
    with float32_math(mnrl_losses.device):
        return mnrl_weight * mnrl_losses.float() + (1.0 - mnrl_weight) * dpo_losses.float()


class DPOMNRLLoss(DPOLoss):
    def __init__(self, model, mnrl_weight: float = 0.75, *, mnrl_scale: float = MNRL_SCALE,
                 mnrl_similarity: str = MNRL_SIMILARITY, **dpo_options) -> None:
        """``mnrl_weight · MNRL + (1 − mnrl_weight) · DPO`` on the same batch.

        Args:
            model: the SentenceTransformer being trained.
            mnrl_weight: λ in [0, 1]; 1 is the contrastive baseline, 0 is :class:`DPOLoss`.
            mnrl_scale, mnrl_similarity: the MNRL term's scale and similarity (the contrastive
                baseline's by default: 20 and cosine, whatever the DPO part scores with).
            dpo_options: :class:`DPOLoss`'s arguments (beta, scale, policy, loss_type, reference, ...).

        Inputs are DPOLoss's: (anchor, positive, negative_1..k) with the reference scores in ``label``
        (or an online reference). The log gets DPOLoss's ``rewards/*`` and the two terms,
        ``loss/mnrl`` and ``loss/dpo``.
        """
        super().__init__(model, **dpo_options)
        if not 0.0 <= mnrl_weight <= 1.0:
            raise ValueError(f"mnrl_weight must be in [0, 1], got {mnrl_weight}")
        self.mnrl_weight = mnrl_weight
        self.mnrl_scale = mnrl_scale
        self.mnrl_similarity = mnrl_similarity

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None) -> Tensor:
        dpo_losses, chosen, rejected = self.dpo_terms(embeddings, labels)
        mnrl = mnrl_loss(in_batch_scores(embeddings[0], embeddings[1:], self.mnrl_similarity), scale=self.mnrl_scale)
        losses = dpo_mnrl_loss(mnrl, dpo_losses, mnrl_weight=self.mnrl_weight)
        self._record(chosen, rejected, **{"loss/mnrl": mnrl.mean().item(), "loss/dpo": dpo_losses.mean().item()})
        return losses.mean()

    def get_config_dict(self) -> dict[str, Any]:
        return {**super().get_config_dict(), "mnrl_weight": self.mnrl_weight, "mnrl_scale": self.mnrl_scale,
                "mnrl_similarity": self.mnrl_similarity}
