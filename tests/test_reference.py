"""The frozen reference: distinct texts encoded once, and precomputed == online on the same batch."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from datasets import Dataset

from dpo_retrieval.losses import DPOLoss
from dpo_retrieval.training.reference import OnlineReference, add_reference_scores

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


def test_reference_cache_reuses_embeddings_of_the_same_model_and_texts_only(tiny_model, tmp_path):
    """With cache_dir a second precompute from the same weights on the same texts reads the embeddings (no text
    encoded, the same labels, scores and embeddings alike); other weights or other texts encode again."""
    from dpo_retrieval.training.reference import add_reference_embeddings

    ds, cache = Dataset.from_dict(ROWS), tmp_path / "ref"
    first, s1 = add_reference_scores(ds, tiny_model, precision="fp32", show_progress_bar=False, cache_dir=cache)
    assert s1["texts_encoded"] == 3 + 6 and s1["texts_cached"] == 0 and len(list(cache.glob("*.npy"))) == 2
    again, s2 = add_reference_scores(ds, tiny_model, precision="fp32", show_progress_bar=False, cache_dir=cache)
    assert (s2["texts_encoded"], s2["texts_cached"]) == (0, 9)
    assert again["label"] == first["label"]
    emb, s3 = add_reference_embeddings(ds, tiny_model, precision="fp32", show_progress_bar=False, cache_dir=cache)
    plain, _ = add_reference_embeddings(ds, tiny_model, precision="fp32", show_progress_bar=False)
    assert s3["texts_encoded"] == 0 and np.allclose(np.array(emb["label"]), np.array(plain["label"]))
    other = copy.deepcopy(tiny_model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    moved, s4 = add_reference_scores(ds, other, precision="fp32", show_progress_bar=False, cache_dir=cache)
    assert s4["texts_encoded"] == 9 and not np.allclose(np.array(moved["label"]), np.array(first["label"]), atol=1e-3)
    fewer = Dataset.from_dict({k: v[:2] for k, v in ROWS.items()})
    _, s5 = add_reference_scores(fewer, tiny_model, precision="fp32", show_progress_bar=False, cache_dir=cache)
    assert s5["texts_encoded"] == 1 + 4  # other texts: encoded again
    flipped = Dataset.from_dict({k: v[::-1] for k, v in ROWS.items()})  # the same texts in another order
    back, s6 = add_reference_scores(flipped, tiny_model, precision="fp32", show_progress_bar=False, cache_dir=cache)
    assert s6["texts_cached"] == 0
    np.testing.assert_allclose(np.array(back["label"])[::-1], np.array(first["label"]), atol=1e-6)
    tiny_model.max_seq_length, length = 8, tiny_model.max_seq_length  # another max length
    try:
        _, s7 = add_reference_scores(ds, tiny_model, precision="fp32", show_progress_bar=False, cache_dir=cache)
    finally:
        tiny_model.max_seq_length = length
    assert s7["texts_cached"] == 0
    _, s8 = add_reference_scores(ds, tiny_model, precision="bf16", show_progress_bar=False, cache_dir=cache)
    assert s8["texts_cached"] == 0  # another precision
    for path in cache.glob("query-*.npy"):  # a damaged file is ignored and written again
        path.write_bytes(b"not an array")
    _, s9 = add_reference_scores(ds, tiny_model, precision="fp32", show_progress_bar=False, cache_dir=cache)
    assert (s9["texts_encoded"], s9["texts_cached"]) == (3, 6)


def test_precomputed_and_online_reference_give_the_same_loss(tiny_model):
    reference = tiny_model
    policy = copy.deepcopy(tiny_model)
    gen = torch.Generator().manual_seed(0)  # the same perturbation whatever ran before
    with torch.no_grad():  # move the policy away from the reference so the loss is not just log 2
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
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


ROWS_K2 = {
    "anchor": ["what causes cancer", "does sleep increase risk", "how does insulin work", "is diabetes a risk"],
    "positive": ["mutation causes cancer cells", "sleep and heart disease risk", "insulin signal pathway",
                 "diabetes and insulin risk in women"],
    "negative_1": ["the water fiber", "vitamin and infants", "white matter in the brain", "fiber and water"],
    "negative_2": ["birth weight of infants", "the rna of mice", "drug dose effects in patients", "the water fiber"],
}


def test_two_negatives_get_three_reference_scores_per_row(tiny_model):
    out, stats = add_reference_scores(Dataset.from_dict(ROWS_K2), tiny_model, precision="fp32",
                                      show_progress_bar=False)
    labels = np.array(out["label"])
    assert labels.shape == (4, 3) and stats["texts"] == 16
    q = tiny_model.encode_query(ROWS_K2["anchor"])
    for j, col in enumerate(["positive", "negative_1", "negative_2"]):
        want = np.diag(tiny_model.similarity(q, tiny_model.encode_document(ROWS_K2[col])).numpy())
        np.testing.assert_allclose(labels[:, j], want, atol=1e-5)


@pytest.mark.parametrize("reference", ["precomputed", "online"])
def test_trainer_runs_dpo_with_two_negatives(tmp_path, tiny_model_path, reference):
    import json

    from dpo_retrieval.training import DPOArgs, TrainArgs, train, training_arguments

    path = tmp_path / "k2.jsonl"
    path.write_text("".join(json.dumps(dict(zip(ROWS_K2, row))) + "\n" for row in zip(*ROWS_K2.values())))
    out = train(TrainArgs(triplets=str(path), model=tiny_model_path, precision="fp32", max_seq_length=32, loss="dpo"),
                training_arguments(str(tmp_path / "out"), max_steps=2, logging_steps=1, per_device_train_batch_size=2,
                                   disable_tqdm=True),
                DPOArgs(reference=reference))
    steps = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(np.isfinite(r["loss"]) and "rewards/margins" in r for r in steps)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 2
    if reference == "precomputed":
        assert summary["reference_precompute"]["texts"] == 16
