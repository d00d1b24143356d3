"""Checkpoints and saving: the newest complete checkpoint, log truncation on resume, an atomic final save."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch

from dpo_retrieval._io import write_text
from dpo_retrieval.training.trainer import NonFiniteError

logger = logging.getLogger(__name__)


def _latest_checkpoint(checkpoints: Path) -> str | None:
    """The newest complete checkpoint. The trainer writes ``trainer_state.json`` last, so a
    checkpoint without it was cut short (a kill mid-save) and is skipped."""
    found = [p for p in checkpoints.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    complete = [p for p in found if (p / "trainer_state.json").is_file()]
    for p in sorted(set(found) - set(complete)):
        logger.warning("%s is incomplete (no trainer_state.json, an interrupted save?); not resuming from it", p)
    return str(max(complete, key=lambda p: int(p.name.split("-")[-1]))) if complete else None


def _truncate_log(log_path: Path, step: int) -> None:
    """Drop log records after ``step`` (and a line cut short by a kill) before a resumed run appends."""
    if not log_path.exists():
        return
    keep = []
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            keep.append(line + "\n")
    write_text(log_path, "".join(keep))


def save_model_atomically(model, output: Path, *, model_card: bool = True) -> None:
    """Write the model into ``output`` so that an interrupted save never leaves a loadable half-model.

    The model is saved to a temporary folder first (removed if that fails). An earlier model's
    ``modules.json`` and ``config.json`` (the files ``SentenceTransformer(path)`` starts from) are
    removed, the new files move in, and those two come last, so that a save cut short never loads
    (not even as a plain transformer with default pooling).
    """
    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            raise NonFiniteError(f"weights contain NaN/inf ({name}); the model was not saved")
    tmp = output / ".saving"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save(str(tmp), create_model_card=model_card)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    last = ("modules.json", "config.json")
    for name in last:  # old and new files mixed must not load
        (output / name).unlink(missing_ok=True)
    entries = sorted(tmp.iterdir(), key=lambda p: last.index(p.name) + 1 if p.name in last else 0)
    for entry in entries:
        dest = output / entry.name
        if dest.is_dir() and entry.is_dir():
            shutil.rmtree(dest)
        os.replace(entry, dest)
    tmp.rmdir()
