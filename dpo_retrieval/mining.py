"""``dpo-retrieval mine``: training triplets from a BEIR train split, plus a held-out dev split.

Positives are the qrels with score > 0. Hard negatives come from a rank window of a first-stage
retriever: the base model through a FAISS index (``dense``, reusing the corpus embeddings the
base model's evaluation needs anyway) or BM25 through ``bm25s`` (``bm25``). A judged document is
never a negative, and an optional margin drops candidates scoring too close to the positive
(likely false negatives). Everything is deterministic for a seed.

sentence-transformers' ``mine_hard_negatives`` does the dense part for (anchor, positive) pairs,
but it re-encodes the corpus on every call, cannot exclude the other judged documents of a query,
and has no BM25 source; this module keeps to what it cannot do and calls our shared encoder/index.
"""

from __future__ import annotations

import csv
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from dpo_retrieval._io import atomic_write_text, write_json
from dpo_retrieval.data.fields import join_title_text
from dpo_retrieval.errors import UserInputError, require

logger = logging.getLogger(__name__)

SOURCES = ("dense", "bm25")


@dataclass
class MineArgs:
    """How triplets are mined (``mine``, and ``compare``'s mining stage, whose key holds these fields).
    Checked when made; errors name the field (``negatives: must be > 0, got 0``)."""

    negatives: int = field(default=4, metadata={
        "help": "hard negatives per (query, positive) (4: what DPO trains on by default; the contrastive losses "
                "train on their first 1-2, see train --negatives)"})
    rank_min: int = field(default=10, metadata={
        "help": "skip the base retriever's top rank_min hits (likely unjudged positives) ..."})
    rank_max: int = field(default=50, metadata={
        "help": "... and sample negatives from the hits ranked rank_min+1 .. rank_max, never a judged document"})
    source: Literal["dense", "bm25"] = field(default="dense", metadata={
        "help": "first-stage retriever for negatives: dense = the base model through FAISS, bm25 = bm25s"})
    sampling: Literal["random", "top"] = field(default="random", metadata={
        "help": "random = sample within the window (seeded), top = take the highest-ranked"})
    margin: float | None = field(default=None, metadata={
        "help": "false-negative filter: drop candidates scoring above (positive score - margin) (dense only)"})
    dev_fraction: float = field(default=0.1, metadata={
        "help": "share of the train queries held out as a dev split for choosing hyper-parameters; the test split "
                "is only used for the final report"})
    seed: int = field(default=42, metadata={"help": "seed for sampling and the dev split"})

    def __post_init__(self) -> None:
        window = f"{self.rank_min}-{self.rank_max}"
        require([
            (self.negatives > 0, f"negatives: must be > 0, got {self.negatives}"),
            (0 <= self.rank_min < self.rank_max, f"rank_min: need 0 <= min < max in the rank window, got {window}"),
            (self.rank_max - self.rank_min >= self.negatives,
             f"rank_max: the rank window {window} holds fewer than negatives={self.negatives} candidates"),
            (self.source in SOURCES, f"source: choose dense or bm25, got {self.source!r}"),
            (self.sampling in ("random", "top"), f"sampling: choose random or top, got {self.sampling!r}"),
            (0.0 <= self.dev_fraction < 1.0, f"dev_fraction: must be in [0, 1), got {self.dev_fraction}"),
            (self.margin is None or self.margin >= 0, f"margin: must be >= 0, got {self.margin}"),
        ])


@dataclass
class MineJobArgs:
    """``mine``: which split to mine and where the triplets go (the model's options are EncodeArgs)."""

    dataset: str = field(metadata={"help": "BEIR dataset name or path (see evaluate --help)"})
    output: str = field(metadata={
        "help": "output directory: triplets.jsonl, train_qrels.tsv, dev_qrels.tsv and mining.json"})
    split: str = field(default="train", metadata={"help": "qrels split to mine"})


