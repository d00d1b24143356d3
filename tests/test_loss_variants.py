"""The losses beside DPO (issue 11): in-batch scores, MNRL, sdpo, dpo+mnrl, the hinge and cmnrl, each
against an independent formula (numpy loops) or sentence-transformers' own loss, and their options."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dpo_retrieval.errors import UserInputError
from dpo_retrieval.losses import (DPOLoss, DPOMNRLLoss, SDPOLoss, dpo_loss, dpo_mnrl_loss, in_batch_scores, mnrl_loss,
                                  sdpo_loss)


class _Cosine:  # a stand-in model for the loss modules on fixed embeddings
    similarity_fn_name = "cosine"


def _embs(B=5, k=2, d=8, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, d, generator=g) * scale for _ in range(2 + k)]  # anchor, positive, negative_1..k


def _np_scores(q, cands, similarity):
    """(B, (1+k)B) with plain loops: columns are all positives, then all negative_1, ..."""
    q = q.numpy().astype(np.float64)
    passages = [c.numpy().astype(np.float64)[i] for c in cands for i in range(len(q))]
    out = np.zeros((len(q), len(passages)))
    for i in range(len(q)):
        for j, p in enumerate(passages):
            s = float(q[i] @ p)
            out[i, j] = s / (np.linalg.norm(q[i]) * np.linalg.norm(p)) if similarity == "cosine" else s
    return out


def _np_ce(logits_row, target):
    m = max(logits_row)
    return -(logits_row[target] - (m + math.log(sum(math.exp(x - m) for x in logits_row))))


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_in_batch_scores_match_loops(similarity):
    e = _embs()
    got = in_batch_scores(e[0], e[1:], similarity)
    assert got.dtype == torch.float32 and got.shape == (5, 15)
    np.testing.assert_allclose(got.numpy(), _np_scores(e[0], e[1:], similarity), rtol=1e-5, atol=1e-5)


def test_mnrl_loss_matches_loops_and_sentence_transformers():
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.util import cos_sim

    e = _embs()
    s = _np_scores(e[0], e[1:], "cosine")
    got = mnrl_loss(in_batch_scores(e[0], e[1:], "cosine"), scale=20.0)
    want = [_np_ce(list(20.0 * s[i]), i) for i in range(5)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
    st = MultipleNegativesRankingLoss(_Cosine(), scale=20.0, similarity_fct=cos_sim).compute_loss_from_embeddings(e, None)
    assert got.mean().item() == pytest.approx(st.item(), rel=1e-5)


@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0])
def test_sdpo_loss_matches_loops(gamma):
    pol, ref = _embs(seed=1), _embs(seed=2)
    s, r = _np_scores(pol[0], pol[1:], "cosine"), _np_scores(ref[0], ref[1:], "dot")
    got = sdpo_loss(torch.tensor(s, dtype=torch.float32), torch.tensor(r, dtype=torch.float32),
                    beta=2.0, scale=5.0, gamma=gamma)
    want = [_np_ce([2.0 * 5.0 * (s[i, j] - gamma * r[i, j]) for j in range(s.shape[1])], i) for i in range(5)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("beta,scale", [(1.0, 20.0), (2.0, 5.0)])
def test_sdpo_with_gamma_0_is_mnrl_at_temperature_beta_times_scale(beta, scale):
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    e = _embs(seed=3)
    got = SDPOLoss(_Cosine(), beta=beta, scale=scale, gamma=0.0).compute_loss_from_embeddings(e, None)
    want = MultipleNegativesRankingLoss(_Cosine(), scale=beta * scale).compute_loss_from_embeddings(e, None)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_sdpo_with_gamma_1_is_uniform_when_the_policy_is_the_reference():
    """gamma 1 and s == s_ref: every logit is 0, the loss log N over N = (1+k)·B passages."""
    e = _embs(B=4, k=2)
    labels = torch.stack(e, dim=1)  # (B, 2+k, d): the reference embeddings equal the policy's
    loss_fn = SDPOLoss(_Cosine(), gamma=1.0)
    assert loss_fn.compute_loss_from_embeddings(e, labels).item() == pytest.approx(math.log(12), abs=1e-5)
    assert set(loss_fn.pop_metrics()) == {"sdpo/top1"}
    with pytest.raises(ValueError, match="reference embeddings"):
        loss_fn.compute_loss_from_embeddings(e, None)
    with pytest.raises(ValueError, match="gamma"):
        SDPOLoss(_Cosine(), gamma=1.5)


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_dpo_mnrl_is_the_weighted_sum(weight):
    """lambda 1 is sentence-transformers' MNRL (the contrastive baseline), 0 is DPOLoss, between the mix."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.util import cos_sim

    e = _embs(seed=4)
    labels = torch.rand(5, 3, generator=torch.Generator().manual_seed(5)) * 2 - 1
    opts = dict(beta=2.0, scale=10.0, policy="sigmoid")
    got = DPOMNRLLoss(_Cosine(), mnrl_weight=weight, **opts).compute_loss_from_embeddings(e, labels).item()
    mnrl = MultipleNegativesRankingLoss(_Cosine(), scale=20.0, similarity_fct=cos_sim).compute_loss_from_embeddings(
        e, None).item()
    dpo = DPOLoss(_Cosine(), **opts).compute_loss_from_embeddings(e, labels).item()
    assert got == pytest.approx(weight * mnrl + (1 - weight) * dpo, rel=1e-5)
    torch.testing.assert_close(dpo_mnrl_loss(torch.tensor([2.0]), torch.tensor([4.0]), mnrl_weight=0.25),
                               torch.tensor([3.5]))
    with pytest.raises(ValueError, match="mnrl_weight"):
        DPOMNRLLoss(_Cosine(), mnrl_weight=1.5)


