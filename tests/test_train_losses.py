"""``train(...)`` with each loss issue 11 added, on the tiny model: finite losses, a saved loadable model,
and the step-1 loss of the variants that reduce to the contrastive baseline equal to its step-1 loss."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from sentence_transformers import SentenceTransformer
from _triplets import TRIPLETS as SHARED_TRIPLETS

TRIPLETS = SHARED_TRIPLETS[:6]


def _train(tmp_path: Path, model_path: str, loss: str, name: str | None = None, steps: int = 2, **dpo) -> tuple[Path, list]:
    from dpo_retrieval.training import DPOArgs, TrainArgs, train, training_arguments

    triplets = tmp_path / "t.jsonl"
    triplets.write_text("".join(json.dumps({"query": q, "positive": p, "negative": n}) + "\n" for q, p, n in TRIPLETS))
    out = train(TrainArgs(triplets=str(triplets), model=model_path, loss=loss, precision="fp32", max_seq_length=32),
                training_arguments(str(tmp_path / (name or loss)), max_steps=steps, logging_steps=1,
                                   per_device_train_batch_size=3, disable_tqdm=True),
                DPOArgs(**dpo))
    return out, [r for r in (json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines())
                 if "loss" in r]


@pytest.mark.parametrize("loss,dpo", [
    ("cmnrl", {"mini_batch_size": 2}),
    ("dpo+mnrl", {"mnrl_weight": 0.5}),
    ("sdpo", {"sdpo_gamma": 1.0}),
    ("sdpo", {"sdpo_gamma": 0.5, "reference": "online"}),
    ("dpo", {"loss_type": "hinge", "hinge_margin": 1.0}),
], ids=["cmnrl", "dpo+mnrl", "sdpo", "sdpo-online", "hinge"])
def test_each_new_loss_trains_and_saves(tmp_path, tiny_model_path, loss, dpo):
    out, steps = _train(tmp_path, tiny_model_path, loss, **dpo)
    assert [r["step"] for r in steps] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in steps), steps
    assert SentenceTransformer(str(out), device="cpu").encode(["hi"]).shape == (1, 32)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["config"]["loss"] == loss and summary["steps"] == 2
    if loss in ("dpo+mnrl", "dpo"):
        assert "rewards/margins" in steps[0]
    if loss == "dpo+mnrl":
        assert {"loss/mnrl", "loss/dpo"} <= set(steps[0])
    if loss == "sdpo":
        assert "sdpo/top1" in steps[0]


@pytest.mark.parametrize("loss,dpo", [("sdpo", {"sdpo_gamma": 0.0, "beta": 1.0}), ("dpo+mnrl", {"mnrl_weight": 1.0}),
                                      ("cmnrl", {"mini_batch_size": 2, "mnrl_scale": 20.0})],
                         ids=["sdpo-gamma0", "dpo+mnrl-1", "cmnrl"])
def test_variants_that_reduce_to_the_contrastive_loss_start_at_its_loss(tmp_path, tiny_model_path, loss, dpo):
    """Without dropout, step 1 (before any update, same batch) of sdpo at gamma 0 (beta*scale = 20),
    dpo+mnrl at lambda 1 and cmnrl is the contrastive baseline's step-1 loss."""
    _, base = _train(tmp_path, tiny_model_path, "contrastive", steps=1, dropout="off")
    _, got = _train(tmp_path, tiny_model_path, loss, steps=1, dropout="off", **dpo)
    assert got[0]["loss"] == pytest.approx(base[0]["loss"], rel=1e-4)
