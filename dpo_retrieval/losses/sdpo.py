"""``sdpo``: softmax (listwise) DPO over the positive, the hard negatives and the in-batch passages.

For query i and every passage j of the batch (all positives and all hard negatives, as in
sentence-transformers' ``MultipleNegativesRankingLoss``):

    L_i = -log softmax_j( beta * a * (s_ij - gamma * s_ref,ij) )[pos(i)]

with s the policy's similarity, s_ref the frozen reference's and ``beta * a`` the temperature.
gamma = 0 is MNRL (InfoNCE) at scale ``beta * a`` (with beta 1, a 20: exactly the contrastive baseline;
the linear policy's defaults are beta 10, a 20, the study's best for sdpo at gamma 1); gamma = 1 is the Plackett-Luce (top-1) form of DPO, with
log pi = a * s (the linear policy), against the reference. In between, the reference's scores are
partly subtracted: passages the reference already ranks high weigh less.

The in-batch reference scores need the reference's embeddings of every query and passage of the
batch: precomputed once before training
(:func:`~dpo_retrieval.training.reference.add_reference_embeddings`, stored per row in the ``label``
column as a (2+k, d) array: query, positive, negative_1..k) or computed by an online frozen copy.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dpo_retrieval.losses.dpo import DPO_CITATION, policy_defaults
from dpo_retrieval.losses.scores import _float32, float32_math, in_batch_scores, model_similarity


def sdpo_loss(policy_scores: Tensor, ref_scores: Tensor | None, *, beta: float, scale: float,
              gamma: float) -> Tensor:
    """(B,) softmax DPO: ``-log softmax_j(beta*scale*(s_ij - gamma*s_ref,ij))[i]``.

    ``policy_scores`` and ``ref_scores`` are (B, N) in-batch scores
    (:func:`~dpo_retrieval.losses.scores.in_batch_scores`; query i's positive is column i);
    ``ref_scores`` may be None when ``gamma`` is 0. Float32, autocast off.
    """
    if not beta > 0 or not scale > 0:
        raise ValueError(f"beta and scale must be > 0, got beta={beta}, scale={scale}")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    with float32_math(policy_scores.device):
        logits = _float32(policy_scores)
        if gamma:
            if ref_scores is None or ref_scores.shape != policy_scores.shape:
                shape = None if ref_scores is None else tuple(ref_scores.shape)
                raise ValueError(f"sdpo needs reference scores of shape {tuple(policy_scores.shape)}, got {shape}")
            logits = logits - gamma * _float32(ref_scores).to(logits.device)
        target = torch.arange(logits.shape[0], device=logits.device)
        return F.cross_entropy(beta * scale * logits, target, reduction="none")


class SDPOLoss(nn.Module):
    def __init__(self, model, beta: float | None = None, scale: float | None = None, gamma: float = 1.0,
                 reference=None, reference_similarity: str | None = None) -> None:
        """Softmax DPO over the batch (see the module docstring for the formula).

        Args:
            model: the SentenceTransformer being trained.
            beta, scale: the temperature is ``beta * scale`` (defaults: the linear policy's, 10 and 20).
            gamma: in [0, 1]; 0 = MNRL at scale ``beta*scale`` (no reference needed), 1 = listwise DPO.
            reference: an :class:`~dpo_retrieval.training.reference.OnlineReference` that embeds each
                batch with a frozen encoder; ``None`` when the reference embeddings come precomputed in
                the ``label`` column (:func:`~dpo_retrieval.training.reference.add_reference_embeddings`).
            reference_similarity: the similarity the reference embeddings are compared with (default:
                the online reference's, else the policy's).

        Inputs: (anchor, positive, negative_1..k) texts; labels (B, 2+k, d) reference embeddings
        (query, positive, negatives) or none (online reference, or gamma 0).
        Logged metric: ``sdpo/top1``, the share of queries whose positive the policy scores above
        every other passage of the batch.
        """
        super().__init__()
        beta, scale = policy_defaults("linear", beta, scale)
        if not beta > 0 or not scale > 0:
            raise ValueError(f"beta and scale must be > 0, got beta={beta}, scale={scale}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        self.model = model
        self.similarity = model_similarity(model)
        self.beta, self.scale, self.gamma = beta, scale, gamma
        self.reference = reference  # a plain object: the trainer must not train, save or move it
        self.reference_similarity = (reference_similarity or getattr(reference, "similarity", None)
                                     or self.similarity)
        self._top1_sum, self._count = 0.0, 0

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> Tensor:
        from sentence_transformers.base.losses.merged_forward import embed_columns

        sentence_features = list(sentence_features)
        if self.reference is not None and self.gamma:
            labels = torch.stack(self.reference.embed(sentence_features), dim=1)  # before the policy runs
        embeddings = embed_columns(self.model, sentence_features)
        return self.compute_loss_from_embeddings(embeddings, labels)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None) -> Tensor:
        if len(embeddings) < 2:
            raise ValueError(f"SDPOLoss needs (anchor, positive, negative_1..k) columns, got {len(embeddings)}")
        scores = in_batch_scores(embeddings[0], embeddings[1:], self.similarity)
        ref_scores = None
        if self.gamma:
            want = (scores.shape[0], len(embeddings))
            if labels is None or labels.dim() != 3 or tuple(labels.shape[:2]) != want:
                shape = None if labels is None else tuple(labels.shape)
                raise ValueError(
                    f"SDPOLoss needs reference embeddings of shape {want + ('d',)} in the 'label' column, got "
                    f"{shape}: add them with dpo_retrieval.training.reference.add_reference_embeddings or pass "
                    "reference=OnlineReference(...)")
            ref = labels.to(scores.device)
            ref_scores = in_batch_scores(ref[:, 0], ref[:, 1:], self.reference_similarity)
        losses = sdpo_loss(scores, ref_scores, beta=self.beta, scale=self.scale, gamma=self.gamma)
        with torch.no_grad():
            self._top1_sum += (scores.argmax(dim=-1) == torch.arange(len(scores), device=scores.device)
                               ).float().mean().item()
            self._count += 1
        return losses.mean()

    def pop_metrics(self) -> dict[str, float]:
        """Mean ``sdpo/top1`` since the last call (for the trainer's log), then reset."""
        if not self._count:
            return {}
        out = {"sdpo/top1": self._top1_sum / self._count}
        self._top1_sum, self._count = 0.0, 0
        return out

    def get_config_dict(self) -> dict[str, Any]:
        return {"beta": self.beta, "scale": self.scale, "gamma": self.gamma, "similarity": self.similarity,
                "reference": "none" if not self.gamma else "online" if self.reference is not None else "precomputed"}

    @property
    def citation(self) -> str:
        return DPO_CITATION
