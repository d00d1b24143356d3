"""dpo_loss against an independent scalar computation, and DPOLoss's behaviour on a real (tiny) encoder."""

from __future__ import annotations

import math

import pytest
import torch

from dpo_retrieval.losses import DPOLoss, dpo_loss


def _logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _reference_loss(pp, pn, rp, rn, *, beta, scale, policy, loss_type, eps, ref_free, margin=1.0):
    """Plain-Python DPO over one example with a list of negatives (written from the paper, not the code)."""
    lp = (lambda s: _logsig(scale * s)) if policy == "sigmoid" else (lambda s: scale * s)
    pair_losses, rejected = [], []
    chosen = lp(pp) - (0.0 if ref_free else lp(rp))
    for n, r in zip(pn, rn):
        rej = lp(n) - (0.0 if ref_free else lp(r))
        h = chosen - rej
        if loss_type == "sigmoid":
            pair_losses.append(-(1 - eps) * _logsig(beta * h) - eps * _logsig(-beta * h))
        elif loss_type == "ipo":
            pair_losses.append((h - 1 / (2 * beta)) ** 2)
        else:  # hinge on the reward margin beta*h
            pair_losses.append(max(0.0, margin - beta * h))
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
    dict(policy="linear", loss_type="hinge", eps=0.0, ref_free=False, beta=1.0, scale=20.0, margin=1.0),  # hinge
    dict(policy="sigmoid", loss_type="hinge", eps=0.0, ref_free=False, beta=10.0, scale=10.0, margin=0.3),
    dict(policy="linear", loss_type="hinge", eps=0.0, ref_free=True, beta=0.5, scale=20.0, margin=2.0),
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
        loss_type=case["loss_type"], label_smoothing=case["eps"], reference_free=case["ref_free"],
        hinge_margin=case.get("margin", 1.0))
    assert losses.shape == (B,) and chosen.shape == (B,) and rejected.shape == pn.shape
    for i in range(B):
        negs = [pn[i].item()] if k == 1 else pn[i].tolist()
        refs = [rn[i].item()] if k == 1 else rn[i].tolist()
        want_loss, want_chosen, want_rejected = _reference_loss(
            pp[i].item(), negs, rp[i].item(), refs, beta=case["beta"], scale=case["scale"], policy=case["policy"],
            loss_type=case["loss_type"], eps=case["eps"], ref_free=case["ref_free"], margin=case.get("margin", 1.0))
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
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
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
    with pytest.raises(ValueError, match="hinge_margin"):
        dpo_loss(*args, beta=1.0, scale=1.0, loss_type="hinge", hinge_margin=0.0)
    with pytest.raises(ValueError, match="sigmoid, ipo, hinge"):
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


class _Cosine:  # a stand-in model for DPOLoss on fixed embeddings
    similarity_fn_name = "cosine"


