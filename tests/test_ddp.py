"""Training under torch.distributed (issue 12): ``torchrun --nproc_per_node 2 -m dpo_retrieval train`` on
CPU (gloo) trains the same model as one process with the same global batch, and only rank 0 writes.

2 ranks x per-device batch 2 against 1 process x batch 4, dropout off, fp32, the same seed. The data order
matches: the trainer's no-duplicates batch sampler draws one permutation from the seed, whatever the batch
size, and with no text repeated in the triplets it cuts it into consecutive batches; accelerate gives rank
r the per-device batches r, r+2, ..., so a step of the 2 ranks covers the rows of one single-process batch.
The pairwise DPO loss is a mean over rows and DDP averages the ranks' gradients, so the step is the same;
the contrastive loss gathers the in-batch negatives across ranks (gather_across_devices).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _triplets import TRIPLETS as SHARED_TRIPLETS

ROOT = Path(__file__).resolve().parents[1]
# Measured on CPU (2 ranks, gloo, 3 AdamW steps at lr 1e-3, weights moving up to 2e-3): largest loss difference
# 7.8e-7 (dpo) and 4.8e-7 (contrastive), largest weight difference 4.0e-7 (dpo) and 1.6e-5 (contrastive).
# AdamW divides each update by the gradient's running RMS, so an element whose gradient is near zero turns the
# all-reduce's different summation order into a visible update difference; the bounds leave room for that.
# Without gather_across_devices the contrastive run differs by 0.57 in loss and 4e-3 in weights.
LOSS_TOL = 1e-5
WEIGHT_TOL = 1e-4
TRIPLETS = SHARED_TRIPLETS


def _gloo_available() -> bool:
    try:
        import torch.distributed as dist

        return dist.is_available() and dist.is_gloo_available()
    except Exception:  # noqa: BLE001 - any import problem means no distributed run here
        return False


pytestmark = pytest.mark.skipif(not _gloo_available(), reason="torch.distributed with the gloo backend is unavailable")


@pytest.fixture()
def triplets(tmp_path) -> Path:
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"query": q, "positive": p, "negative": n}) + "\n" for q, p, n in TRIPLETS))
    return path


def _train(out: Path, triplets: Path, model: str, batch_size: int, loss: str, nproc: int = 1) -> None:
    argv = ["--quiet", "train", "--triplets", str(triplets), "--output", str(out), "--model", model,
            "--loss", loss, "--batch-size", str(batch_size), "--max-seq-length", "32", "--precision", "fp32",
            "--device", "cpu", "--dropout", "off", "--seed", "7", "--lr", "1e-3", "--logging-steps", "1",
            "--max-steps", "3", "--warmup-steps", "0", "--save-steps", "3"]
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
                if nproc > 1 else [sys.executable])
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([*launcher, "-m", "dpo_retrieval", *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"{nproc} process(es) failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"


def _losses(out: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if "loss" in r}


def _weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


@pytest.mark.parametrize("loss", ["dpo", "contrastive"])
def test_two_ranks_train_like_one_process_with_the_same_global_batch(tmp_path, triplets, tiny_model_path, loss):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    _train(single, triplets, tiny_model_path, batch_size=4, loss=loss)
    _train(ddp, triplets, tiny_model_path, batch_size=2, loss=loss, nproc=2)

    one, two = _losses(single), _losses(ddp)
    assert sorted(one) == sorted(two) == [1, 2, 3]
    loss_diff = max(abs(one[s] - two[s]) for s in one)
    w1, w2 = _weights(single), _weights(ddp)
    assert w1.keys() == w2.keys()
    weight_diff = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    moved = max((w1[k] - _weights(Path(tiny_model_path))[k]).abs().max().item() for k in w1)
    print(f"{loss}: largest loss difference {loss_diff:.3g}, largest weight difference {weight_diff:.3g} "
          f"(weights moved up to {moved:.3g})")
    assert moved > 10 * WEIGHT_TOL  # the comparison means something: training changed the weights
    assert loss_diff <= LOSS_TOL
    assert weight_diff <= WEIGHT_TOL

    # rank 0 alone wrote the model, the log and the summary; nothing half-written is left behind
    assert [p.name for p in ddp.rglob("model.safetensors") if p.parent == ddp] == ["model.safetensors"]
    assert len(list(ddp.glob("train_log.jsonl"))) == 1 and (ddp / "train_summary.json").is_file()
    assert not list(ddp.rglob(".saving*"))
    assert len((ddp / "train_log.jsonl").read_text().splitlines()) == len(
        (single / "train_log.jsonl").read_text().splitlines())
    summary = json.loads((ddp / "train_summary.json").read_text())
    assert summary["steps"] == 3 and summary["world_size"] == 2
    if loss == "dpo":  # the reference was encoded half on each rank and gathered (the losses above check the order)
        assert summary["reference_precompute"]["ranks"] == 2
    assert sorted(p.name for p in (ddp / "checkpoints").iterdir()) == ["checkpoint-3"]


def test_bad_input_fails_on_every_rank_before_anything_is_written(tmp_path, triplets, tiny_model_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "something").write_text("x")  # not empty and no --resume: every rank refuses
    with pytest.raises(AssertionError, match="already exists and is not empty"):
        _train(out, triplets, tiny_model_path, batch_size=2, loss="dpo", nproc=2)
    assert sorted(p.name for p in out.iterdir()) == ["something"]


def test_reference_pieces_from_the_ranks_go_back_in_order():
    import numpy as np

    from dpo_retrieval.training.reference import _interleave

    emb = np.arange(14, dtype=np.float32).reshape(7, 2)
    assert np.array_equal(_interleave([emb[r::3] for r in range(3)], 7), emb)
    few = emb[:2]  # fewer distinct texts than ranks: the third rank encoded nothing
    assert np.array_equal(_interleave([few[0:1], few[1:2], None], 2), few)
