"""A fast dev score for sweeps: each dev query re-ranks a fixed pool (its top documents under the base
model plus its judged documents), so a trained model encodes the pool instead of the whole corpus.

Both steps go through :func:`~dpo_retrieval.retrieval.search.search_dataset`, so prompts, similarity and
normalisation are exactly those of full retrieval; only the documents a query can see differ.
"""

from __future__ import annotations

import dataclasses


def candidate_pool(base, dev, depth: int, *, batch_size: int = 64, precision: str = "auto",
                   embeddings_cache=None, model_key: str | None = None) -> dict[str, list[str]]:
    """``{qid: doc ids}``: each dev query's ``depth`` best documents under ``base`` plus its judged ones
    (the base's corpus embeddings kept in ``embeddings_cache``, so another depth costs no re-encoding)."""
    from dpo_retrieval.retrieval.search import search_dataset

    run = search_dataset(base, dev, min(depth, len(dev.doc_ids)), batch_size=batch_size, precision=precision,
                         show_progress_bar=False, embeddings_cache=embeddings_cache, model_key=model_key)["run"]
    return {q: sorted(set(run.get(q, {})) | set(dev.qrels.get(q, {}))) for q in dev.queries}


def score_pool(model, dev, pool: dict[str, list[str]], *, batch_size: int = 64,
               precision: str = "auto") -> dict[str, dict[str, float]]:
    """The run ``{qid: {doc: score}}`` of ``model`` with each query limited to its own pool."""
    from dpo_retrieval.retrieval.search import search_dataset

    docs = sorted({d for c in pool.values() for d in c})
    sub = dataclasses.replace(dev, corpus={d: dev.corpus[d] for d in docs},
                              queries={q: dev.queries[q] for q in pool})
    run = search_dataset(model, sub, len(docs), batch_size=batch_size, precision=precision,
                         show_progress_bar=False)["run"]
    allowed = {q: set(c) for q, c in pool.items()}
    return {q: {d: s for d, s in run.get(q, {}).items() if d in allowed[q]} for q in pool}


def score_drift(run: dict[str, dict[str, float]], reference: dict[str, dict[str, float]],
                qrels: dict[str, dict[str, int]] | None = None) -> dict[str, float | int | None]:
    """How far a model's scores moved from the reference's on held-out pairs: the mean of
    ``|s(q, d) - s_ref(q, d)|`` over every (query, document) pair both runs score (``pool``), over the
    judged-relevant pairs among them (``judged``, with ``qrels``) and over the rest (``unjudged``), and the
    mean signed change on each (``*_signed``: does the positive's score rise or fall?); ``pairs`` counts
    the pool. DPO's beta is meant to bound this movement. ``None`` where a set is empty."""
    rel = {q: {d for d, r in (qrels or {}).get(q, {}).items() if r > 0} for q in run}
    groups: dict[str, list[float]] = {"pool": [], "judged": [], "unjudged": []}
    for q, docs in run.items():
        ref = reference.get(q, {})
        for d, s in docs.items():
            if d in ref:
                delta = float(s) - float(ref[d])
                groups["pool"].append(delta)
                groups["judged" if d in rel[q] else "unjudged"].append(delta)

    def mean(xs, f):
        return round(sum(f(x) for x in xs) / len(xs), 6) if xs else None

    out: dict[str, float | int | None] = {"pairs": len(groups["pool"])}
    for name, xs in groups.items():
        out[name] = mean(xs, abs)
        out[f"{name}_signed"] = mean(xs, float)
    return out
