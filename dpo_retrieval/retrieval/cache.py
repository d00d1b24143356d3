"""What identifies an encoding (model weights, precision, texts, package version) and the corpus-embeddings cache."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping

import numpy as np

from dpo_retrieval._io import atomic_path, write_json
from dpo_retrieval.errors import UserInputError

if TYPE_CHECKING:
    from dpo_retrieval.data.beir import BeirDataset

logger = logging.getLogger(__name__)

#: Files of a model directory whose bytes determine its embeddings: weights, configs, tokenizer.
MODEL_FILE_PATTERNS = ("*.safetensors", "*.bin", "*.json", "*.txt", "*.model")
#: What a trained model's directory holds besides the model (logs, resumable checkpoints).
MODEL_DIR_SKIP = ("checkpoints", "train_log.jsonl", "train_summary.json")
_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def package_version() -> str:
    from dpo_retrieval import __version__

    return __version__


def texts_digest(ids: Iterable[str], texts: Iterable[str]) -> str:
    """sha256 over ``(id, text)`` pairs in order: what a cache of their encodings depends on."""
    h = hashlib.sha256()
    for i, t in zip(ids, texts, strict=True):
        h.update(i.encode("utf-8") + b"\0" + t.encode("utf-8") + b"\0")
    return h.hexdigest()


def corpus_digest(dataset: "BeirDataset") -> str:
    """:func:`texts_digest` of a dataset's documents as encoded (ids and title + text strings)."""
    return texts_digest(dataset.doc_ids, dataset.doc_texts())


def _file_digest(path: Path, memo: dict | None) -> str:
    st_ = path.stat()
    key = (str(path.resolve()), st_.st_size, st_.st_mtime_ns)
    memo_key = "\0".join(map(str, key))
    digest = _FILE_DIGESTS.get(key) or (memo or {}).get(memo_key)
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
    _FILE_DIGESTS[key] = digest
    if memo is not None:
        memo[memo_key] = digest
    return digest


def files_digests(files: list[Path], memo_file: str | os.PathLike | None = None) -> list[str]:
    """sha256 of each file's content. Each file's hash is remembered per (path, size, mtime) in this process
    and, given ``memo_file``, in that JSON file across runs: only a changed or re-copied file is read again."""
    memo = None
    if memo_file is not None:
        try:
            memo = json.loads(Path(memo_file).read_text())
        except (OSError, ValueError):
            memo = {}
        before = dict(memo)
    digests = [_file_digest(p, memo) for p in files]
    if memo is not None and memo != before:
        write_json(memo, memo_file)
    return digests


def model_files_digest(directory: str | os.PathLike, memo_file: str | os.PathLike | None = None) -> str:
    """sha256 over a model directory's weight, config and tokenizer files (:data:`MODEL_FILE_PATTERNS`,
    outside :data:`MODEL_DIR_SKIP`), with their relative paths (each file's hash: :func:`files_digests`)."""
    root = Path(directory)
    files = sorted({p for pattern in MODEL_FILE_PATTERNS for p in root.rglob(pattern)
                    if p.is_file() and not set(p.relative_to(root).parts) & set(MODEL_DIR_SKIP)})
    if not files:
        raise UserInputError.at(root, None, "no model files (*.safetensors, *.bin, *.json) to identify the model by")
    h = hashlib.sha256()
    for p, digest in zip(files, files_digests(files, memo_file)):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + digest.encode() + b"\0")
    return h.hexdigest()


def state_dict_digest(model) -> str:
    """sha256 over a loaded model's parameters and buffers (for a model with no directory to hash)."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(name.encode() + str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update((t.view(torch.uint8) if t.dtype == torch.bfloat16 else t).numpy().tobytes())
    return h.hexdigest()


def model_id(name_or_path: str | os.PathLike | None, model=None, *, memo_file=None) -> str:
    """What identifies a model's weights in a cache key: ``files:<sha256>`` of its directory, else
    ``state:<sha256>`` of the loaded ``model``, else ``files:`` of a hub name's snapshot in the local hub
    cache, else ``name:<name>`` (a hub name not cached locally: revisions cannot be told apart)."""
    path = Path(str(name_or_path)).expanduser() if name_or_path is not None else None
    if path is not None and path.is_dir():
        return "files:" + model_files_digest(path, memo_file)
    if model is not None:
        return "state:" + state_dict_digest(model)
    snapshot = _hub_snapshot(str(name_or_path)) if name_or_path is not None else None
    if snapshot is not None:
        return "files:" + model_files_digest(snapshot, memo_file)
    return f"name:{name_or_path}"


def _hub_snapshot(name: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        for repo in (name, f"sentence-transformers/{name}"):
            found = try_to_load_from_cache(repo, "modules.json")
            if isinstance(found, str):
                return Path(found).parent
    except Exception:  # noqa: BLE001 - a malformed name, no hub library: fall back to the name
        return None
    return None


def encoding_key(model_id: str, precision: str, texts_digest: str, **extra) -> dict:
    """The key of every cache of encodings (corpus embeddings, mined triplets, trained and evaluated
    models): the model's weights, the resolved precision, the texts, the package version, and any
    further field that changes the numbers (``extra``, e.g. a backend). One function for all caches."""
    return {"model": model_id, "precision": precision, "texts": texts_digest, "version": package_version(),
            **extra}


def _cache_meta(doc_ids: list[str], model_settings: Mapping, key: Mapping | None = None) -> dict:
    keys = ("dimension", "max_seq_length", "similarity", "normalize_embeddings", "doc_join", "probe", "two_towers",
            "backend")
    return {"count": len(doc_ids), "key": dict(key or {}),
            **{k: model_settings.get(k) for k in keys}, "model": model_settings.get("model")}


def _load_cached_embeddings(path: Path, expect: dict) -> np.ndarray | None:
    side = path.with_suffix(path.suffix + ".json")
    if not path.is_file() or not side.is_file():
        return None
    try:
        meta = json.loads(side.read_text())
        same = all(meta.get(k) == v for k, v in expect.items() if k not in ("probe", "model")) and bool(meta.get("key"))
        probe_ok = np.allclose(np.asarray(meta.get("probe") or [0.0]), np.asarray(expect.get("probe") or [1.0]),
                               atol=2e-3)
        emb = np.load(path, mmap_mode="r")
    except (OSError, ValueError, json.JSONDecodeError) as err:
        logger.warning("ignoring the embeddings cache %s: %s", path, err)
        return None
    if not (same and probe_ok) or emb.shape != (expect["count"], expect["dimension"]) or emb.dtype != np.float32:
        logger.warning("the embeddings cache %s was made with another model, settings or corpus; re-encoding", path)
        return None
    logger.info("reusing corpus embeddings from %s", path)
    return emb


def _save_cached_embeddings(path: Path, emb: np.ndarray, meta: dict) -> None:
    if path.is_dir():
        raise UserInputError.at(path, None, "is a directory; the embeddings cache is a .npy file")
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, np.asarray(emb, dtype=np.float32))
    write_json(meta, path.with_suffix(path.suffix + ".json"))
    logger.info("saved corpus embeddings to %s", path)
