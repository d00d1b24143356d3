"""Interrupted training (issue 6): a run killed with SIGKILL after a checkpoint resumes with --resume
to the same final step, and on CPU with a fixed seed to bitwise-identical weights and the same log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpo_retrieval.cli import main
from _triplets import TRIPLETS as SHARED_TRIPLETS

ROOT = Path(__file__).resolve().parents[1]
TRIPLETS = SHARED_TRIPLETS[:6]


def _args(triplets: Path, out: Path, model: str, *extra: str) -> list[str]:
    # batch 2 over 6 triplets: 3 steps an epoch, so step 6 is in the second epoch (the sampler's
    # per-epoch order and the dropout RNG both have to be restored for the weights to match)
    return ["--quiet", "train", "--triplets", str(triplets), "--output", str(out), "--model", model,
            "--batch-size", "2", "--max-seq-length", "32", "--logging-steps", "1", "--precision", "fp32",
            "--device", "cpu", "--save-steps", "2", "--max-steps", "6", "--seed", "7", "--lr", "1e-3", *extra]


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _log(path: Path) -> list[tuple[int, float | None]]:
    return [(r["step"], r.get("loss")) for r in map(json.loads, (path / "train_log.jsonl").read_text().splitlines())]


@pytest.fixture()
def triplets(tmp_path) -> Path:
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"query": q, "positive": p, "negative": n}) + "\n" for q, p, n in TRIPLETS))
    return path


def _start_and_kill(argv: list[str], out: Path, timeout: float = 240.0) -> int:
    """Run ``python -m dpo_retrieval argv`` and SIGKILL it once checkpoint-2 (or -4) is complete."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen([sys.executable, "-m", "dpo_retrieval", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            done = [c for c in ("checkpoint-2", "checkpoint-4")
                    if (out / "checkpoints" / c / "trainer_state.json").is_file()]  # written last
            if done:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == -signal.SIGKILL, f"the run was not killed mid-way (exit {code}): {proc.stderr.read()[-2000:]}"
    return code


def test_killed_run_resumes_to_bitwise_identical_weights(tmp_path, triplets, tiny_model_path):
    import torch

    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(_args(triplets, full, tiny_model_path)) == 0

    _start_and_kill(_args(triplets, cut, tiny_model_path), cut)
    assert not (cut / "modules.json").exists() and not (cut / "train_summary.json").exists()
    # a kill in the middle of writing the next checkpoint leaves one without trainer_state.json:
    # --resume must skip it and use the last complete one
    partial = cut / "checkpoints" / "checkpoint-4"
    if not (partial / "trainer_state.json").exists():
        partial.mkdir(exist_ok=True)
        (partial / "model.safetensors").write_bytes(b"\x08\x00\x00\x00cut")
    # the kill may also have cut the log mid-line
    with open(cut / "train_log.jsonl", "a") as f:
        f.write('{"step": 3, "lo')

    for kept in (cut / "checkpoints").glob("*/train_time.json"):
        kept.unlink()  # a checkpoint from before train_time.json: the time before it is unknown, and said so
    assert main(_args(triplets, cut, tiny_model_path, "--resume")) == 0
    summary = json.loads((cut / "train_summary.json").read_text())
    assert summary["steps"] == json.loads((full / "train_summary.json").read_text())["steps"] == 6
    assert summary["train_seconds_complete"] is False
    assert json.loads((full / "train_summary.json").read_text())["train_seconds_complete"] is True

    a, b = _tensors(full), _tensors(cut)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ after resuming, e.g. {differ[:3]}"
    for name in ("1_Pooling/config.json", "2_Normalize/config.json", "modules.json", "config.json"):
        assert (full / name).read_text() == (cut / name).read_text()
    # the resumed log holds each step once, with the losses of the uninterrupted run
    assert _log(cut) == _log(full)


def test_resume_without_a_checkpoint_refuses_a_finished_model(tmp_path, triplets, tiny_model_path, capsys):
    out = tmp_path / "done"
    out.mkdir()
    (out / "modules.json").write_text("[]")
    code = main(_args(triplets, out, tiny_model_path, "--resume"))
    assert code == 2 and "holds a finished model and no checkpoint" in capsys.readouterr().err


def _complete_checkpoint(path: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text("{}")
    save_file({"w": torch.zeros(64)}, str(path / "model.safetensors"))
    (path / "optimizer.pt").write_bytes(b"state")
    return path


def test_incomplete_checkpoints_are_skipped(tmp_path, caplog):
    from dpo_retrieval.training.save import _latest_checkpoint

    ck = tmp_path / "checkpoints"
    _complete_checkpoint(ck / "checkpoint-2")
    _complete_checkpoint(ck / "checkpoint-4")
    cut = _complete_checkpoint(ck / "checkpoint-6")  # weights cut short
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[:len(data) - 10])
    (_complete_checkpoint(ck / "checkpoint-8") / "optimizer.pt").unlink()
    (_complete_checkpoint(ck / "checkpoint-10") / "trainer_state.json").unlink()
    towers = _complete_checkpoint(ck / "checkpoint-12")  # a Router keeps its weights in the towers' folders
    (towers / "model.safetensors").rename(towers / "query.safetensors")
    (ck / "checkpoint-x").mkdir()
    assert _latest_checkpoint(ck) == str(ck / "checkpoint-4")
    for step, problem in ((12, "no model weights"), (10, "no trainer_state.json"), (8, "no optimizer state"),
                          (6, "model.safetensors is truncated")):
        assert f"checkpoint-{step} is incomplete ({problem}" in caplog.text
    (towers / "query_0_Transformer").mkdir()
    (towers / "query.safetensors").rename(towers / "query_0_Transformer" / "model.safetensors")
    assert _latest_checkpoint(ck) == str(towers)
    assert _latest_checkpoint(tmp_path / "none") is None


def test_resume_falls_back_past_a_truncated_last_checkpoint(tmp_path, triplets, tiny_model_path):
    """A finished run's checkpoints, the last one's weights cut short: --resume trains on from the one
    before and ends with the uninterrupted run's weights and log (rebuilt from the checkpoint's history)."""
    import shutil

    import torch

    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(_args(triplets, full, tiny_model_path)) == 0
    # each checkpoint keeps the seconds trained up to it; the uninterrupted run's total counts all of them
    ran = [json.loads((full / "checkpoints" / f"checkpoint-{k}" / "train_time.json").read_text()) for k in (4, 6)]
    assert [r["step"] for r in ran] == [4, 6] and 0 < ran[0]["train_seconds"] < ran[1]["train_seconds"] <= \
        json.loads((full / "train_summary.json").read_text())["train_seconds"]  # (save_total_limit 2 kept 4 and 6)
    shutil.copytree(full / "checkpoints", cut / "checkpoints")
    (cut / "checkpoints" / "checkpoint-4" / "train_time.json").write_text('{"train_seconds": 1000.0, "step": 4}')
    weights = cut / "checkpoints" / "checkpoint-6" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (cut / "train_log.jsonl").write_text('{"step": 9, "loss": 1.0}\n{"step": 10, "lo')  # stale and cut: replaced

    assert main(_args(triplets, cut, tiny_model_path, "--resume")) == 0
    summary = json.loads((cut / "train_summary.json").read_text())
    assert summary["resumed_from_step"] == 4 and summary["train_seconds_complete"] and 1000.0 < summary["train_seconds"] < 1000.0 + ran[1]["train_seconds"]
    a, b = _tensors(full), _tensors(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _log(cut) == _log(full)
