"""The frozen reference: precomputed scores attached to the data, or an online frozen copy.

DPO compares the policy with a frozen reference encoder (by default the starting model).
``precomputed`` (the default) encodes every *distinct* query and passage once before training,
stores each row's reference scores in the ``label`` column as ``[ref_pos, ref_neg_1..k]`` and frees
the reference, so a DPO step costs what a contrastive step costs. ``online`` keeps a frozen copy
and scores every batch, for data too large to precompute.

Both score with the reference model's own similarity (cosine or dot), through
:func:`dpo_retrieval.losses.candidate_scores`, in float32: the same function DPO scores the policy with.

``sdpo`` needs the reference's score of each query with *every* passage of its batch, and batches are
drawn during training: :func:`add_reference_embeddings` stores each row's reference embeddings
instead (the ``label`` column holds a (2+k, d) array per row: query, positive, negative_1..k; each
distinct text still encoded once), and the loss scores them in-batch; the online reference embeds
each batch (:meth:`OnlineReference.embed`).

With ``cache_dir`` (compare and sweep pass one in their run directory) the distinct texts' embeddings are kept
there, keyed by the reference's weights (a digest of its state), the precision, its max length and prompts, the
task and the texts: a later training from the same start on the same triplets (another β, learning rate or
seed) reads them instead of encoding again. Single process only (under torch.distributed each rank encodes its
share, as without a cache).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

LABEL_COLUMN = "label"


def text_columns(dataset) -> tuple[str, list[str]]:
    """(query column, [positive, negative_1..k]) of a triplet dataset."""
    cols = [c for c in dataset.column_names if c != LABEL_COLUMN]
    if len(cols) < 3:
        raise ValueError(f"expected anchor, positive, negative_1..k columns, got {cols}")
    return cols[0], cols[1:]


def add_reference_scores(dataset, reference_model, *, batch_size: int = 64, precision: str = "auto",
                         show_progress_bar: bool = True, cache_dir: str | Path | None = None):
    """Attach the reference's scores ``[s(q, pos), s(q, neg_1), ...]`` as the ``label`` column.

    Each distinct query is encoded once as a query and each distinct passage once as a document,
    in eval mode without gradients; scores are the model's similarity (cosine or dot, see
    :func:`~dpo_retrieval.losses.candidate_scores`), in float32. Returns ``(dataset_with_labels, stats)``
    where ``stats`` counts rows, texts, the distinct texts actually encoded and those read from ``cache_dir``
    (see the module's docstring).
    """
    from dpo_retrieval.losses import candidate_scores, model_similarity

    start = time.perf_counter()
    similarity = model_similarity(reference_model)
    q_emb, q_ids, d_emb, d_ids, reused = _encode_distinct(dataset, reference_model, batch_size, precision,
                                                          show_progress_bar, cache_dir)
    scores = candidate_scores(torch.from_numpy(q_emb[q_ids]), torch.from_numpy(d_emb[d_ids]), similarity).numpy()
    dataset = _set_label(dataset, scores.tolist())
    stats = _stats(len(q_ids), d_ids.shape[1], len(q_emb) + len(d_emb) - reused, start, reused)
    stats["ranks"] = _split()[0]
    logger.info("reference scores: %d rows, %d texts, %d distinct texts encoded (%d read from the cache) in %.1fs",
                stats["rows"], stats["texts"], stats["texts_encoded"], reused, stats["seconds"])
    return dataset, stats


def add_reference_embeddings(dataset, reference_model, *, batch_size: int = 64, precision: str = "auto",
                             show_progress_bar: bool = True, cache_dir: str | Path | None = None):
    """Attach the reference's float32 embeddings of each row's texts as the ``label`` column:
    a (2+k, d) array per row, ``[E(q), E(pos), E(neg_1), ..., E(neg_k)]`` (query encoded as a query,
    passages as documents, each distinct text once, eval mode). For losses that score the reference
    in-batch (``sdpo``); same ``(dataset_with_labels, stats)`` as :func:`add_reference_scores`.
    Memory: rows x (2+k) x d floats (SciFact's ~800 rows at d 384: 4 MB); use the online reference
    where that is too much.
    """
    start = time.perf_counter()
    q_emb, q_ids, d_emb, d_ids, reused = _encode_distinct(dataset, reference_model, batch_size, precision,
                                                          show_progress_bar, cache_dir)
    rows = np.concatenate([q_emb[q_ids][:, None, :], d_emb[d_ids]], axis=1).astype(np.float32)  # (rows, 2+k, d)
    from datasets import Array2D

    dataset = _set_label(dataset, rows.tolist(), Array2D(shape=rows.shape[1:], dtype="float32"))
    stats = _stats(len(q_ids), d_ids.shape[1], len(q_emb) + len(d_emb) - reused, start, reused)
    stats["ranks"] = _split()[0]
    logger.info("reference embeddings: %d rows, %d distinct texts encoded (%d read from the cache) in %.1fs",
                stats["rows"], stats["texts_encoded"], reused, stats["seconds"])
    return dataset, stats


def _encode_distinct(dataset, reference_model, batch_size, precision, show_progress_bar, cache_dir=None):
    """Each distinct query (as a query) and passage (as a document) encoded once, without gradients, or read
    from ``cache_dir``: ``(query_embs, query_index_per_row (rows,), passage_embs, passage_index_per_row
    (rows, 1+k), texts read from the cache)``."""
    from dpo_retrieval.retrieval.encoding import encode_texts

    query_col, doc_cols = text_columns(dataset)
    queries = dataset[query_col]
    docs = {col: dataset[col] for col in doc_cols}
    q_index: dict[str, int] = {}
    q_ids = np.fromiter((q_index.setdefault(t, len(q_index)) for t in queries), dtype=np.int64, count=len(queries))
    d_index: dict[str, int] = {}
    d_ids = np.stack([
        np.fromiter((d_index.setdefault(t, len(d_index)) for t in docs[col]), dtype=np.int64, count=len(queries))
        for col in doc_cols
    ], axis=1)  # (rows, 1+k)

    # Under torch.distributed each rank encodes every world-th distinct text; the pieces are gathered once.
    world, rank = _split()
    q_texts, d_texts = list(q_index)[rank::world], list(d_index)[rank::world]
    cache = _ReferenceCache(cache_dir, reference_model, precision) if cache_dir is not None and world == 1 else None
    was_training = reference_model.training
    reference_model.eval()
    reused = 0
    try:
        with torch.no_grad():
            embs = []
            for texts, task in ((q_texts, "query"), (d_texts, "document")):
                emb = cache.load(texts, task) if cache else None
                if emb is None:
                    emb = _encode(encode_texts, reference_model, texts, batch_size, precision, task, show_progress_bar)
                    if cache and emb is not None:
                        cache.save(texts, task, emb)
                else:
                    reused += len(texts)
                embs.append(emb)
            q_emb, d_emb = embs
    finally:
        reference_model.train(was_training)
    if world > 1:
        from dpo_retrieval.training.distributed import gather_objects

        parts = gather_objects((q_emb, d_emb))
        q_emb = _interleave([p[0] for p in parts], len(q_index))
        d_emb = _interleave([p[1] for p in parts], len(d_index))
    return q_emb, q_ids, d_emb, d_ids, reused


class _ReferenceCache:
    """The reference's embeddings of a list of texts under ``cache_dir``: ``<task>-<key>.npy`` beside a
    ``.json`` with its key (:func:`~dpo_retrieval.retrieval.cache.encoding_key` of the model's state digest,
    the precision, the texts in order, the task, max length and prompts). A file that does not match is
    ignored and written again; written atomically."""

    def __init__(self, cache_dir, model, precision: str) -> None:
        from dpo_retrieval.models import resolve_precision
        from dpo_retrieval.retrieval.cache import state_dict_digest

        self.dir = Path(cache_dir)
        self.model = model
        self.precision = resolve_precision(precision, str(model.device))  # "auto" means what it resolves to here
        # the weights, and what else turns text into an embedding: the modules' settings (pooling, normalisation,
        # lower-casing, ...) as the model prints them, and the tokenizer's vocabulary
        tokenizer = getattr(model, "tokenizer", None)
        vocab = json.dumps(sorted(tokenizer.get_vocab().items())) if tokenizer is not None else ""
        self.model_id = "state:" + state_dict_digest(model) + ";modules:" + hashlib.sha256(
            (repr(model) + type(tokenizer).__name__ + vocab).encode()).hexdigest()

    def _key(self, texts: list[str], task: str) -> dict:
        from dpo_retrieval.retrieval.cache import encoding_key, texts_digest

        return encoding_key(self.model_id, self.precision, texts_digest(map(str, range(len(texts))), texts),
                            task=task, max_seq_length=self.model.max_seq_length,
                            prompts=dict(getattr(self.model, "prompts", None) or {}),
                            default_prompt_name=getattr(self.model, "default_prompt_name", None))

    def _path(self, key: dict, task: str) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        return self.dir / f"{task}-{digest}.npy"

    def load(self, texts: list[str], task: str) -> np.ndarray | None:
        key = self._key(texts, task)
        path = self._path(key, task)
        side = path.with_suffix(".json")
        try:
            if not (path.is_file() and side.is_file()) or json.loads(side.read_text()) != key:
                return None
            emb = np.load(path)
        except (OSError, ValueError) as err:
            logger.warning("ignoring the reference cache %s: %s", path, err)
            return None
        if emb.ndim != 2 or emb.shape[0] != len(texts) or emb.dtype != np.float32:
            return None
        logger.info("reference embeddings of %d %s texts read from %s", len(texts), task, path)
        return emb

    def save(self, texts: list[str], task: str, emb: np.ndarray) -> None:
        from dpo_retrieval._io import atomic_path, write_json

        key = self._key(texts, task)
        path = self._path(key, task)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=".npy") as tmp:
            np.save(tmp, np.asarray(emb, dtype=np.float32))
        write_json(key, path.with_suffix(".json"))


def _split() -> tuple[int, int]:
    """(world size, rank) to split the reference's encoding over: torch.distributed's once it is set up
    (the CLI's training arguments set it up), else (1, 0) and every rank encodes everything."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _encode(encode_texts, model, texts, batch_size, precision, task, show_progress_bar) -> np.ndarray | None:
    if not texts:  # fewer distinct texts than ranks
        return None
    return np.asarray(encode_texts(model, texts, batch_size=batch_size, precision=precision, task=task,
                                   show_progress_bar=show_progress_bar), dtype=np.float32)


def _interleave(parts: list, n: int) -> np.ndarray:
    """Rank r's rows are texts r, r+world, ...: put them back in order."""
    dim = next(p.shape[1] for p in parts if p is not None)
    out = np.empty((n, dim), dtype=np.float32)
    for r, part in enumerate(parts):
        if part is not None:
            out[r::len(parts)] = part
    return out


def _set_label(dataset, values, feature=None):
    if LABEL_COLUMN in dataset.column_names:
        dataset = dataset.remove_columns(LABEL_COLUMN)
    return dataset.add_column(LABEL_COLUMN, values, feature=feature)


def _stats(rows: int, docs_per_row: int, encoded: int, start: float, reused: int = 0) -> dict:
    return {"rows": rows, "texts": int(rows * (1 + docs_per_row)), "texts_encoded": encoded, "texts_cached": reused,
            "seconds": round(time.perf_counter() - start, 3)}


class OnlineReference:
    """A frozen encoder that scores each training batch (``--reference online``).

    It must share the policy's tokenizer: it reads the token ids the trainer already made.
    """

    def __init__(self, model) -> None:
        from dpo_retrieval.losses import model_similarity

        self.similarity = model_similarity(model)
        self.model = model
        self.model.eval()
        self.model.requires_grad_(False)

    @classmethod
    def frozen_copy(cls, model) -> "OnlineReference":
        return cls(copy.deepcopy(model))

    @torch.no_grad()
    def score(self, sentence_features) -> torch.Tensor:
        """(B, 1+k) float32 reference scores of each query with its own positive and negatives."""
        from dpo_retrieval.losses import candidate_scores

        embeddings = self.embed(sentence_features)
        return candidate_scores(embeddings[0], embeddings[1:], self.similarity)

    @torch.no_grad()
    def embed(self, sentence_features) -> list[torch.Tensor]:
        """The reference's float32 embeddings of each column of the batch (query, positive, negatives)."""
        from sentence_transformers.base.losses.merged_forward import embed_columns

        device = sentence_features[0]["input_ids"].device
        if next(self.model.parameters()).device != device:
            self.model.to(device)
        # Fresh dicts: modules write their outputs into the features they are given. prompt_length (set
        # when the trainer adds prompts) lets a Pooling with include_prompt=False leave the prompt out.
        keep = ("input_ids", "attention_mask", "token_type_ids", "task", "prompt_length")
        features = [{k: v for k, v in f.items() if k in keep} for f in sentence_features]
        return [e.float() for e in embed_columns(self.model, features)]
