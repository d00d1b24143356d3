"""One similarity everywhere: DPO, the reference (precomputed and online) and mining's --margin score
with the model's own ``similarity_fn_name`` (cosine or dot), on a tiny BERT that does NOT normalize."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from datasets import Dataset

from dpo_retrieval.errors import UserInputError
from dpo_retrieval.losses import DPOLoss, candidate_scores
from dpo_retrieval.training.reference import OnlineReference, add_reference_scores

ROWS = {
    "anchor": ["what causes cancer", "does sleep increase risk", "how does insulin work"],
    "positive": ["mutation causes cancer cells", "sleep and heart disease risk", "insulin signal pathway"],
    "negative_1": ["the water fiber", "vitamin and infants", "white matter in the brain"],
    "negative_2": ["birth weight of infants", "the rna of mice", "fiber and water"],
}
COLUMNS = list(ROWS.values())


def unnormalized(tiny_model, similarity):
    """The tiny BERT as Transformer + Pooling only (no Normalize), with the given similarity."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(modules=[tiny_model[0], tiny_model[1]], similarity_fn_name=similarity, device="cpu")
    model.eval()
    return model


def _encode(model, columns=COLUMNS):
    with torch.no_grad():
        return [model.encode(c, convert_to_tensor=True) for c in columns]


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_the_tiny_model_without_normalize_really_is_unnormalized(tiny_model, similarity):
    q = _encode(unnormalized(tiny_model, similarity))[0]
    assert not torch.allclose(q.norm(dim=-1), torch.ones(len(q)), atol=1e-2)


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_candidate_scores_are_the_models_pairwise_similarity(tiny_model, similarity):
    model = unnormalized(tiny_model, similarity)
    q, *docs = _encode(model)
    got = candidate_scores(q, docs, DPOLoss(model).similarity)
    want = torch.stack([model.similarity_pairwise(q, d) for d in docs], dim=1)
    assert got.dtype == torch.float32 and got.shape == (3, 3)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_dpo_scores_with_the_models_similarity(tiny_model, similarity):
    """Reference labels = model.similarity_pairwise of the same (eval-mode) embeddings, so DPO sees
    policy == reference: loss log 2 and zero rewards, only if DPO scores with that same similarity."""
    model = unnormalized(tiny_model, similarity)
    q, *docs = _encode(model)
    labels = torch.stack([model.similarity_pairwise(q, d) for d in docs], dim=1)
    loss_fn = DPOLoss(model, beta=1.0, scale=20.0, policy="linear")
    loss = loss_fn([model.tokenize(c) for c in COLUMNS], labels)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)
    assert loss_fn.pop_metrics()["rewards/margins"] == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_precomputed_reference_labels_are_the_models_similarity(tiny_model, similarity):
    model = unnormalized(tiny_model, similarity)
    out, _ = add_reference_scores(Dataset.from_dict(ROWS), model, precision="fp32", show_progress_bar=False)
    labels = np.array(out["label"])
    assert labels.shape == (3, 3)  # k = 2 negatives
    q = model.encode_query(ROWS["anchor"])
    for j, col in enumerate(["positive", "negative_1", "negative_2"]):
        want = np.diag(model.similarity(q, model.encode_document(ROWS[col])).numpy())
        np.testing.assert_allclose(labels[:, j], want, atol=1e-5)
    if similarity == "cosine":
        assert np.all(np.abs(labels) <= 1 + 1e-6)


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_online_reference_scores_are_the_models_similarity(tiny_model, similarity):
    model = unnormalized(tiny_model, similarity)
    q, *docs = _encode(model)
    got = OnlineReference(model).score([model.tokenize(c) for c in COLUMNS])
    want = torch.stack([model.similarity_pairwise(q, d) for d in docs], dim=1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("similarity", ["euclidean", "manhattan"])
def test_other_similarities_are_refused_in_one_line(tiny_model, similarity):
    model = unnormalized(tiny_model, similarity)
    for make in (lambda: DPOLoss(model), lambda: OnlineReference(model),
                 lambda: add_reference_scores(Dataset.from_dict(ROWS), model, show_progress_bar=False)):
        with pytest.raises(UserInputError, match=f"{similarity}.*cosine, dot") as err:
            make()
        assert "\n" not in str(err.value)


def test_margin_scores_the_positive_on_the_faiss_candidates_scale(tmp_path, tiny_model):
    """Un-normalized cosine model: the positive scores the --margin filter compares are cosines, the
    same numbers FAISS gives the same documents as candidates."""
    from dpo_retrieval.data.beir import BeirDataset
    from dpo_retrieval.mining import _positive_scores, dense_candidates

    model = unnormalized(tiny_model, "cosine")
    docs = sorted(set(ROWS["positive"] + ROWS["negative_1"] + ROWS["negative_2"]))
    corpus = {f"d{i}": {"title": "", "text": t} for i, t in enumerate(docs)}
    queries = {f"q{i}": t for i, t in enumerate(ROWS["anchor"])}
    qrels = {f"q{i}": {f"d{docs.index(p)}": 1} for i, p in enumerate(ROWS["positive"])}
    ds = BeirDataset("tiny", tmp_path, "train", corpus, queries, qrels)
    cache = tmp_path / "corpus_embeddings.npy"
    qids = list(queries)
    cands = dense_candidates(model, ds, qids, len(docs), embeddings_cache=cache, precision="fp32")
    pos = _positive_scores(model, ds, qids, cache, "fp32")
    assert len(pos) == 3
    for (q, d), s in pos.items():
        assert -1 - 1e-6 <= s <= 1 + 1e-6
        assert s == pytest.approx(dict(cands[q])[d], abs=1e-5)
