"""encode_texts: float32 out, order kept, task routing, normalization, bf16 autocast close to fp32."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from dpo_retrieval.data.fields import join_title_text
from dpo_retrieval.retrieval.encoding import encode_texts, precision_context, resolved_precision
from dpo_retrieval.errors import UserInputError

TEXTS = [
    "cells", "the protein gene expression in human cells is increased by the virus infection",
    "what causes heart disease", "low vitamin levels and sleep in children", "a",
    "insulin response in mice with diabetes and high blood sugar level of the tumor growth signal pathway",
]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_matches_model_encode_and_keeps_order(tiny_model):
    emb = encode_texts(tiny_model, TEXTS, batch_size=2, precision="fp32", show_progress_bar=False)
    ref = tiny_model.encode(TEXTS, batch_size=2, convert_to_numpy=True)
    assert emb.dtype == np.float32 and emb.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(emb, ref, atol=1e-5)
    # one at a time gives the same rows (order is restored after length sorting)
    single = np.stack([encode_texts(tiny_model, [t], precision="fp32")[0] for t in TEXTS])
    np.testing.assert_allclose(emb, single, atol=1e-5)


def test_progress_bar_and_normalize(tiny_model):
    emb = encode_texts(tiny_model, TEXTS * 3, batch_size=2, precision="fp32", show_progress_bar=True,
                       normalize_embeddings=True)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_empty_and_bad_input(tiny_model):
    assert encode_texts(tiny_model, []).shape == (0, 32)
    with pytest.raises(TypeError):
        encode_texts(tiny_model, ["ok", None])
    with pytest.raises(UserInputError, match="batch_size: must be > 0"):
        encode_texts(tiny_model, ["a"], batch_size=0)
    with pytest.raises(UserInputError, match="fp16 needs a CUDA"):
        encode_texts(tiny_model, ["a"], precision="fp16")
    with pytest.raises(ValueError, match="task"):
        encode_texts(tiny_model, ["a"], task="passage")


def test_task_routes_two_towers(tiny_model):
    from dpo_retrieval.models import make_two_towers

    towers = make_two_towers(tiny_model)
    with torch.no_grad():  # make the document tower differ from the query tower
        for name, p in towers.named_parameters():
            if "document" in name and p.dim() == 2:
                p.add_(0.5 * torch.randn_like(p))
    q = encode_texts(towers, TEXTS, task="query", precision="fp32")
    d = encode_texts(towers, TEXTS, task="document", precision="fp32")
    np.testing.assert_allclose(q, towers.encode_query(TEXTS), atol=1e-5)
    np.testing.assert_allclose(d, towers.encode_document(TEXTS), atol=1e-5)
    assert np.abs(q - d).max() > 1e-3


def test_bf16_autocast_close_to_fp32_tiny(tiny_model):
    assert resolved_precision(tiny_model, "bf16") == "bf16"
    assert isinstance(precision_context(tiny_model, "bf16"), torch.autocast)
    a = encode_texts(tiny_model, TEXTS, precision="fp32")
    b = encode_texts(tiny_model, TEXTS, precision="bf16")
    assert b.dtype == np.float32
    assert _cos(a, b).min() >= 0.999


@pytest.mark.slow
def test_bf16_close_to_fp32_on_real_scifact(beir_data):
    """The packaged MiniLM under bf16 autocast stays within cosine 0.999 of fp32 on real SciFact docs."""
    from dpo_retrieval.models import load_model

    with open(beir_data / "scifact" / "corpus.jsonl", encoding="utf-8") as f:
        docs = [json.loads(line) for line in itertools.islice(f, 6)]
    texts = [join_title_text(d["title"], d["text"]) for d in docs]
    model = load_model(None, device="cpu", max_seq_length=256)
    a = encode_texts(model, texts, precision="fp32", task="document")
    b = encode_texts(model, texts, precision="bf16", task="document")
    assert b.dtype == np.float32 and a.shape == (6, 384)
    assert _cos(a, b).min() >= 0.999