def test_dpo_mnrl_logs_both_terms():
    e = _embs(seed=6)
    loss_fn = DPOMNRLLoss(_Cosine(), mnrl_weight=0.5)
    loss_fn.compute_loss_from_embeddings(e, torch.zeros(5, 3))
    assert {"loss/mnrl", "loss/dpo", "rewards/margins"} <= set(loss_fn.pop_metrics())
    assert loss_fn.get_config_dict()["mnrl_weight"] == 0.5


def test_hinge_is_zero_past_the_margin_and_linear_below():
    """max(0, m - beta*h): no loss and no gradient once beta*h >= m."""
    margin, beta, scale = 0.5, 2.0, 10.0
    pos = torch.tensor([0.30, 0.30, 0.30], requires_grad=True)
    neg = torch.tensor([0.0, 0.2, 0.29], requires_grad=True)  # beta*h = 6, 2, 0.2 (linear policy, ref 0)
    zeros = torch.zeros(3)
    losses, _, _ = dpo_loss(pos, neg, zeros, zeros, beta=beta, scale=scale, policy="linear", loss_type="hinge",
                            hinge_margin=margin)
    bh = beta * scale * (pos.detach() - neg.detach())
    torch.testing.assert_close(losses.detach(), torch.clamp(margin - bh, min=0.0))
    assert losses[0].item() == 0.0 and losses[1].item() == 0.0 and losses[2].item() == pytest.approx(0.3, abs=1e-5)
    losses.sum().backward()
    assert pos.grad[0] == 0 and pos.grad[1] == 0 and pos.grad[2] < 0


def test_cmnrl_matches_mnrl_on_the_same_batch(tiny_model):
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from dpo_retrieval.losses import cached_mnrl

    columns = [["what causes cancer", "does sleep increase risk", "how does insulin work"],
               ["mutation causes cancer cells", "sleep and heart disease risk", "insulin signal pathway"],
               ["the water fiber", "vitamin and infants", "white matter in the brain"]]
    tiny_model.eval()
    cached = cached_mnrl(tiny_model, mini_batch_size=2)
    got = cached([tiny_model.tokenize(c) for c in columns], None)
    want = MultipleNegativesRankingLoss(tiny_model, scale=20.0)([tiny_model.tokenize(c) for c in columns], None)
    assert got.item() == pytest.approx(want.item(), rel=1e-4)
    assert cached.mini_batch_size == 2 and cached.scale == 20.0
    with pytest.raises(ValueError, match="mini_batch_size"):
        cached_mnrl(tiny_model, mini_batch_size=0)


def test_add_reference_embeddings_agrees_with_reference_scores(tiny_model):
    from datasets import Dataset

    from dpo_retrieval.losses import candidate_scores
    from dpo_retrieval.training.reference import add_reference_embeddings, add_reference_scores

    ds = Dataset.from_dict({"anchor": ["what causes cancer", "how does insulin work", "what causes cancer"],
                            "positive": ["mutation causes cancer cells", "insulin signal pathway", "cancer cells"],
                            "negative_1": ["the water fiber", "white matter in the brain", "the water fiber"]})
    with_embs, stats = add_reference_embeddings(ds, tiny_model, show_progress_bar=False)
    with_scores, _ = add_reference_scores(ds, tiny_model, show_progress_bar=False)
    embs = torch.tensor(with_embs["label"])  # as the data collator builds the labels
    assert embs.shape == (3, 3, 32) and embs.dtype == torch.float32
    assert stats["texts_encoded"] == 2 + 5  # distinct queries + distinct passages
    got = candidate_scores(embs[:, 0], embs[:, 1:], "cosine")
    torch.testing.assert_close(got, torch.tensor(with_scores["label"]), atol=1e-6, rtol=1e-6)


