"""Score a model on one BEIR split: search (:func:`~dpo_retrieval.retrieval.search.search_dataset`), then metrics.

:func:`evaluate_model` is what the ``evaluate`` and ``compare`` commands share.
"""

from __future__ import annotations

import os
import time
from typing import Iterable

from dpo_retrieval.data.beir import BeirDataset
from dpo_retrieval.evaluation.metrics import K_VALUES, report_metrics, score_run
from dpo_retrieval.retrieval.encoding import DEFAULT_BATCH_SIZE, resolved_precision
from dpo_retrieval.retrieval.search import search_dataset


def evaluate_model(model, dataset: BeirDataset, *, top_k: int = 1000, k_values: Iterable[int] = K_VALUES,
                   batch_size: int = DEFAULT_BATCH_SIZE, precision: str = "auto", factory: str = "Flat",
                   index=None, save_index: str | os.PathLike | None = None,
                   embeddings_cache: str | os.PathLike | None = None, model_name: str | None = None,
                   show_progress_bar: bool | None = None, include_run: bool = True,
                   model_key: str | None = None) -> dict:
    """Encode the corpus and queries, search, and score one BEIR split (the search options are
    :func:`~dpo_retrieval.retrieval.search.search_dataset`'s).

    Returns ``{"dataset", "split", "model", "num_docs", "num_queries", "top_k", "factory",
    "precision", "metrics", "metrics_all", "per_query", "timings", "run" (if include_run)}``.
    """
    k_values = sorted(set(int(k) for k in k_values))
    found = search_dataset(model, dataset, top_k, batch_size=batch_size, precision=precision, factory=factory,
                           index=index, save_index=save_index, embeddings_cache=embeddings_cache,
                           model_name=model_name, show_progress_bar=show_progress_bar, model_key=model_key)
    run, index, settings, timings = found["run"], found["index"], found["settings"], found["timings"]
    t0 = time.perf_counter()
    metrics_all, per_query = score_run(dataset.qrels, run, k_values)
    timings["metrics_s"] = time.perf_counter() - t0
    timings = {k: round(v, 3) for k, v in timings.items()}
    n_docs = len(dataset.doc_ids)
    if timings.get("encode_corpus_s"):
        timings["docs_per_s"] = round(n_docs / timings["encode_corpus_s"], 1)
    result = {
        "dataset": dataset.name, "dataset_path": str(dataset.path), "split": dataset.split,
        "model": settings.get("model"), "max_seq_length": settings.get("max_seq_length"),
        "similarity": settings.get("similarity"), "doc_join": settings.get("doc_join"),
        "precision": resolved_precision(model, precision), "backend": settings.get("backend"),
        "batch_size": batch_size,
        "factory": index.factory, "top_k": top_k, "num_docs": n_docs, "num_queries": len(dataset.queries),
        "metrics": report_metrics(metrics_all), "metrics_all": metrics_all, "per_query": per_query,
        "timings": timings, "versions": index.meta.get("versions"),
    }
    if found["encoding_key"] is not None:
        result["encoding_key"] = found["encoding_key"]
    if include_run:
        result["run"] = run
    return result
