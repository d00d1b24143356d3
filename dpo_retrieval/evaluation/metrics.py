"""Retrieval metrics: small pure functions over runs ``{qid: {docid: score}}`` and qrels ``{qid: {docid: grade}}``.

One pytrec_eval pass (:func:`score_run`) gives every metric of an evaluation, per query and as BEIR's
means (``EvaluateRetrieval.evaluate``'s: averaged over the queries in both qrels and run, rounded to
5 decimals), including MRR@k: pytrec_eval's ``recip_rank`` where the first relevant document ranks
within k, else 0. Ties in score are ranked as trec_eval ranks them (doc id descending) for every metric.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from dpo_retrieval.errors import UserInputError

#: k values of an evaluation; the report picks the metrics below from what they give.
K_VALUES = (1, 3, 5, 10, 100, 1000)
REPORTED = ("ndcg@1", "ndcg@3", "ndcg@5", "ndcg@10", "ndcg@100", "map@100",
            "recall@10", "recall@100", "recall@1000", "mrr@10")
TABLE = ("ndcg@10", "ndcg@100", "map@100", "recall@10", "recall@100", "recall@1000", "mrr@10")
#: pytrec_eval measure -> our name, in the order BEIR reports them
_MEASURES = {"ndcg_cut": "ndcg", "map_cut": "map", "recall": "recall", "P": "p"}
_PER_QUERY = ("ndcg_cut", "map_cut", "recall")  # the per-query rows (plus mrr@mrr_k)


def _judged_run(qrels, run, ignore_identical_ids: bool) -> tuple[dict, dict]:
    """Copies of ``qrels`` and of the queries of ``run`` that have judgments, without query-id ==
    doc-id hits when ``ignore_identical_ids`` (BEIR's default)."""
    if not isinstance(qrels, Mapping) or not isinstance(run, Mapping):
        raise TypeError("qrels and run must be mappings {qid: {docid: value}}")
    qrels = {q: dict(r) for q, r in qrels.items()}
    results = {q: {d: float(s) for d, s in hits.items() if not (ignore_identical_ids and d == q)}
               for q, hits in run.items() if q in qrels}
    return qrels, results


def _mrr_at(rr: float, k: int) -> float:
    """MRR@k of one query from its reciprocal rank ``1/rank``: ``rr`` when ``rank <= k``, else 0."""
    return rr if rr > 0 and round(1 / rr) <= k else 0.0


def score_run(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]],
              k_values: Iterable[int] = K_VALUES, *, ignore_identical_ids: bool = True,
              mrr_k: int = 10) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """``(means, per_query)`` from one pytrec_eval ``RelevanceEvaluator`` over all measures.

    ``means``: ``ndcg@k``, ``map@k``, ``recall@k``, ``p@k`` and ``mrr@k`` for each k, BEIR's means
    (rounded to 5 decimals). ``per_query``: ``{qid: {"ndcg@k", "map@k", "recall@k" for each k,
    "mrr@<mrr_k>"}}``, unrounded. Neither input is modified; a run without a judged query is an error."""
    import pytrec_eval

    ks = sorted(set(int(k) for k in k_values))
    qrels, results = _judged_run(qrels, run, ignore_identical_ids)
    if not results:
        raise UserInputError("no query of the run has relevance judgments")
    cut = ",".join(map(str, ks))
    measures = {f"{m}.{cut}" for m in _MEASURES} | {"recip_rank"}
    scores = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(results)
    means: dict[str, float] = {}
    for measure, name in _MEASURES.items():  # summed in pytrec_eval's query order, as BEIR does
        for k in ks:
            means[f"{name}@{k}"] = round(sum(v[f"{measure}_{k}"] for v in scores.values()) / len(scores), 5)
    rr = {q: scores.get(q, {}).get("recip_rank", 0.0) for q in results}
    for k in ks:  # over every judged query of the run, in the run's order, as BEIR's mrr does
        means[f"mrr@{k}"] = round(sum(_mrr_at(r, k) for r in rr.values()) / len(rr), 5)
    per_query = {}
    for qid, vals in scores.items():
        row = {}
        for key, value in vals.items():
            measure, _, k = key.rpartition("_")
            if measure in _PER_QUERY:
                row[f"{_MEASURES[measure]}@{k}"] = float(value)
        row[f"mrr@{mrr_k}"] = _mrr_at(rr[qid], mrr_k)
        per_query[qid] = row
    return means, per_query


def evaluate_run(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]],
                 k_values: Iterable[int] = K_VALUES, *, ignore_identical_ids: bool = True) -> dict[str, float]:
    """The means of :func:`score_run`: ``ndcg@k``, ``map@k``, ``recall@k``, ``p@k`` and ``mrr@k``."""
    return score_run(qrels, run, k_values, ignore_identical_ids=ignore_identical_ids)[0]


def per_query_metrics(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]],
                      k_values: Iterable[int] = K_VALUES, *, ignore_identical_ids: bool = True,
                      mrr_k: int = 10) -> dict[str, dict[str, float]]:
    """The per-query rows of :func:`score_run`: ``{qid: {"ndcg@10": .., "map@100": .., "mrr@10": ..}}``."""
    return score_run(qrels, run, k_values, ignore_identical_ids=ignore_identical_ids, mrr_k=mrr_k)[1]


def report_metrics(metrics: Mapping[str, float], names: Iterable[str] = REPORTED) -> dict[str, float]:
    """The issue's metric set (nDCG@1/3/5/10/100, MAP@100, Recall@10/100/1000, MRR@10) where present."""
    return {n: metrics[n] for n in names if n in metrics}


def format_table(result: Mapping, names: Iterable[str] = TABLE) -> str:
    m = result["metrics"]
    names = [n for n in names if n in m]
    head = "  ".join(f"{n:>11}" for n in names)
    row = "  ".join(f"{m[n]:>11.4f}" for n in names)
    t = result.get("timings", {})
    tail = (f"{result.get('dataset')}/{result.get('split')}: {result.get('num_queries')} queries, "
            f"{result.get('num_docs')} docs; encode {t.get('encode_corpus_s', 0) + t.get('encode_queries_s', 0):.1f}s, "
            f"search {t.get('search_s', 0):.2f}s, metrics {t.get('metrics_s', 0):.2f}s")
    return f"{head}\n{row}\n{tail}"