def test_sdpo_online_reference_equals_precomputed(tiny_model):
    from dpo_retrieval.training.reference import OnlineReference

    columns = [["what causes cancer", "how does insulin work"], ["mutation causes cancer cells", "insulin signal"],
               ["the water fiber", "vitamin and infants"]]
    tiny_model.eval()
    with torch.no_grad():
        labels = torch.stack([tiny_model.encode(c, convert_to_tensor=True) for c in columns], dim=1)
        for p in tiny_model.parameters():  # move the policy away from the reference
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    reference = OnlineReference.frozen_copy(tiny_model)
    with torch.no_grad():
        for p in reference.model.parameters():
            p.sub_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        online = SDPOLoss(tiny_model, gamma=0.7, reference=reference)([tiny_model.tokenize(c) for c in columns], None)
        pre = SDPOLoss(tiny_model, gamma=0.7)([tiny_model.tokenize(c) for c in columns], labels)
    assert online.item() == pytest.approx(pre.item(), abs=1e-4)


@pytest.mark.parametrize("field,value,match", [
    ("hinge_margin", 0.0, "hinge_margin: must be"), ("mnrl_weight", 1.5, "mnrl_weight: must be in"),
    ("sdpo_gamma", -0.1, "sdpo_gamma: must be in"), ("mini_batch_size", 0, "mini_batch_size: must be"),
    ("loss_type", "kto", "loss_type: unknown"), ("mnrl_scale", 0.0, "mnrl_scale: must be"),
    ("mnrl_scale", -1.0, "mnrl_scale: must be"), ("mnrl_scale", float("nan"), "mnrl_scale: must be"),
    ("mnrl_scale", float("inf"), "mnrl_scale: must be"),
])
def test_loss_options_are_checked(field, value, match):
    from dpo_retrieval.training import DPOArgs

    with pytest.raises(UserInputError, match=match):
        DPOArgs(**{field: value}).resolved()


def test_build_loss_builds_every_loss(tiny_model):
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

    from dpo_retrieval.training import LOSSES, DPOArgs, TrainArgs, build_loss

    assert {"cmnrl", "dpo+mnrl", "sdpo"} <= set(LOSSES)
    args = DPOArgs(mnrl_weight=0.2, sdpo_gamma=0.4, mini_batch_size=8, loss_type="hinge", hinge_margin=0.5)
    assert isinstance(build_loss("cmnrl", tiny_model, args), CachedMultipleNegativesRankingLoss)
    assert build_loss("cmnrl", tiny_model, args).mini_batch_size == 8
    mix = build_loss("dpo+mnrl", tiny_model, args)
    assert isinstance(mix, DPOMNRLLoss) and mix.mnrl_weight == 0.2 and mix.hinge_margin == 0.5
    assert build_loss("sdpo", tiny_model, args).gamma == 0.4
    assert build_loss("dpo", tiny_model, args).loss_type == "hinge"
    with pytest.raises(UserInputError, match="policy: sdpo"):
        build_loss("sdpo", tiny_model, DPOArgs(policy="sigmoid"))
    with pytest.raises(UserInputError, match="loss: unknown loss"):
        TrainArgs(triplets="x", loss="kto").check()


def test_mnrl_scale_reaches_the_contrastive_losses_only(tiny_model):
    from dpo_retrieval.training import DPOArgs, build_loss

    args = DPOArgs(mnrl_scale=7.5)
    assert build_loss("contrastive", tiny_model, args).scale == 7.5
    assert build_loss("cmnrl", tiny_model, args).scale == 7.5
    assert build_loss("dpo+mnrl", tiny_model, args).mnrl_scale == 7.5
    assert build_loss("dpr", tiny_model, args).scale == 1.0  # dot product, no temperature
    assert build_loss("contrastive", tiny_model, DPOArgs()).scale == 20.0  # the default
    assert build_loss("dpo", tiny_model, args).scale == build_loss("dpo", tiny_model, DPOArgs()).scale
    assert build_loss("sdpo", tiny_model, args).scale == build_loss("sdpo", tiny_model, DPOArgs()).scale


def test_dpo_mnrl_term_uses_mnrl_scale():
    e = _embs(seed=3)
    mix = DPOMNRLLoss(_Cosine(), mnrl_weight=1.0, mnrl_scale=5.0, reference_free=True)
    want = mnrl_loss(in_batch_scores(e[0], e[1:], "cosine"), scale=5.0).mean()
    assert mix.compute_loss_from_embeddings(e, None).item() == pytest.approx(want.item(), rel=1e-5)
    assert want.item() != pytest.approx(mnrl_loss(in_batch_scores(e[0], e[1:], "cosine"), scale=20.0).mean().item())
