"""Encode a corpus chunk by chunk and build a FAISS index from it (in memory or streamed into a directory)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from dpo_retrieval._io import atomic_directory
from dpo_retrieval.retrieval.encoding import DEFAULT_BATCH_SIZE, encode_texts
from dpo_retrieval.retrieval.index import (DEFAULT_FACTORY, EMBEDDINGS_FILE, META_FILE, FaissIndex,
                                           build_from_embeddings, check_factory, model_settings)

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 8192


def encode_corpus(model, texts: Iterable[str], *, count: int | None = None, normalize: bool = False,
                  batch_size: int = DEFAULT_BATCH_SIZE, precision: str = "auto",
                  chunk_size: int = DEFAULT_CHUNK_SIZE, out: str | os.PathLike | None = None,
                  show_progress_bar: bool | None = None) -> np.ndarray:
    """Encode document texts chunk by chunk (task=document) into a float32 array.

    ``texts`` may be a generator (a corpus file read lazily); with ``out`` the embeddings go to
    a ``.npy`` memmap of ``count`` rows, so neither the texts nor the vectors need fit in memory.
    """
    from tqdm.auto import tqdm

    if show_progress_bar is None:
        show_progress_bar = logging.getLogger("dpo_retrieval").getEffectiveLevel() <= logging.INFO
    if count is None:
        texts = list(texts)
        count = len(texts)
    dim = model.get_embedding_dimension()
    if out is not None:
        arr = np.lib.format.open_memmap(str(out), mode="w+", dtype=np.float32, shape=(count, dim))
    else:
        arr = np.empty((count, dim), dtype=np.float32)
    bar = tqdm(total=count, desc="Encoding documents", unit="doc", dynamic_ncols=True,
               disable=not show_progress_bar)
    filled = 0
    chunk: list[str] = []

    def flush():
        nonlocal filled
        if not chunk:
            return
        if filled + len(chunk) > count:
            raise ValueError(f"more than the announced {count} texts")
        arr[filled:filled + len(chunk)] = encode_texts(
            model, chunk, batch_size=batch_size, precision=precision, task="document",
            normalize_embeddings=normalize, progress=bar)
        filled += len(chunk)
        chunk.clear()

    try:
        for text in texts:
            chunk.append(text)
            if len(chunk) >= chunk_size:
                flush()
        flush()
    finally:
        bar.close()
    if filled != count:
        raise ValueError(f"got {filled} texts, expected {count}")
    if isinstance(arr, np.memmap):
        arr.flush()
    return arr


def build_index_on_disk(model, docs: Iterable[tuple[str, str, str]], output_dir: str | os.PathLike, *, count: int,
                        factory: str = DEFAULT_FACTORY, batch_size: int = DEFAULT_BATCH_SIZE,
                        precision: str = "auto", chunk_size: int = DEFAULT_CHUNK_SIZE,
                        model_name: str | None = None, keep_embeddings: bool = False,
                        overwrite: bool = True, extra_meta: dict | None = None,
                        show_progress_bar: bool | None = None) -> FaissIndex:
    """Stream ``(doc_id, text, title)`` triples into an index directory, atomically.

    Embeddings go to a memmap inside the temporary directory (kept as ``embeddings.npy`` with
    ``keep_embeddings``), so a corpus larger than memory can be indexed. Nothing appears at
    ``output_dir`` unless the whole build succeeds.
    """
    meta = model_settings(model, model_name=model_name, precision=precision)
    meta.update(extra_meta or {})
    factory = check_factory(factory, meta["dimension"], meta["metric"])
    doc_ids: list[str] = []
    titles: list[str] = []

    def texts():
        for doc_id, text, title in docs:
            doc_ids.append(doc_id)
            titles.append(title)
            yield text

    with atomic_directory(Path(output_dir), marker=META_FILE, what="index directory", overwrite=overwrite) as tmp:
        t0 = time.perf_counter()
        emb = encode_corpus(model, texts(), count=count, normalize=meta["normalize_embeddings"],
                            batch_size=batch_size, precision=precision, chunk_size=chunk_size,
                            out=tmp / EMBEDDINGS_FILE, show_progress_bar=show_progress_bar)
        meta["encode_seconds"] = round(time.perf_counter() - t0, 3)
        index = build_from_embeddings(emb, doc_ids, meta, factory=factory, titles=titles)
        del emb
        if not keep_embeddings:
            (tmp / EMBEDDINGS_FILE).unlink()
        index._write_into(tmp)
    return index
