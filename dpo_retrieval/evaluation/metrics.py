"""Retrieval metrics: small pure functions over runs ``{qid: {docid: score}}`` and qrels ``{qid: {docid: grade}}``.

Mean metrics come from BEIR's ``EvaluateRetrieval`` (pytrec_eval), per-query values from pytrec_eval.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from dpo_retrieval.data.beir import _quiet_beir
from dpo_retrieval.errors import UserInputError

#: k values handed to BEIR; the report picks the metrics below from what it returns.
K_VALUES = (1, 3, 5, 10, 100, 1000)
REPORTED = ("ndcg@1", "ndcg@3", "ndcg@5", "ndcg@10", "ndcg@100", "map@100",
            "recall@10", "recall@100", "recall@1000", "mrr@10")
TABLE = ("ndcg@10", "ndcg@100", "map@100", "recall@10", "recall@100", "recall@1000", "mrr@10")


# ----------------------------------------------------------------------------------------------
# metrics: pure functions over runs {qid: {docid: score}}
def _without_self_hits(run: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """A copy of ``run`` without query-id == doc-id hits (BEIR's ``ignore_identical_ids=True``)."""
    return {q: {d: float(s) for d, s in hits.items() if d != q} for q, hits in run.items()}


def _check_inputs(qrels, run) -> None:
    if not isinstance(qrels, Mapping) or not isinstance(run, Mapping):
        raise TypeError("qrels and run must be mappings {qid: {docid: value}}")


def evaluate_run(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]],
                 k_values: Iterable[int] = K_VALUES, *, ignore_identical_ids: bool = True) -> dict[str, float]:
    """Mean metrics through BEIR's ``EvaluateRetrieval``: ``ndcg@k``, ``map@k``, ``recall@k``,
    ``p@k`` for each k, plus ``mrr@k`` (BEIR's ``evaluate_custom``). Averages over the queries
    that appear in both qrels and run (pytrec_eval's convention). Neither input is modified."""
    from beir.retrieval.evaluation import EvaluateRetrieval

    _check_inputs(qrels, run)
    k_values = sorted(set(int(k) for k in k_values))
    results = _without_self_hits(run) if ignore_identical_ids else {q: dict(h) for q, h in run.items()}
    qrels = {q: dict(r) for q, r in qrels.items()}
    results = {q: h for q, h in results.items() if q in qrels}
    if not results:
        raise UserInputError("no query of the run has relevance judgments")
    with _quiet_beir():
        ndcg, _map, recall, precision = EvaluateRetrieval.evaluate(qrels, results, k_values, ignore_identical_ids=False)
        mrr = EvaluateRetrieval.evaluate_custom({q: qrels[q] for q in results}, results, k_values, metric="mrr")
    out: dict[str, float] = {}
    for block in (ndcg, _map, recall, precision, mrr):
        out.update({k.lower(): float(v) for k, v in block.items()})
    return out


def per_query_metrics(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]],
                      k_values: Iterable[int] = K_VALUES, *, ignore_identical_ids: bool = True,
                      mrr_k: int = 10) -> dict[str, dict[str, float]]:
    """``{qid: {"ndcg@10": .., "map@100": .., "recall@100": .., "mrr@10": ..}}`` from pytrec_eval
    (MRR@k = pytrec_eval's ``recip_rank`` on the run cut to its top k)."""
    import pytrec_eval

    _check_inputs(qrels, run)
    ks = ",".join(str(k) for k in sorted(set(int(k) for k in k_values)))
    results = _without_self_hits(run) if ignore_identical_ids else {q: dict(h) for q, h in run.items()}
    qrels = {q: dict(r) for q, r in qrels.items()}
    results = {q: h for q, h in results.items() if q in qrels}
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{ks}", f"map_cut.{ks}", f"recall.{ks}"})
    scores = evaluator.evaluate(results)
    top = {q: dict(sorted(h.items(), key=lambda kv: (-kv[1], kv[0]))[:mrr_k]) for q, h in results.items()}
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top)
    out: dict[str, dict[str, float]] = {}
    for qid, vals in scores.items():
        row = {}
        for key, value in vals.items():
            measure, k = key.rsplit("_", 1)
            name = {"ndcg_cut": "ndcg", "map_cut": "map", "recall": "recall"}[measure]
            row[f"{name}@{k}"] = float(value)
        row[f"mrr@{mrr_k}"] = float(rr.get(qid, {}).get("recip_rank", 0.0))
        out[qid] = row
    return out


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
