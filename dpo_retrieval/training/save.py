"""Checkpoints and saving: the newest complete checkpoint to resume from, an atomic final save."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch

from dpo_retrieval.training.trainer import NonFiniteError

logger = logging.getLogger(__name__)


#: a checkpoint's model weights (a Router keeps them in its towers' subfolders)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")  # transformers' own pattern (trainer_utils)


def _safetensors_whole(path: Path) -> bool:
    """Whether a .safetensors file holds its whole header and every tensor its header lists."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 + n:
                return False
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return size >= 8 + n + end
    except (OSError, ValueError, KeyError, TypeError, IndexError):  # JSONDecodeError and UnicodeDecodeError too
        return False


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint cannot be resumed from (None when it is complete): the trainer writes
    ``trainer_state.json`` last, and a kill mid-save can also leave weights or the optimizer missing or cut."""
    if not (path / "trainer_state.json").is_file():
        return "no trainer_state.json"
    weights = [p for name in WEIGHT_FILES for p in path.rglob(name)]
    if not weights:
        return "no model weights"
    cut = [p for p in weights if p.suffix == ".safetensors" and not _safetensors_whole(p)]
    if cut:
        return f"{cut[0].relative_to(path)} is truncated"
    if not any((path / name).is_file() for name in ("optimizer.pt", "optimizer.bin")):
        return "no optimizer state"
    return None


def _latest_checkpoint(checkpoints: Path) -> str | None:
    """The newest complete checkpoint: transformers' ``get_last_checkpoint``, and while that one is
    incomplete (:func:`checkpoint_problem`; skipped with a warning) the one before it."""
    from transformers.trainer_utils import get_last_checkpoint

    if not checkpoints.is_dir():
        return None
    last = get_last_checkpoint(str(checkpoints))
    if last is None:
        return None
    older = sorted((p for p in checkpoints.iterdir() if _CHECKPOINT.match(p.name) and p.is_dir()
                    and p.name != Path(last).name), key=lambda p: int(_CHECKPOINT.match(p.name).group(1)), reverse=True)
    for path in (Path(last), *older):
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        logger.warning("%s is incomplete (%s; an interrupted save?); not resuming from it", path, problem)
    return None


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
