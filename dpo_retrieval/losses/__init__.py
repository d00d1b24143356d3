"""The losses: the maths in pure functions, the trainer-facing modules beside them, one loss a module.

* :mod:`.scores`: query-passage scores (own candidates, in-batch) and :func:`mnrl_loss`;
* :mod:`.dpo`: :func:`dpo_loss` (sigmoid / cDPO, IPO, hinge) and :class:`DPOLoss`;
* :mod:`.dpo_mnrl`: ``λ·MNRL + (1 − λ)·DPO`` (:func:`dpo_mnrl_loss`, :class:`DPOMNRLLoss`);
* :mod:`.sdpo`: softmax DPO over the batch (:func:`sdpo_loss`, :class:`SDPOLoss`);
* :mod:`.cmnrl`: sentence-transformers' cached MNRL at the contrastive baseline's settings (:func:`cached_mnrl`).

The contrastive baselines themselves are sentence-transformers' ``MultipleNegativesRankingLoss``.
"""

from dpo_retrieval.losses.cmnrl import cached_mnrl
from dpo_retrieval.losses.dpo import (LOSS_TYPES, POLICIES, POLICY_DEFAULTS, DPOLoss, dpo_loss, policy_defaults,
                                      policy_logprob)
from dpo_retrieval.losses.dpo_mnrl import DPOMNRLLoss, dpo_mnrl_loss
from dpo_retrieval.losses.scores import (SIMILARITIES, candidate_scores, float32_math, in_batch_scores,
                                         mnrl_loss, model_similarity)
from dpo_retrieval.losses.sdpo import SDPOLoss, sdpo_loss

__all__ = [
    "LOSS_TYPES", "POLICIES", "POLICY_DEFAULTS", "SIMILARITIES", "DPOLoss", "DPOMNRLLoss", "SDPOLoss",
    "cached_mnrl", "candidate_scores", "dpo_loss", "dpo_mnrl_loss", "float32_math", "in_batch_scores",
    "mnrl_loss", "model_similarity", "policy_defaults", "policy_logprob", "sdpo_loss",
]
