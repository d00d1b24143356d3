"""One shared way to turn texts into embeddings: queries, documents, reference scores, mining.

``encode_texts`` wraps ``SentenceTransformer.encode`` (or ``encode_query``/``encode_document`` when a
task is given, so two-tower ``Router`` models route each side through its own tower), runs it under
bf16 autocast where ``resolve_precision`` picks bf16 (a GPU with bf16, or a CPU where a bf16 matmul
measures faster than fp32), and always hands back float32 numpy.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterable, Sequence

import numpy as np
import torch

from dpo_retrieval.errors import UserInputError

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 64
TASKS = ("query", "document")

#: How a BEIR document becomes one string (BEIR's own convention): title + " " + text, stripped.
DOC_JOIN = "title + ' ' + text, stripped"


def _device_type(model) -> str:
    try:
        return torch.device(model.device).type
    except (AttributeError, TypeError, RuntimeError):
        return "cpu"


def resolved_precision(model, precision: str = "auto") -> str:
    """The precision ``encode_texts`` will really use for this model: fp32, bf16 or fp16.

    A model on the ONNX backend always runs fp32 (``auto`` resolves to it; bf16/fp16 are refused)."""
    from dpo_retrieval.retrieval.onnx_export import model_backend
    from dpo_retrieval.models import resolve_precision

    if model_backend(model) == "onnx":
        if precision in ("bf16", "fp16"):
            raise UserInputError(f"precision: {precision} cannot run on the onnx backend (fp32 only); use the torch backend "
                                 f"for {precision}")
        resolve_precision(precision, "cpu")  # rejects unknown values
        return "fp32"
    return resolve_precision(precision, _device_type(model))


def precision_context(model, precision: str = "auto"):
    """A context manager that runs the forward pass at ``precision`` (autocast; fp32 = no-op)."""
    resolved = resolved_precision(model, precision)
    if resolved == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if resolved == "bf16" else torch.float16
    return torch.autocast(_device_type(model), dtype=dtype)


def _encode_fn(model, task: str | None):
    if task is None:
        return model.encode
    if task not in TASKS:
        raise ValueError(f"task must be 'query', 'document' or None, got {task!r}")
    fn = getattr(model, f"encode_{task}", None)
    return fn if callable(fn) else model.encode


def encode_texts(
    model,
    texts: Sequence[str] | Iterable[str],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    precision: str = "auto",
    task: str | None = None,
    show_progress_bar: bool | None = None,
    normalize_embeddings: bool = False,
    desc: str | None = None,
    progress=None,
) -> np.ndarray:
    """Encode ``texts`` with a sentence-transformers ``model``; returns a float32 ``(n, dim)`` array.

    - ``precision``: ``auto`` (bf16 autocast on CUDA with bf16 and on CPUs where a bf16 matmul measures
      faster than fp32, fp16 AMP on older CUDA, else fp32), or ``fp32``/``bf16``/``fp16`` explicitly
      (see ``models.resolve_precision``).
      The output is float32 whatever ran inside.
    - ``task``: ``"query"``/``"document"`` call ``model.encode_query``/``model.encode_document`` (the
      model's query/document prompts and, for a ``Router`` model, its query/document tower);
      ``None`` calls ``model.encode``.
    - ``show_progress_bar``: a bar counted in texts; ``None`` shows it when logging is at INFO.
      ``progress``: an open tqdm bar to advance instead (for callers that encode in chunks).
    - ``normalize_embeddings``: L2-normalize each row (cosine similarity = inner product).

    Texts are sorted by length once and encoded in length-homogeneous slices (what
    ``model.encode`` does internally), so padding stays small while the bar moves.
    """
    if batch_size <= 0:
        raise UserInputError(f"batch_size: must be > 0, got {batch_size}")
    texts = list(texts)
    encode = _encode_fn(model, task)
    dim = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else None
    if not texts:
        return np.zeros((0, dim or 0), dtype=np.float32)
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"encode_texts: text {bad} is {type(texts[bad]).__name__}, not str")

    if show_progress_bar is None:
        show_progress_bar = logging.getLogger("dpo_retrieval").getEffectiveLevel() <= logging.INFO
    bar = progress
    own_bar = False
    if bar is None and show_progress_bar and len(texts) > batch_size:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(texts), desc=desc or f"Encoding {task + 's' if task else 'texts'}",
                   unit="text", dynamic_ncols=True)
        own_bar = True

    order = np.argsort([-len(t) for t in texts], kind="stable")
    out: np.ndarray | None = None
    # A few batches per call: ST re-sorts inside each call (a no-op here) and the bar moves.
    step = batch_size * 4
    try:
        with precision_context(model, precision):
            for start in range(0, len(texts), step):
                idx = order[start:start + step]
                emb = encode(
                    [texts[i] for i in idx], batch_size=batch_size, show_progress_bar=False,
                    convert_to_tensor=True)
                emb = emb.detach().to(device="cpu", dtype=torch.float32)
                if normalize_embeddings:  # in float32, not in the autocast dtype
                    emb = torch.nn.functional.normalize(emb, p=2, dim=1)
                emb = emb.numpy()
                if out is None:
                    out = np.empty((len(texts), emb.shape[1]), dtype=np.float32)
                out[idx] = emb
                if bar is not None:
                    bar.update(len(idx))
    finally:
        if own_bar:
            bar.close()
    return out
