"""Encoding backends: PyTorch, or the same model's transformer run by ONNX Runtime.

``--backend onnx`` exports each transformer of a loaded sentence-transformers model to ONNX once,
optimised at ``O2``, caches it keyed by the weights and swaps an ONNX Runtime session in for the
transformer's PyTorch model (:mod:`.onnx_export`). Tokenizer, pooling, normalisation, prompts and
``Router`` towers stay sentence-transformers' own, so ``encode_texts`` and every caller work unchanged.

(sentence-transformers' ``backend="onnx"`` would do the same through optimum-onnx, but optimum-onnx
pins transformers < 4.58; this needs only ``onnxruntime`` and ``onnx``: the ``[onnx]`` extra.)

``--backend auto`` keeps PyTorch on CUDA/MPS, on CPUs where bf16 autocast is the faster lever, and
where onnxruntime is absent; otherwise a short probe (:mod:`.backend_probe`, once per machine and
model shape, cached) picks ONNX only when it encodes faster than PyTorch at cosine >= 0.9999.
``DPO_RETRIEVAL_BACKEND_PROBE=torch|onnx`` skips the probe. Training always runs PyTorch
(``load_model``'s default backend).
"""

from __future__ import annotations

import logging
import os

import torch

from dpo_retrieval.errors import UserInputError
from dpo_retrieval.retrieval import onnx_export
from dpo_retrieval.retrieval.backend_probe import PROBE_MAX_RATIO, PROBE_MIN_COSINE, probe
from dpo_retrieval.retrieval.onnx_export import (DEFAULT_LEVEL, LEVELS, cache_root, ensure_export, model_backend,
                                                 onnx_available, require_onnx, to_onnx)

__all__ = ["BACKENDS", "DEFAULT_LEVEL", "LEVELS", "PROBE_MAX_RATIO", "PROBE_MIN_COSINE", "apply_backend",
           "cache_root", "check_backend", "ensure_export", "model_backend", "onnx_available", "probe",
           "require_onnx", "resolve_backend", "to_onnx"]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx")


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise UserInputError(f"backend: unknown value {backend!r}; choose auto, torch or onnx")
    return backend


def apply_backend(model, backend: str = "torch"):
    """Run ``model`` on ``backend`` (``auto``, ``torch`` or ``onnx``); returns the model (changed in place)."""
    check_backend(backend)
    if backend == "torch":
        return model
    if backend == "onnx":
        if torch.device(model.device).type != "cpu":
            raise UserInputError(f"backend: onnx runs on CPU; the model is on {model.device} (use device cpu "
                                 "or backend torch)")
        return to_onnx(model)
    return to_onnx(model) if resolve_backend("auto", model) == "onnx" else model


def resolve_backend(backend: str, model, device: str | None = None) -> str:
    """The backend ``backend`` stands for with ``model`` on ``device`` (default: the model's): torch or onnx."""
    check_backend(backend)
    if backend != "auto":
        return backend
    device = str(device or model.device)
    if not device.startswith("cpu"):
        return "torch"
    forced = os.environ.get("DPO_RETRIEVAL_BACKEND_PROBE", "").strip().lower()
    if forced in ("torch", "onnx"):
        return forced if forced == "torch" or onnx_export.onnx_available() else "torch"
    if not onnx_export.onnx_available():
        logger.debug("--backend auto: onnxruntime not installed, using torch")
        return "torch"
    from dpo_retrieval.models import cpu_bf16_is_faster

    if cpu_bf16_is_faster():
        return "torch"  # bf16 autocast is this CPU's lever; ONNX would run fp32
    if onnx_export.unsupported_reason(model):
        return "torch"
    return probe(model)["backend"]