def split_dev(qids, fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministically hold out ``fraction`` of the query ids: ``(train_qids, dev_qids)``."""
    ordered = sorted(qids)
    random.Random(seed).shuffle(ordered)
    n_dev = int(round(len(ordered) * fraction))
    return sorted(ordered[n_dev:]), sorted(ordered[:n_dev])


def normalise_query(text: str) -> str:
    """How query texts are compared across splits: whitespace runs collapsed, stripped, casefolded."""
    return " ".join(text.split()).casefold()


def overlapping_queries(qids, queries: dict[str, str], texts) -> list[str]:
    """The ids among ``qids`` whose text (see :func:`normalise_query`) equals one of ``texts``, sorted."""
    other = {normalise_query(t) for t in texts}
    return sorted(q for q in qids if normalise_query(queries[q]) in other)


def split_query_texts(dataset_path, split: str) -> list[str]:
    """The texts of the queries judged in ``qrels/<split>.tsv`` of a BEIR folder ([] without that split)."""
    from dpo_retrieval.data.beir import read_qrels, read_queries

    path = Path(dataset_path)
    if not (path / "qrels" / f"{split}.tsv").is_file():
        return []
    queries = read_queries(path / "queries.jsonl")
    return [queries[q] for q in read_qrels(path / "qrels" / f"{split}.tsv") if q in queries]


def dense_candidates(model, dataset, qids: list[str], depth: int, *, embeddings_cache=None,
                     precision: str = "auto", batch_size: int = 64, model_key: str | None = None,
                     show_progress_bar: bool | None = None) -> dict[str, list[tuple[str, float]]]:
    """Top-``depth`` documents per query from the model through an exact FAISS index."""
    from dpo_retrieval.retrieval.search import search_dataset

    found = search_dataset(model, subset_queries(dataset, qids), depth, precision=precision, batch_size=batch_size,
                           embeddings_cache=embeddings_cache, model_key=model_key,
                           show_progress_bar=show_progress_bar)
    return {q: sorted(hits.items(), key=lambda x: -x[1]) for q, hits in found["run"].items()}


def bm25_candidates(dataset, qids: list[str], depth: int) -> dict[str, list[tuple[str, float]]]:
    """Top-``depth`` documents per query by BM25 (``bm25s``, English stopwords)."""
    import bm25s

    doc_ids = dataset.doc_ids
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(list(dataset.doc_texts()), stopwords="en", show_progress=False),
                    show_progress=False)
    tokens = bm25s.tokenize([dataset.queries[q] for q in qids], stopwords="en", show_progress=False)
    idx, scores = retriever.retrieve(tokens, k=min(depth, len(doc_ids)), show_progress=False)
    return {q: [(doc_ids[int(i)], float(s)) for i, s in zip(idx[r], scores[r])] for r, q in enumerate(qids)}


def subset_queries(dataset, qids):
    """The same split restricted to the queries ``qids`` (and their qrels)."""
    from dataclasses import replace

    return replace(dataset, queries={q: dataset.queries[q] for q in qids},
                   qrels={q: dataset.qrels[q] for q in qids if q in dataset.qrels})


def select_negatives(candidates: list[tuple[str, float]], judged: set[str], cfg: MineArgs, rng: random.Random,
                     positive_score: float | None = None) -> list[str]:
    """Pick ``cfg.negatives`` document ids from ranks ``(rank_min, rank_max]``, never a judged one."""
    window = [(d, s) for d, s in candidates[cfg.rank_min:cfg.rank_max] if d not in judged]
    if cfg.margin is not None and positive_score is not None:
        window = [(d, s) for d, s in window if s <= positive_score - cfg.margin]
    if len(window) < cfg.negatives:
        return []
    if cfg.sampling == "top":
        return [d for d, _ in window[:cfg.negatives]]
    return [d for d, _ in rng.sample(window, cfg.negatives)]


def mine_triplets(dataset, candidates: dict[str, list[tuple[str, float]]], qids: list[str], cfg: MineArgs,
                  positive_scores: dict[tuple[str, str], float] | None = None) -> tuple[list[dict], dict]:
    """Rows ``{anchor, positive, negative_1..k}`` (texts) and counts of what was kept and dropped."""
    texts = {}

    def text(doc_id: str) -> str:
        if doc_id not in texts:
            d = dataset.corpus[doc_id]
            texts[doc_id] = join_title_text(d.get("title"), d.get("text"))
        return texts[doc_id]

    rows, skipped = [], 0
    for q in qids:
        judged = set(dataset.qrels.get(q, {}))
        for pos, grade in sorted(dataset.qrels.get(q, {}).items()):
            if grade <= 0:
                continue
            rng = random.Random(f"{cfg.seed}:{q}:{pos}")
            score = positive_scores.get((q, pos)) if positive_scores else None
            negs = select_negatives(candidates.get(q, []), judged, cfg, rng, score)
            if not negs or not text(pos):
                skipped += 1
                continue
            rows.append({"anchor": dataset.queries[q], "positive": text(pos),
                         **{f"negative_{i + 1}": text(n) for i, n in enumerate(negs)}})
    return rows, {"triplets": len(rows), "positives_without_enough_negatives": skipped}


def _positive_scores(model, dataset, qids, embeddings_cache, precision) -> dict[tuple[str, str], float]:
    """Each judged (query, document)'s score on the FAISS candidates' scale (``similarity_settings``:
    cosine = inner product of normalized embeddings, dot = inner product, euclidean = -L2 distance),
    so ``margin`` compares like with like. The corpus rows come from the cache the candidates' index
    was built from."""
    from dpo_retrieval.retrieval.encoding import encode_texts
    from dpo_retrieval.retrieval.index import similarity_settings

    _, normalize, metric = similarity_settings(model)
    corpus = np.load(embeddings_cache, mmap_mode="r")
    row = {d: i for i, d in enumerate(dataset.doc_ids)}
    q_emb = encode_texts(model, [dataset.queries[q] for q in qids], task="query", precision=precision,
                         normalize_embeddings=normalize, show_progress_bar=False)
    out = {}
    for qi, q in enumerate(qids):
        for d in dataset.qrels.get(q, {}):
            doc = np.asarray(corpus[row[d]], dtype=np.float32)
            if normalize:  # a no-op on the cache evaluate_model writes; safe on a raw one
                doc = doc / max(float(np.linalg.norm(doc)), 1e-12)
            if metric == "l2":
                out[(q, d)] = -float(np.linalg.norm(q_emb[qi] - doc))
            else:
                out[(q, d)] = float(np.dot(q_emb[qi], doc))
    return out


def write_qrels(qrels: dict[str, dict[str, int]], path: Path) -> None:
    def write(f):
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["query-id", "corpus-id", "score"])
        for q in sorted(qrels):
            for d, s in sorted(qrels[q].items()):
                w.writerow([q, d, s])

    atomic_write_text(path, write)


def leak_free_split(dataset, cfg: MineArgs, exclude_texts=()) -> tuple[list[str], list[str], dict]:
    """``(train_qids, dev_qids, dropped)``: the dev split of :func:`split_dev`, then every query whose
    text is one of ``exclude_texts`` (the test queries) dropped from both sides, and every train query
    whose text is a dev query's dropped from train. ``dropped`` is what mining.json records."""
    train_q, dev_q = split_dev([q for q in dataset.qrels if q in dataset.queries], cfg.dev_fraction, cfg.seed)
    test_overlap = overlapping_queries(train_q + dev_q, dataset.queries, exclude_texts)
    dev_q = [q for q in dev_q if q not in set(test_overlap)]
    dev_overlap = overlapping_queries(train_q, dataset.queries, [dataset.queries[q] for q in dev_q])
    gone = set(test_overlap) | set(dev_overlap)
    train_q = [q for q in train_q if q not in gone]
    dropped = {"dropped_test_overlap": {"count": len(test_overlap), "query_ids": test_overlap},
               "dropped_dev_overlap": {"count": len(dev_overlap), "query_ids": dev_overlap}}
    return train_q, dev_q, dropped


def mine(model, dataset, output_dir, cfg: MineArgs, *, embeddings_cache=None, precision: str = "auto",
         batch_size: int = 64, exclude_texts=(), model_key: str | None = None,
         show_progress_bar: bool | None = None) -> dict:
    """Mine ``dataset`` (a BEIR train split) into ``output_dir``: ``triplets.jsonl``, ``train_qrels.tsv``,
    ``dev_qrels.tsv`` and ``mining.json`` (settings and counts). Returns the ``mining.json`` content.

    ``exclude_texts``: query texts never to train on or hold out for dev (the test queries); a train
    query with one of these texts (or with a dev query's text) is dropped, and mining.json says which.
    ``model_key``: identifies ``model`` in the embeddings cache's key (see ``retrieval.cache.encoding_key``).
    ``show_progress_bar``: the corpus encoding's bar (None: shown when logging is at INFO)."""
    from dpo_retrieval.data.triplets import save_triplets

    start = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    train_q, dev_q, dropped = leak_free_split(dataset, cfg, list(exclude_texts))
    for what, rec in dropped.items():
        if rec["count"]:
            logger.info("%s: %d train queries (%s)", what.replace("_", " "), rec["count"],
                        ", ".join(rec["query_ids"][:10]) + (" ..." if rec["count"] > 10 else ""))
    if not train_q:
        raise UserInputError(f"{dataset.path}: no train queries with judgments to mine")
    if cfg.source == "dense":
        if embeddings_cache is None:
            embeddings_cache = output_dir / "corpus_embeddings.npy"
        candidates = dense_candidates(model, dataset, train_q, cfg.rank_max, embeddings_cache=embeddings_cache,
                                      precision=precision, batch_size=batch_size, model_key=model_key,
                                      show_progress_bar=show_progress_bar)
        pos_scores = (_positive_scores(model, dataset, train_q, embeddings_cache, precision)
                      if cfg.margin is not None else None)
    else:
        candidates = bm25_candidates(dataset, train_q, cfg.rank_max)
        pos_scores = None
        if cfg.margin is not None:
            logger.warning("margin applies to dense mining only; ignored for bm25")
    rows, counts = mine_triplets(dataset, candidates, train_q, cfg, pos_scores)
    if not rows:
        raise UserInputError(f"{dataset.path}: no triplet could be mined with these settings "
                             f"(window {cfg.rank_min}-{cfg.rank_max}, margin {cfg.margin})")
    save_triplets(rows, output_dir / "triplets.jsonl")
    write_qrels({q: dataset.qrels[q] for q in train_q}, output_dir / "train_qrels.tsv")
    write_qrels({q: dataset.qrels[q] for q in dev_q}, output_dir / "dev_qrels.tsv")
    info = {
        "dataset": str(dataset.path), "split": dataset.split, "settings": asdict(cfg),
        "train_queries": len(train_q), "dev_queries": len(dev_q), **dropped, **counts,
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(info, output_dir / "mining.json")
    logger.info("mined %d triplets from %d train queries (%d held out for dev) in %.1fs",
                len(rows), len(train_q), len(dev_q), info["seconds"])
    return info
