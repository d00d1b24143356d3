"""Issue 10: a model with query/document prompts trains on the prompted inputs the reference,
mining and evaluation encode (``encode_query``/``encode_document``), and keeps its prompts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from sentence_transformers import SentenceTransformer

from dpo_retrieval.training import DPOArgs, TrainArgs, train, training_arguments
from _triplets import TRIPLETS as SHARED_TRIPLETS

PROMPTS = {"query": "query: ", "document": "passage: "}
TRIPLETS = SHARED_TRIPLETS[:6]


def _prompted_model(tiny_model_path, path: Path, *, include_prompt: bool = True) -> str:
    model = SentenceTransformer(tiny_model_path, device="cpu")
    assert model.tokenizer.tokenize("query: what") == ["query", ":", "what"]
    model.prompts = dict(PROMPTS)
    model[1].include_prompt = include_prompt  # Pooling: False leaves the prompt tokens out of the mean
    model.save(str(path))
    return str(path)


def _triplets(path: Path) -> str:
    path.write_text("".join(json.dumps({"query": q, "positive": p, "negative": n}) + "\n" for q, p, n in TRIPLETS))
    return str(path)


@pytest.mark.parametrize("reference,include_prompt,towers", [
    ("precomputed", True, False),
    ("online", True, False),
    ("online", False, False),  # the online reference must pool the policy's way (prompt_length)
    ("precomputed", True, True),  # two towers keep the prompts
])
def test_prompted_model_starts_at_the_reference(tmp_path, tiny_model_path, reference, include_prompt, towers):
    """Step 1 is scored before any update with the policy equal to the reference: with dropout off
    the DPO loss is exactly log 2, which it is only if the trainer feeds the policy the same prompted
    texts that ``encode_query``/``encode_document`` (and the online reference) see."""
    model = _prompted_model(tiny_model_path, tmp_path / "prompted", include_prompt=include_prompt)
    out = tmp_path / "out"
    train(TrainArgs(triplets=_triplets(tmp_path / "t.jsonl"), model=model, loss="dpo", max_seq_length=32,
                    precision="fp32", device="cpu"),
          training_arguments(str(out), max_steps=1, logging_steps=1, per_device_train_batch_size=6, disable_tqdm=True),
          DPOArgs(reference=reference, separate_towers=towers, dropout="off"))
    first = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)][0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-3)
    saved = SentenceTransformer(str(out), device="cpu")  # evaluation after training uses the prompts too
    assert {k: saved.prompts.get(k) for k in PROMPTS} == PROMPTS


def test_online_reference_scores_the_prompted_texts(tmp_path, tiny_model_path, monkeypatch):
    """The online reference re-encodes the trainer's token ids: those carry the prompts."""
    from dpo_retrieval.training.reference import OnlineReference

    seen = []
    original = OnlineReference.score

    def spy(self, sentence_features):
        tok = self.model.tokenizer
        seen.append([tok.decode(f["input_ids"][0], skip_special_tokens=True) for f in sentence_features])
        return original(self, sentence_features)

    monkeypatch.setattr(OnlineReference, "score", spy)
    model = _prompted_model(tiny_model_path, tmp_path / "prompted")
    train(TrainArgs(triplets=_triplets(tmp_path / "t.jsonl"), model=model, max_seq_length=32, precision="fp32",
                    device="cpu", loss="dpo"),
          training_arguments(str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=6, disable_tqdm=True),
          DPOArgs(reference="online", dropout="off"))
    (query, *docs), = seen
    assert query.startswith("query :") and all(d.startswith("passage :") for d in docs), seen
