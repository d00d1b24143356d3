"""Search: one function from a model and a BEIR split to a ranked run, which evaluation and mining both call."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from dpo_retrieval.data.beir import BeirDataset, corpus_file, count_records, iter_corpus
from dpo_retrieval.data.fields import join_title_text
from dpo_retrieval.errors import UserInputError
from dpo_retrieval.retrieval.cache import (_cache_meta, _load_cached_embeddings, _save_cached_embeddings,
                                           corpus_digest, encoding_key, model_id)
from dpo_retrieval.retrieval.encoding import DEFAULT_BATCH_SIZE, resolved_precision

logger = logging.getLogger(__name__)


def retrieve(index, model, queries: Mapping[str, str], k: int = 1000, *, batch_size: int = DEFAULT_BATCH_SIZE,
             precision: str = "auto", query_embeddings: np.ndarray | None = None, check: bool = True,
             show_progress_bar: bool | None = None, **search_kwargs) -> dict[str, dict[str, float]]:
    """Search ``index`` (a :class:`~dpo_retrieval.retrieval.index.FaissIndex`) for each query: ``{qid: {docid: score}}``."""
    if check:
        index.check_model(model)
    qids = list(queries)
    if query_embeddings is None:
        query_embeddings = index.encode_queries(model, [queries[q] for q in qids], batch_size=batch_size,
                                                precision=precision, show_progress_bar=show_progress_bar)
    scores, ids = index.search(query_embeddings, k, **search_kwargs)
    return run_from_arrays(qids, scores, ids)


def run_from_arrays(qids, scores: np.ndarray, ids: np.ndarray) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for qid, srow, irow in zip(qids, scores, ids):
        run[qid] = {d: float(s) for d, s in zip(irow, srow) if d is not None}
    return run


def index_corpus(model, output: str | os.PathLike, *, corpus: str | os.PathLike | None = None,
                 dataset: str | None = None, factory: str = "Flat", batch_size: int = DEFAULT_BATCH_SIZE,
                 precision: str = "auto", chunk_size: int | None = None, keep_embeddings: bool = False,
                 model_name: str | None = None, overwrite: bool = True, show_progress_bar: bool | None = None,
                 shard: str | None = None):
    """Stream a corpus file (or a BEIR dataset's) into an index directory; returns the FaissIndex.

    ``shard`` ``"i/n"`` (default under torchrun: ``RANK/WORLD_SIZE``) encodes only the i-th slice and
    merges once all are there (:mod:`dpo_retrieval.retrieval.shards`); a process that only wrote its
    shard returns ``None``.
    """
    from dpo_retrieval.retrieval.build import DEFAULT_CHUNK_SIZE, build_index_on_disk
    from dpo_retrieval.retrieval.shards import index_sharded, resolve_shard

    path = corpus_file(corpus=corpus, dataset=dataset)
    count = count_records(path)
    if count == 0:
        raise UserInputError.at(path, None, "empty corpus")
    sharded = resolve_shard(shard)
    if sharded is not None:
        return index_sharded(model, path, output, *sharded, count=count, keep_embeddings=keep_embeddings,
                             overwrite=overwrite, factory=factory, batch_size=batch_size, precision=precision,
                             chunk_size=chunk_size or DEFAULT_CHUNK_SIZE, model_name=model_name,
                             show_progress_bar=show_progress_bar)
    docs = ((doc_id, join_title_text(title, text), title) for doc_id, title, text in iter_corpus(path))
    return build_index_on_disk(model, docs, output, count=count, factory=factory, batch_size=batch_size,
                               precision=precision, chunk_size=chunk_size or DEFAULT_CHUNK_SIZE,
                               model_name=model_name, keep_embeddings=keep_embeddings, overwrite=overwrite,
                               extra_meta={"corpus": str(path.resolve())}, show_progress_bar=show_progress_bar)


def search_dataset(model, dataset: BeirDataset, top_k: int, *, batch_size: int = DEFAULT_BATCH_SIZE,
                   precision: str = "auto", factory: str = "Flat", index=None,
                   save_index: str | os.PathLike | None = None, embeddings_cache: str | os.PathLike | None = None,
                   model_name: str | None = None, show_progress_bar: bool | None = None,
                   model_key: str | None = None) -> dict:
    """Encode (or reuse) the corpus, index it, encode the queries and search: the ranked list that
    evaluation scores and mining draws negatives from.

    - ``index``: a :class:`~dpo_retrieval.retrieval.index.FaissIndex` or an index directory to reuse
      (checked against ``model`` and the dataset's doc ids) instead of encoding the corpus.
    - ``save_index``: also save the index built here to that directory.
    - ``embeddings_cache``: a ``.npy`` path: reused when its :func:`encoding_key` (model weights,
      resolved precision, document texts, package version) and settings match, else (re)written.
    - ``model_key``: what identifies the model in that key (e.g. its training stage's hash); default
      :func:`model_id` of ``model_name`` or of the loaded weights.

    Under torchrun (``WORLD_SIZE > 1``) each rank encodes a contiguous slice of the corpus and the
    slices are gathered, so every rank searches the same full index
    (:func:`~dpo_retrieval.retrieval.shards.encode_across_ranks`).

    Returns ``{"run", "index", "settings", "encoding_key" (None without a cache), "timings"}``.
    """
    from dpo_retrieval.retrieval.index import FaissIndex, build_from_embeddings, model_settings
    from dpo_retrieval.retrieval.shards import encode_across_ranks

    if top_k <= 0:
        raise UserInputError(f"top_k: must be > 0, got {top_k}")
    timings: dict[str, float] = {}
    doc_ids = dataset.doc_ids
    key = None
    settings = model_settings(model, model_name=model_name, precision=precision)
    if index is not None:
        t0 = time.perf_counter()
        if not isinstance(index, FaissIndex):
            index = FaissIndex.load(index)
        index.check_model(model)
        if len(index.doc_ids) != len(doc_ids) or set(index.doc_ids) != set(doc_ids):
            missing = len(set(doc_ids) - set(index.doc_ids))
            raise UserInputError(f"index: holds {index.count} documents, {missing} of the {len(doc_ids)} in "
                                 f"{dataset.name} are missing; it was built from another corpus")
        timings["load_index_s"] = time.perf_counter() - t0
        timings["encode_corpus_s"] = 0.0
    else:
        cache = Path(embeddings_cache) if embeddings_cache else None
        if cache is not None:
            key = encoding_key(model_key or model_id(model_name, model), resolved_precision(model, precision),
                               corpus_digest(dataset), backend=settings.get("backend") or "torch")
        expect = _cache_meta(doc_ids, settings, key)
        emb = _load_cached_embeddings(cache, expect) if cache is not None else None
        t0 = time.perf_counter()
        if emb is None:
            emb = encode_across_ranks(model, dataset.doc_texts(), count=len(doc_ids),
                                normalize=settings["normalize_embeddings"], batch_size=batch_size,
                                precision=precision, show_progress_bar=show_progress_bar)
            timings["encode_corpus_s"] = time.perf_counter() - t0
            if cache is not None:
                _save_cached_embeddings(cache, emb, expect)
        else:
            timings["encode_corpus_s"] = 0.0
        t0 = time.perf_counter()
        index = build_from_embeddings(emb, doc_ids, dict(settings, encode_seconds=timings["encode_corpus_s"]),
                                      factory=factory, titles=[dataset.corpus[d].get("title") or "" for d in doc_ids])
        timings["build_index_s"] = time.perf_counter() - t0
        if save_index:
            index.save(save_index)
            logger.info("saved the index to %s", save_index)

    qids = list(dataset.queries)
    t0 = time.perf_counter()
    q_emb = index.encode_queries(model, [dataset.queries[q] for q in qids], batch_size=batch_size,
                                 precision=precision, show_progress_bar=show_progress_bar)
    timings["encode_queries_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    run = retrieve(index, model, dataset.queries, top_k, query_embeddings=q_emb, check=False)
    timings["search_s"] = time.perf_counter() - t0
    return {"run": run, "index": index, "settings": settings, "encoding_key": key, "timings": timings}
