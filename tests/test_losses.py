"""dpo_loss against an independent scalar computation, and DPOLoss's behaviour on a real (tiny) encoder."""

from __future__ import annotations

import math

import pytest
import torch

from dpo_retrieval.losses import DPOLoss, dpo_loss


def _logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _reference_loss(pp, pn, rp, rn, *, beta, scale, policy, loss_type, eps, ref_free):
    """Plain-Python DPO over one example with a list of negatives (written from the paper, not the code)."""
    lp = (lambda s: _logsig(scale * s)) if policy == "sigmoid" else (lambda s: scale * s)
    pair_losses, rejected = [], []
    chosen = lp(pp) - (0.0 if ref_free else lp(rp))
    for n, r in zip(pn, rn):
        rej = lp(n) - (0.0 if ref_free else lp(r))
        h = chosen - rej
        if loss_type == "sigmoid":
            pair_losses.append(-(1 - eps) * _logsig(beta * h) - eps * _logsig(-beta * h))
        else:
            pair_losses.append((h - 1 / (2 * beta)) ** 2)
        rejected.append(beta * rej)
    return sum(pair_losses) / len(pair_losses), beta * chosen, rejected


CASES = [
    dict(policy="sigmoid", loss_type="sigmoid", eps=0.0, ref_free=False, beta=10.0, scale=10.0),
    dict(policy="linear", loss_type="sigmoid", eps=0.0, ref_free=False, beta=1.0, scale=20.0),
    dict(policy="sigmoid", loss_type="sigmoid", eps=0.2, ref_free=False, beta=2.0, scale=5.0),   # cDPO
    dict(policy="linear", loss_type="ipo", eps=0.0, ref_free=False, beta=0.5, scale=20.0),       # IPO
    dict(policy="sigmoid", loss_type="ipo", eps=0.0, ref_free=False, beta=0.1, scale=10.0),
    dict(policy="linear", loss_type="sigmoid", eps=0.0, ref_free=True, beta=1.0, scale=20.0),    # reference-free
    dict(policy="sigmoid", loss_type="sigmoid", eps=0.1, ref_free=True, beta=3.0, scale=10.0),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['policy']}-{c['loss_type']}-eps{c['eps']}-free{c['ref_free']}")
@pytest.mark.parametrize("k", [1, 3])
def test_dpo_loss_matches_independent_computation(case, k):
    g = torch.Generator().manual_seed(k)
    B = 5
    pp, rp = torch.rand(B, generator=g) * 2 - 1, torch.rand(B, generator=g) * 2 - 1
    pn, rn = torch.rand(B, k, generator=g) * 2 - 1, torch.rand(B, k, generator=g) * 2 - 1
    if k == 1:  # the (B,) form of the negatives
        pn, rn = pn[:, 0], rn[:, 0]
    losses, chosen, rejected = dpo_loss(
        pp, pn, rp, rn, beta=case["beta"], scale=case["scale"], policy=case["policy"],
        loss_type=case["loss_type"], label_smoothing=case["eps"], reference_free=case["ref_free"])
    assert losses.shape == (B,) and chosen.shape == (B,) and rejected.shape == pn.shape
    for i in range(B):
        negs = [pn[i].item()] if k == 1 else pn[i].tolist()
        refs = [rn[i].item()] if k == 1 else rn[i].tolist()
        want_loss, want_chosen, want_rejected = _reference_loss(
            pp[i].item(), negs, rp[i].item(), refs, beta=case["beta"], scale=case["scale"], policy=case["policy"],
            loss_type=case["loss_type"], eps=case["eps"], ref_free=case["ref_free"])
        assert losses[i].item() == pytest.approx(want_loss, rel=1e-5, abs=1e-6)
        assert chosen[i].item() == pytest.approx(want_chosen, rel=1e-5, abs=1e-6)
        got_rej = [rejected[i].item()] if k == 1 else rejected[i].tolist()
        assert got_rej == pytest.approx(want_rejected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("policy", ["sigmoid", "linear"])
def test_loss_is_log2_when_policy_equals_reference(policy):
    s_pos, s_neg = torch.tensor([0.9, 0.1, -0.3]), torch.tensor([[0.5, 0.2], [0.0, 0.8], [-0.9, 0.3]])
    losses, chosen, rejected = dpo_loss(s_pos, s_neg, s_pos.clone(), s_neg.clone(), beta=5.0, scale=10.0, policy=policy)
    assert torch.allclose(losses, torch.full((3,), math.log(2.0)))
    assert torch.all(chosen == 0) and torch.all(rejected == 0)


@pytest.mark.parametrize("policy", ["sigmoid", "linear"])
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_gradient_raises_positive_and_lowers_negative(policy, loss_type):
    pos = torch.tensor([0.2, -0.1], requires_grad=True)
    neg = torch.tensor([[0.3], [0.0]], requires_grad=True)
    losses, _, _ = dpo_loss(pos, neg, pos.detach().clone(), neg.detach().clone(), beta=1.0, scale=5.0,
                            policy=policy, loss_type=loss_type)
    losses.sum().backward()
    assert torch.all(pos.grad < 0), "descending the loss must raise the positive score"
    assert torch.all(neg.grad > 0), "descending the loss must lower the negative score"


def test_rewards_are_detached_and_invalid_settings_raise():
    pos = torch.tensor([0.5], requires_grad=True)
    _, chosen, rejected = dpo_loss(pos, torch.tensor([0.1]), torch.tensor([0.4]), torch.tensor([0.2]), beta=1, scale=1)
    assert not chosen.requires_grad and not rejected.requires_grad
    args = (pos, torch.tensor([0.1]), torch.tensor([0.4]), torch.tensor([0.2]))
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(*args, beta=0.0, scale=1.0)
    with pytest.raises(ValueError, match="scale"):
        dpo_loss(*args, beta=1.0, scale=-1.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(*args, beta=1.0, scale=1.0, label_smoothing=0.5)
    with pytest.raises(ValueError, match="sigmoid, ipo"):
        dpo_loss(*args, beta=1.0, scale=1.0, loss_type="kto")
    with pytest.raises(ValueError, match="sigmoid, linear"):
        dpo_loss(*args, beta=1.0, scale=1.0, policy="softmax")


def _features(model, columns):
    return [model.tokenize(texts) for texts in columns]


def test_dpo_loss_module_on_tiny_encoder_logs_rewards_and_backpropagates(tiny_model):
    columns = [["what causes cancer", "does sleep increase risk"],
               ["mutation causes cancer cells", "sleep and heart disease risk"],
               ["the water fiber", "vitamin and infants"]]
    tiny_model.eval()
    with torch.no_grad():
        embs = [tiny_model.encode(c, convert_to_tensor=True) for c in columns]
    ref = torch.stack([(embs[0] * embs[1]).sum(-1), (embs[0] * embs[2]).sum(-1)], dim=1)
    loss_fn = DPOLoss(tiny_model, beta=2.0, scale=10.0, policy="sigmoid")
    loss = loss_fn(_features(tiny_model, columns), ref)
    assert loss.item() == pytest.approx(math.log(2.0), abs=1e-5)  # eval mode: policy == reference
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_model.parameters())
    metrics = loss_fn.pop_metrics()
    assert set(metrics) == {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"}
    assert loss_fn.pop_metrics() == {}
    assert loss_fn.get_config_dict()["policy"] == "sigmoid" and "Rafailov" in loss_fn.citation
    with pytest.raises(ValueError, match="reference scores"):
        loss_fn(_features(tiny_model, columns), None)
