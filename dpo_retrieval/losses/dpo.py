"""The DPO loss for dual encoders: the maths (:func:`dpo_loss`) and the trainer-facing module (:class:`DPOLoss`).

The policy is a dual encoder E. The probability it gives passage p for query q is

    pi(p | q) = sigma(a * s(q, p))        policy="sigmoid"
    log pi(p | q) = a * s(q, p) + const    policy="linear"  (log of a softmax over candidates;
                                                             the normaliser cancels in DPO's difference)

with s(q, p) the model's own similarity (its ``similarity_fn_name``: cosine, the default, or dot;
the same score evaluation and the FAISS index use) and a = ``scale``. The reference is a frozen
copy of the starting encoder. For a triplet (q, p+, p-):

    h = (log pi(p+|q) - log pi_ref(p+|q)) - (log pi(p-|q) - log pi_ref(p-|q))
    L = -log sigma(beta * h)                                       (Rafailov et al. 2023)
    L = (h - 1/(2 beta))^2                                         loss_type="ipo" (Azar et al. 2023)
    L = max(0, m - beta * h)                                       loss_type="hinge" (SLiC, Zhao et al. 2023)

Scores and the loss are computed in float32 with autocast off, whatever precision the encoder ran
in: h is a small difference of two numbers of size ``a`` that bf16 (8 bits of mantissa) would round
away. Scores come from :mod:`dpo_retrieval.losses.scores`, for the policy and for the reference
(precomputed and online).

The contrastive baseline is sentence-transformers' ``MultipleNegativesRankingLoss``; the other losses
(``dpo+mnrl``, ``sdpo``, ``cmnrl``) have their own modules in this package.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dpo_retrieval.losses.scores import _float32, candidate_scores, float32_math, model_similarity

logger = logging.getLogger(__name__)

POLICIES = ("sigmoid", "linear")
#: beta and scale when not given, by policy (the values :class:`DPOLoss`, ``train`` and the CLI share). The linear
#: policy's beta 10 is the study's best on SciFact dev (issue 14; beta 0.3, 1, 3, 30 scored lower; until then 1).
POLICY_DEFAULTS = {"linear": {"beta": 10.0, "scale": 20.0}, "sigmoid": {"beta": 10.0, "scale": 10.0}}


def policy_defaults(policy: str, beta: float | None = None, scale: float | None = None) -> tuple[float, float]:
    """``(beta, scale)`` with the policy's default for each one that is None."""
    if policy not in POLICY_DEFAULTS:
        raise ValueError(f"Unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    d = POLICY_DEFAULTS[policy]
    return (d["beta"] if beta is None else beta), (d["scale"] if scale is None else scale)


LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def policy_logprob(scores: Tensor, *, scale: float, policy: str = "sigmoid") -> Tensor:
    """log pi(p|q) from similarity scores: ``log sigma(scale*s)`` or ``scale*s`` (see module docstring)."""
    if policy == "sigmoid":
        return F.logsigmoid(scale * scores)
    elif policy == "linear":
        return scale * scores
    else:
        raise ValueError(f"Unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")


def dpo_loss(
    policy_pos: Tensor,
    policy_neg: Tensor,
    ref_pos: Tensor,
    ref_neg: Tensor,
    *,
    beta: float,
    scale: float,
    policy: str = "sigmoid",
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    reference_free: bool = False,
    hinge_margin: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """DPO over query-passage similarity scores.

    Args:
        policy_pos: (B,) policy similarity of each query with its positive.
        policy_neg: (B,) or (B, k) policy similarity with its negative(s).
        ref_pos: (B,) reference similarity with the positive (ignored if ``reference_free``).
        ref_neg: like ``policy_neg``, from the reference.
        beta: inverse temperature of the preference model (> 0); larger keeps the policy nearer the reference.
        scale: the policy's scale ``a`` (> 0).
        policy: "sigmoid" (log pi = log sigma(a s)) or "linear" (log pi = a s).
        loss_type: "sigmoid" (DPO, with cDPO label smoothing), "ipo", or "hinge" (``max(0, m - beta*h)``).
        label_smoothing: cDPO's epsilon, the assumed share of flipped preference labels, in [0, 0.5).
        reference_free: compare policy log-probabilities directly, without the reference.
        hinge_margin: the hinge's margin ``m`` (> 0): pairs with ``beta*h >= m`` add no loss and no
            gradient, which bounds how far the policy moves from the reference on each pair.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``: ``losses`` (B,) is the mean over each
        example's k pairs; rewards are ``beta * (log pi - log pi_ref)``, detached, shaped like the
        positive and negative inputs (exactly 0 where the policy's score equals the reference's).
        All float32 (half-precision inputs are upcast, autocast is off).
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if not 0 < hinge_margin < float("inf"):
        raise ValueError(f"hinge_margin must be a finite number > 0, got {hinge_margin}")
    with float32_math(policy_pos.device):
        return _dpo_loss(_float32(policy_pos), _float32(policy_neg), _float32(ref_pos), _float32(ref_neg),
                         beta=beta, scale=scale, policy=policy, loss_type=loss_type,
                         label_smoothing=label_smoothing, reference_free=reference_free, hinge_margin=hinge_margin)


def _dpo_loss(policy_pos, policy_neg, ref_pos, ref_neg, *, beta, scale, policy, loss_type, label_smoothing,
              reference_free, hinge_margin):
    neg_was_1d = policy_neg.dim() == 1
    if neg_was_1d:
        policy_neg, ref_neg = policy_neg.unsqueeze(-1), ref_neg.unsqueeze(-1)

    chosen_logratio = policy_logprob(policy_pos, scale=scale, policy=policy)  # (B,)
    rejected_logratio = policy_logprob(policy_neg, scale=scale, policy=policy)  # (B, k)
    if not reference_free:
        chosen_logratio = chosen_logratio - policy_logprob(ref_pos, scale=scale, policy=policy)
        rejected_logratio = rejected_logratio - policy_logprob(ref_neg, scale=scale, policy=policy)
    h = chosen_logratio.unsqueeze(-1) - rejected_logratio  # (B, k)

    if loss_type == "sigmoid":
        # DPO, Rafailov et al. 2023 (arXiv:2305.18290), eq. 7; label smoothing is cDPO
        # (Mitchell 2023, "A note on DPO with noisy preferences").
        pair_losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        # IPO, Azar et al. 2023 (arXiv:2310.12036), eq. 17: regress h onto 1/(2 beta).
        pair_losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        # SLiC's calibration hinge (Zhao et al. 2023, arXiv:2305.10425) on the DPO reward margin, as
        # RSO (Liu et al. 2023, arXiv:2309.06657) and TRL's loss_type="hinge" (m = 1) use it.
        pair_losses = F.relu(hinge_margin - beta * h)
    else:
        raise ValueError(f"Unknown loss_type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")

    losses = pair_losses.mean(dim=-1)
    chosen_rewards = beta * chosen_logratio.detach()
    rejected_rewards = beta * rejected_logratio.detach()
    if neg_was_1d:
        rejected_rewards = rejected_rewards.squeeze(-1)
    return losses, chosen_rewards, rejected_rewards


#: the BibTeX of DPO (the model card cites it for dpo and sdpo)
DPO_CITATION = """
@inproceedings{rafailov2023direct,
    title={Direct Preference Optimization: Your Language Model is Secretly a Reward Model},
    author={Rafael Rafailov and Archit Sharma and Eric Mitchell and Stefano Ermon and Christopher D. Manning and Chelsea Finn},
    booktitle={Advances in Neural Information Processing Systems},
    year={2023},
    url={https://arxiv.org/abs/2305.18290},
}
"""


class DPOLoss(nn.Module):
    def __init__(
        self,
        model,
        beta: float | None = None,
        scale: float | None = None,
        policy: str = "linear",
        loss_type: str = "sigmoid",
        label_smoothing: float = 0.0,
        reference_free: bool = False,
        reference=None,
        hinge_margin: float = 1.0,
    ) -> None:
        """
        Direct Preference Optimization for a dual encoder: the positive passage is the preferred
        answer, each hard negative a rejected one, and a frozen reference encoder supplies the
        baseline scores. The loss raises the policy's log-probability ratio to the reference on the
        positive relative to the negatives; ``beta`` bounds how far it may move from the reference.

        Args:
            model: the SentenceTransformer being trained (the policy).
            beta: DPO's beta (> 0). Larger beta = sharper preference, stronger tie to the reference.
                Default by policy (:data:`POLICY_DEFAULTS`): 1 for "linear", 10 for "sigmoid".
            scale: the policy's scale ``a`` in ``log pi = log sigma(a * s)`` or ``a * s`` (> 0).
                Default by policy: 20 for "linear", 10 for "sigmoid".
            policy: "linear" (``a * s``, the log of a softmax over candidates) or "sigmoid"
                (``log sigma(a * s)``). With "sigmoid" a confident positive saturates and nearly all
                gradient pushes hard negatives away.
            loss_type: "sigmoid" (DPO / cDPO), "ipo" or "hinge".
            label_smoothing: cDPO's epsilon in [0, 0.5).
            reference_free: ignore the reference (pairwise logistic loss on the policy alone).
            reference: an :class:`~dpo_retrieval.training.reference.OnlineReference` that scores each batch
                with a frozen encoder. Leave ``None`` when the reference scores come precomputed
                in the dataset's ``label`` column (:func:`~dpo_retrieval.training.reference.add_reference_scores`).
            hinge_margin: the margin ``m`` of ``loss_type="hinge"`` (> 0).

        Scores are the model's own similarity (``similarity_fn_name``: cosine or dot; others raise
        :class:`~dpo_retrieval.errors.UserInputError`), computed in float32 with autocast off.

        Inputs:
            +--------------------------------------------------+---------------------------------------------+
            | Texts                                            | Labels                                      |
            +==================================================+=============================================+
            | (anchor, positive, negative_1, ..., negative_k)  | reference scores (B, 1+k) =                 |
            |                                                  | [ref_pos, ref_neg_1, ..., ref_neg_k],       |
            |                                                  | or none with an online reference            |
            +--------------------------------------------------+---------------------------------------------+

        Metrics (averaged over the logging interval, logged by
        :class:`~dpo_retrieval.training.trainer.PreferenceTrainer` as TRL does): ``rewards/chosen``,
        ``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies``.

        Relations:
            - :class:`sentence_transformers.losses.MultipleNegativesRankingLoss` is the contrastive
              baseline: softmax over the positive, in-batch and hard negatives, no reference. DPO uses
              only each query's own candidates and anchors the scores to the reference.
            - With ``reference_free=True``, ``policy="linear"`` and one negative, the loss is a
              pairwise logistic (RankNet-style) loss on ``beta * scale * (s+ - s-)``.

        Example:
            ::

                from datasets import Dataset
                from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
                from dpo_retrieval import DPOLoss
                from dpo_retrieval.training.reference import add_reference_scores

                model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
                train = Dataset.from_dict({
                    "anchor": ["what causes rain?"],
                    "positive": ["Rain forms when water vapour condenses."],
                    "negative_1": ["The rain in Spain stays mainly in the plain."],
                })
                train, _ = add_reference_scores(train, model)   # adds the "label" column
                trainer = SentenceTransformerTrainer(model=model, train_dataset=train, loss=DPOLoss(model))
                trainer.train()
        """
        super().__init__()
        if policy not in POLICIES:
            raise ValueError(f"Unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"Unknown loss_type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
        beta, scale = policy_defaults(policy, beta, scale)
        if not beta > 0 or not scale > 0:
            raise ValueError(f"beta and scale must be > 0, got beta={beta}, scale={scale}")
        if not 0 < hinge_margin < float("inf"):
            raise ValueError(f"hinge_margin must be a finite number > 0, got {hinge_margin}")
        self.model = model
        self.similarity = model_similarity(model)
        self.beta = beta
        self.scale = scale
        self.policy = policy
        self.loss_type = loss_type
        self.label_smoothing = label_smoothing
        self.reference_free = reference_free
        self.hinge_margin = hinge_margin
        # A plain object, not an nn.Module: the trainer must not train, save or move the frozen reference.
        self.reference = reference
        ref_similarity = getattr(reference, "similarity", self.similarity)
        if ref_similarity != self.similarity:
            logger.warning("the reference scores with %s similarity, the policy with %s", ref_similarity,
                           self.similarity)
        self._metric_sums: dict[str, float] = {}
        self._metric_count = 0

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> Tensor:
        from sentence_transformers.base.losses.merged_forward import embed_columns

        sentence_features = list(sentence_features)
        if self.reference is not None and not self.reference_free:
            labels = self.reference.score(sentence_features)  # before the policy writes into the dicts
        embeddings = embed_columns(self.model, sentence_features)
        return self.compute_loss_from_embeddings(embeddings, labels)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None) -> Tensor:
        losses, chosen, rejected = self.dpo_terms(embeddings, labels)
        self._record(chosen, rejected)
        return losses.mean()

    def dpo_terms(self, embeddings: list[Tensor], labels: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """:func:`dpo_loss` of a batch: ``(losses (B,), chosen_rewards, rejected_rewards)``."""
        if len(embeddings) < 3:
            raise ValueError(f"{type(self).__name__} needs (anchor, positive, negative_1..k) columns, "
                             f"got {len(embeddings)}")
        scores = candidate_scores(embeddings[0], embeddings[1:], self.similarity)  # (B, 1+k), float32
        if self.reference_free:
            ref = torch.zeros_like(scores)
        elif labels is None or labels.dim() != 2 or labels.shape != scores.shape:
            shape = None if labels is None else tuple(labels.shape)
            raise ValueError(
                f"DPOLoss needs reference scores of shape {tuple(scores.shape)} in the 'label' column, got {shape}: "
                "add them with dpo_retrieval.training.reference.add_reference_scores or pass reference=OnlineReference(...)"
            )
        else:
            ref = labels.to(scores.device, torch.float32)
        return dpo_loss(
            scores[:, 0], scores[:, 1:], ref[:, 0], ref[:, 1:],
            beta=self.beta, scale=self.scale, policy=self.policy, loss_type=self.loss_type,
            label_smoothing=self.label_smoothing, reference_free=self.reference_free, hinge_margin=self.hinge_margin,
        )

    def _record(self, chosen: Tensor, rejected: Tensor, **extra: float) -> None:
        chosen = chosen.float().unsqueeze(-1)
        rejected = rejected.float()
        batch = {
            "rewards/chosen": chosen.mean().item(),
            "rewards/rejected": rejected.mean().item(),
            "rewards/margins": (chosen - rejected).mean().item(),
            "rewards/accuracies": (chosen > rejected).float().mean().item(),
            **extra,
        }
        for key, value in batch.items():
            self._metric_sums[key] = self._metric_sums.get(key, 0.0) + value
        self._metric_count += 1

    def pop_metrics(self) -> dict[str, float]:
        """Mean of each reward metric since the last call (for the trainer's log), then reset."""
        if not self._metric_count:
            return {}
        out = {k: v / self._metric_count for k, v in self._metric_sums.items()}
        self._metric_sums, self._metric_count = {}, 0
        return out

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "beta": self.beta,
            "scale": self.scale,
            "policy": self.policy,
            "loss_type": self.loss_type,
            "label_smoothing": self.label_smoothing,
            "reference_free": self.reference_free,
            **({"hinge_margin": self.hinge_margin} if self.loss_type == "hinge" else {}),
            "similarity": self.similarity,
            "reference": "online" if self.reference is not None else "precomputed",
        }

    @property
    def citation(self) -> str:
        return DPO_CITATION
