"""``--backend auto``'s probe: does ONNX Runtime encode faster than PyTorch for this model shape here?

A short measurement (a few seconds, once per machine, libraries and model shape) of both backends on
the same synthetic texts, cached in ``~/.cache/dpo_retrieval/backend_probe.json``. ONNX wins only
at cosine >= :data:`PROBE_MIN_COSINE` to PyTorch on every text and a median time below
:data:`PROBE_MAX_RATIO` of PyTorch's. A decision measured on a busy machine is measured again once
the machine is quiet.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from dpo_retrieval._io import write_json
from dpo_retrieval.errors import UserInputError
from dpo_retrieval.models import cpu_name
from dpo_retrieval.retrieval.onnx_export import DEFAULT_LEVEL, cache_root, onnx_swaps, transformer_modules

logger = logging.getLogger(__name__)

#: ONNX is picked by ``auto`` only at this cosine to PyTorch (every probe text) ...
PROBE_MIN_COSINE = 0.9999
#: ... and only when its median probe time is below this share of PyTorch's (noise margin).
PROBE_MAX_RATIO = 0.95
_PROBE_WORDS = ("the cell protein gene patients cancer risk increase effect study human blood brain heart "
                "disease treatment drug dose level water fiber birth weight vitamin diabetes insulin virus "
                "infection immune response tumor growth signal pathway expression mutation sleep age children "
                "women men analysis results clinical trial data model evidence").split()
_PROBES: dict[str, dict] = {}  # this process's decisions, by key


def probe_key(model) -> dict:
    """What the probe's answer depends on: this machine, the libraries and the model's shape."""
    import onnxruntime

    cfgs = [m.model.config for m in transformer_modules(model)]
    shape = [{k: getattr(c, k, None) for k in ("model_type", "hidden_size", "num_hidden_layers",
                                                 "num_attention_heads", "intermediate_size")} for c in cfgs]
    return {"cpu": cpu_name(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "level": DEFAULT_LEVEL,
            "max_seq_length": getattr(model, "max_seq_length", None), "shape": shape}


def _probe_file() -> Path:
    return cache_root() / "backend_probe.json"


def _read_probes() -> dict:
    try:
        return json.loads(_probe_file().read_text())
    except (OSError, ValueError):
        return {}


def _write_probe(key: str, entry: dict) -> None:
    path = _probe_file()
    try:
        write_json({**_read_probes(), key: entry}, path)
    except (OSError, UserInputError) as err:  # a read-only home only costs a re-measurement next time
        logger.warning("could not save the backend probe to %s: %s", path, err)


def _probe_texts(max_len: int, n: int = 24) -> list[str]:
    lengths = [max(8, int(max_len * f)) for f in (1.0, 0.75, 0.5, 0.25)]
    return [" ".join(_PROBE_WORDS[(i * 7 + j) % len(_PROBE_WORDS)] for j in range(lengths[i % 4]))
            for i in range(n)]


def probe(model, *, repeats: int = 3, fresh: bool = False) -> dict:
    """Measure (or recall) whether ONNX Runtime beats PyTorch for this model shape on this machine.

    ``fresh``: measure even when a decision is cached (and replace it)."""
    key_dict = probe_key(model)
    key = hashlib.sha1(json.dumps(key_dict, sort_keys=True).encode()).hexdigest()[:16]
    cached = None if fresh else _probe_cached(key)
    if cached is not None:
        return cached
    load = _load_average()
    entry = _measure(model, repeats)
    entry = {**entry, "key": key_dict, "measured": time.strftime("%Y-%m-%dT%H:%M:%S"), "load_average": load,
             "busy": _busy(load)}
    _write_probe(key, entry)
    _PROBES[key] = entry
    logger.info("--backend auto: ONNX %.2fx torch's speed at min cosine %.6f on the probe -> %s (saved in %s)",
                entry["speedup"], entry["min_cosine"], entry["backend"], _probe_file())
    return entry


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _busy(load: float | None) -> bool:
    """More runnable processes than cores: timings then say more about the neighbours than the backends."""
    return load is not None and load > (os.cpu_count() or 1)


def _probe_cached(key: str) -> dict | None:
    if key in _PROBES:
        return _PROBES[key]
    entry = _read_probes().get(key)
    if isinstance(entry, dict) and entry.get("backend") in ("torch", "onnx"):
        if entry.get("busy") and not _busy(_load_average()):
            return None  # measured on a busy machine: measure again now that it is quiet
        _PROBES[key] = entry
        return entry
    return None


def _measure(model, repeats: int) -> dict:
    from dpo_retrieval.retrieval.encoding import encode_texts

    texts = _probe_texts(int(getattr(model, "max_seq_length", None) or 256))
    swaps = onnx_swaps(model, DEFAULT_LEVEL)

    def use(which: int) -> None:
        for s in swaps:
            s[0].model = s[which]

    def run(which: int) -> tuple[float, np.ndarray]:
        use(which)
        t0 = time.perf_counter()
        emb = encode_texts(model, texts, precision="fp32", normalize_embeddings=True, show_progress_bar=False)
        return time.perf_counter() - t0, emb

    times: dict[int, list[float]] = {1: [], 2: []}
    embs = {}
    try:
        for which in (1, 2):  # warm-up
            use(which)
            encode_texts(model, texts[:4], precision="fp32", show_progress_bar=False)
        for r in range(repeats):
            for which in ((1, 2) if r % 2 == 0 else (2, 1)):
                seconds, embs[which] = run(which)
                times[which].append(seconds)
    finally:
        use(1)
    cos = float(np.min(np.sum(embs[1] * embs[2], axis=1)))
    t_torch, t_onnx = statistics.median(times[1]), statistics.median(times[2])
    pick = "onnx" if cos >= PROBE_MIN_COSINE and t_onnx < PROBE_MAX_RATIO * t_torch else "torch"
    return {"backend": pick, "torch_s": round(t_torch, 4), "onnx_s": round(t_onnx, 4),
            "speedup": round(t_torch / t_onnx, 3), "min_cosine": round(cos, 6), "texts": len(texts)}