def _fixed_batch(B=16, k=3, d=64, seed=0):
    """Reference embeddings, policy embeddings a little away from them, fp32 reference labels."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    ref = [F.normalize(torch.randn(B, d, generator=g), dim=-1) for _ in range(1 + k)]
    pol = [F.normalize(r + 0.05 * torch.randn(B, d, generator=g) / d ** 0.5, dim=-1) for r in ref]
    labels = torch.stack([(ref[0] * r).sum(-1) for r in ref[1:]], dim=1)
    return pol, labels


@pytest.mark.parametrize("policy", ["linear", "sigmoid"])
def test_dpo_loss_is_computed_in_float32_under_bf16_autocast(policy):
    pol, labels = _fixed_batch()
    bf16 = [p.to(torch.bfloat16) for p in pol]
    loss_fn = DPOLoss(_Cosine(), beta=1.0, scale=20.0, policy=policy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = loss_fn.compute_loss_from_embeddings(bf16, labels.clone())
    amp_metrics = loss_fn.pop_metrics()
    fp32 = loss_fn.compute_loss_from_embeddings([b.float() for b in bf16], labels.clone())
    fp32_metrics = loss_fn.pop_metrics()
    assert amp.dtype == torch.float32
    assert amp.item() == pytest.approx(fp32.item(), abs=1e-5)
    assert amp_metrics == pytest.approx(fp32_metrics, abs=1e-5)


def test_dpo_forward_under_bf16_autocast_matches_fp32(tiny_model):
    """The whole forward (encoder included) under CPU bf16 autocast: a float32 loss within 1e-3 of fp32."""
    columns = [["what causes cancer", "does sleep increase risk", "how does insulin work"],
               ["mutation causes cancer cells", "sleep and heart disease risk", "insulin signal pathway"],
               ["the water fiber", "vitamin and infants", "white matter in the brain"]]
    tiny_model.eval()
    with torch.no_grad():
        embs = [tiny_model.encode(c, convert_to_tensor=True) for c in columns]
        labels = torch.stack([(embs[0] * e).sum(-1) for e in embs[1:]], dim=1)
        for p in tiny_model.parameters():  # move the policy away from the reference
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    loss_fn = DPOLoss(tiny_model, beta=1.0, scale=20.0, policy="linear")
    with torch.no_grad():
        fp32 = loss_fn(_features(tiny_model, columns), labels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            amp = loss_fn(_features(tiny_model, columns), labels)
    assert amp.dtype == torch.float32
    assert abs(fp32.item() - math.log(2)) > 1e-3
    assert amp.item() == pytest.approx(fp32.item(), abs=1e-3)


def test_online_reference_returns_float32_scores_under_bf16_autocast(tiny_model):
    from dpo_retrieval.training.reference import OnlineReference

    columns = [["what causes cancer", "does sleep increase risk"],
               ["mutation causes cancer cells", "sleep and heart disease risk"],
               ["the water fiber", "vitamin and infants"]]
    ref = OnlineReference.frozen_copy(tiny_model)
    feats = _features(tiny_model, columns)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ref.score(feats)
        from sentence_transformers.base.losses.merged_forward import embed_columns

        with torch.no_grad():
            embs = embed_columns(ref.model, _features(tiny_model, columns))
    assert got.dtype == torch.float32
    want = torch.stack([(embs[0].float() * e.float()).sum(-1) for e in embs[1:]], dim=1)  # normalized: cos = dot
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_reward_metrics_are_exactly_zero_when_policy_equals_reference(tiny_model):
    """h = 0: rewards/chosen, /rejected, /margins and /accuracies (chosen > rejected) are exactly 0."""
    from dpo_retrieval.losses import candidate_scores

    pol, _ = _fixed_batch(k=2)
    loss_fn = DPOLoss(_Cosine(), beta=3.0, scale=20.0, policy="sigmoid")
    labels = candidate_scores(pol[0], pol[1:], "cosine")  # the reference scores the same embeddings
    loss = loss_fn.compute_loss_from_embeddings(pol, labels)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    metrics = loss_fn.pop_metrics()
    assert metrics == {"rewards/chosen": 0.0, "rewards/rejected": 0.0, "rewards/margins": 0.0,
                       "rewards/accuracies": 0.0}
    # the same through forward with an online reference equal to the (eval-mode) policy
    from dpo_retrieval.training.reference import OnlineReference

    tiny_model.eval()
    columns = [["what causes cancer", "how does insulin work"], ["mutation causes cancer cells", "insulin signal"],
               ["the water fiber", "vitamin and infants"], ["birth weight", "the rna of mice"]]
    online = DPOLoss(tiny_model, beta=3.0, scale=20.0, reference=OnlineReference.frozen_copy(tiny_model))
    online(_features(tiny_model, columns), None)
    assert set(online.pop_metrics().values()) == {0.0}


def test_dpo_loss_with_two_negatives_matches_the_independent_formula():
    """k = 2 through DPOLoss on un-normalized embeddings: s is the cosine, h per negative, loss averaged."""
    g = torch.Generator().manual_seed(3)
    embs = [torch.randn(4, 8, generator=g) * 3 for _ in range(4)]  # anchor, positive, negative_1, negative_2
    labels = torch.rand(4, 3, generator=g) * 2 - 1
    beta, scale = 2.0, 10.0
    loss_fn = DPOLoss(_Cosine(), beta=beta, scale=scale, policy="sigmoid")
    got = loss_fn.compute_loss_from_embeddings(embs, labels)
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))  # noqa: E731
    want = []
    for i in range(4):
        s = [cos(embs[0][i], embs[j][i]) for j in (1, 2, 3)]  # positive, negative_1, negative_2
        loss, _, _ = _reference_loss(s[0], s[1:], labels[i, 0].item(), labels[i, 1:].tolist(), beta=beta,
                                     scale=scale, policy="sigmoid", loss_type="sigmoid", eps=0.0, ref_free=False)
        want.append(loss)
    assert got.item() == pytest.approx(sum(want) / 4, rel=1e-5)


def test_bf16_is_allowed_on_cpu():
    from dpo_retrieval.models import resolve_precision

    assert resolve_precision("bf16", "cpu") == "bf16"


@pytest.mark.parametrize("reference", ["precomputed", "online"])
def test_a_bf16_training_step_matches_the_fp32_step(tmp_path, tiny_model_path, reference):
    """CPU bf16 autocast: the first step's loss within 1e-3 of the fp32 step on the same batch."""
    import json

    from dpo_retrieval.training import DPOArgs, TrainArgs, train, training_arguments

    triplets = tmp_path / "t.jsonl"
    triplets.write_text("".join(json.dumps({"query": q, "positive": p, "negative": n}) + "\n" for q, p, n in [
        ("what causes cancer", "mutation causes cancer cells", "the water fiber"),
        ("does sleep increase risk", "sleep and heart disease risk", "vitamin and infants"),
        ("how does insulin work", "insulin signal pathway", "white matter in the brain")]))
    losses = {}
    for precision in ("fp32", "bf16"):
        out = train(TrainArgs(triplets=str(triplets), model=tiny_model_path, precision=precision, max_seq_length=32),
                    training_arguments(str(tmp_path / precision), max_steps=1, logging_steps=1,
                                       per_device_train_batch_size=3, disable_tqdm=True),
                    DPOArgs(dropout="off", reference=reference))
        log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        losses[precision] = [r for r in log if "loss" in r][0]["loss"]
    assert losses["bf16"] == pytest.approx(losses["fp32"], abs=1e-3), losses


@pytest.mark.parametrize("policy", ["linear", "sigmoid"])
def test_dpo_loss_and_train_config_share_the_policy_defaults(tiny_model, policy):
    from dpo_retrieval.losses import POLICY_DEFAULTS
    from dpo_retrieval.training import DPOArgs

    loss = DPOLoss(tiny_model, policy=policy)
    cfg = DPOArgs(policy=policy).resolved()
    expected = (POLICY_DEFAULTS[policy]["beta"], POLICY_DEFAULTS[policy]["scale"])
    assert (loss.beta, loss.scale) == (cfg.beta, cfg.scale) == expected
    assert (DPOLoss(tiny_model, beta=3.0, policy=policy).beta, DPOLoss(tiny_model, beta=3.0, policy=policy).scale) \
        == (3.0, expected[1])
