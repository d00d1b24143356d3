"""The frozen reference: distinct texts encoded once, and precomputed == online on the same batch."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from datasets import Dataset

from dpo_retrieval.losses import DPOLoss
from dpo_retrieval.reference import OnlineReference, add_reference_scores

ROWS = {
    "anchor": ["what causes cancer", "what causes cancer", "does sleep increase risk", "how does insulin work"],
    "positive": ["mutation causes cancer cells", "gene expression in tumor growth", "sleep and heart disease risk",
                 "insulin signal pathway"],
    "negative_1": ["the water fiber", "sleep and heart disease risk", "vitamin and infants", "the water fiber"],
}


def test_precompute_encodes_each_distinct_text_once_and_scores_rows(tiny_model):
    ds = Dataset.from_dict(ROWS)
    out, stats = add_reference_scores(ds, tiny_model, precision="fp32", show_progress_bar=False)
    assert stats["rows"] == 4 and stats["texts"] == 12
    assert stats["texts_encoded"] == len(set(ROWS["anchor"])) + len(set(ROWS["positive"]) | set(ROWS["negative_1"]))
    labels = np.array(out["label"])
    assert labels.shape == (4, 2)
    q = tiny_model.encode(ROWS["anchor"])
    for j, col in enumerate(["positive", "negative_1"]):
        d = tiny_model.encode(ROWS[col])
        np.testing.assert_allclose(labels[:, j], (q * d).sum(-1), atol=1e-5)


def test_precomputed_and_online_reference_give_the_same_loss(tiny_model):
    reference = tiny_model
    policy = copy.deepcopy(tiny_model)
    with torch.no_grad():  # move the policy away from the reference so the loss is not just log 2
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    policy.eval()
    ds, _ = add_reference_scores(Dataset.from_dict(ROWS), reference, precision="fp32", show_progress_bar=False)
    columns = [ROWS["anchor"], ROWS["positive"], ROWS["negative_1"]]
    feats = lambda: [policy.tokenize(c) for c in columns]  # noqa: E731
    labels = torch.tensor(ds["label"])

    pre = DPOLoss(policy, beta=1.0, scale=20.0, policy="linear")(feats(), labels)
    online = DPOLoss(policy, beta=1.0, scale=20.0, policy="linear", reference=OnlineReference.frozen_copy(reference))
    on = online(feats(), None)
    assert pre.item() == pytest.approx(on.item(), abs=1e-5)
    assert abs(pre.item() - np.log(2)) > 1e-3
    # the online copy is frozen
    assert not any(p.requires_grad for p in online.reference.model.parameters())
