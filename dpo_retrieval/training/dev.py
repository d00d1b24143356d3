"""Evaluation during training (``eval_strategy`` steps or epoch).

* the dev split (``eval_data`` / ``eval_qrels``): its queries scored against its corpus by
  sentence-transformers' ``InformationRetrievalEvaluator``, logged as ``eval_dev_<similarity>_ndcg@10``, ...;
* held-out triplets (``eval_triplets``): the eval loss and, for DPO, ``eval_rewards/*``;
* the metric that picks the best checkpoint (``load_best_model_at_end``) and drives early stopping:
  by default the evaluator's nDCG@10, else the eval loss.

Every input is checked (:func:`check_eval_args`, :func:`load_dev_split`) before the model loads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from dpo_retrieval.errors import UserInputError

logger = logging.getLogger(__name__)

#: the evaluator's name: its metrics are logged as eval_dev_*
EVALUATOR_NAME = "dev"
#: InformationRetrievalEvaluator's default cut-offs, metric by metric
_CUTOFFS = {"accuracy": (1, 3, 5, 10), "precision": (1, 3, 5, 10), "recall": (1, 3, 5, 10), "ndcg": (10,),
            "mrr": (10,), "map": (100,)}
REWARD_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


@dataclass
class DevSplit:
    """The dev queries, the corpus they search (``{id: text}``) and each query's relevant documents."""

    queries: dict[str, str]
    corpus: dict[str, str]
    relevant: dict[str, set[str]]


def strategy(value) -> str:
    """An ``IntervalStrategy`` (or its string) as a string: ``no``, ``steps``, ``epoch``."""
    return str(getattr(value, "value", value) or "no")


def check_eval_args(cfg, args) -> None:
    """The eval fields against the training arguments (raises UserInputError naming the field)."""
    evaluates = strategy(args.eval_strategy) != "no"
    dev = cfg.eval_data or cfg.eval_qrels
    if cfg.eval_qrels and not cfg.eval_data and not (cfg.corpus and cfg.queries):
        raise UserInputError("eval_qrels: needs eval_data (the BEIR dataset its ids refer to) or corpus and queries")
    if evaluates and not (dev or cfg.eval_triplets):
        raise UserInputError(f"eval_strategy: {strategy(args.eval_strategy)} needs something to evaluate: eval_data "
                             "(a BEIR dataset whose dev queries are scored) or eval_triplets")
    if not evaluates:
        if cfg.early_stopping_patience:
            raise UserInputError("early_stopping_patience: needs eval_strategy steps or epoch")
        if args.load_best_model_at_end:
            raise UserInputError("load_best_model_at_end: needs eval_strategy steps or epoch")
        if dev or cfg.eval_triplets:
            logger.warning("eval_data/eval_triplets given but eval_strategy is no: nothing is evaluated during training")


def _as_field(name: str, err: UserInputError) -> UserInputError:
    message = str(err)
    for prefix in ("dataset: ", "corpus: ", "queries: "):
        message = message.removeprefix(prefix)
    return UserInputError(f"{name}: {message}")


def load_eval_triplets(cfg):
    """The held-out triplets ``cfg.eval_triplets`` (None without them), read like the training triplets."""
    from dpo_retrieval.data.triplets import load_triplets

    if not cfg.eval_triplets:
        return None
    try:
        return load_triplets(cfg.eval_triplets, corpus=cfg.corpus, queries=cfg.queries)
    except UserInputError as err:
        raise _as_field("eval_triplets", err) from None


def load_dev_split(cfg) -> DevSplit | None:
    """The dev split ``cfg.eval_data`` / ``cfg.eval_qrels`` name (None without them), read and checked."""
    from dpo_retrieval.data.beir import iter_corpus, load_beir, read_qrels, read_queries, resolve_dataset
    from dpo_retrieval.data.fields import join_title_text

    if not (cfg.eval_data or cfg.eval_qrels):
        return None
    try:
        root = resolve_dataset(cfg.eval_data) if cfg.eval_data else None
    except UserInputError as err:
        raise _as_field("eval_data", err) from None
    if cfg.eval_qrels is None:
        if not (root / "qrels" / "dev.tsv").is_file():
            raise UserInputError(f"eval_qrels: {root} has no qrels/dev.tsv; give the dev queries' qrels (e.g. the "
                                 "dev_qrels.tsv of dpo-retrieval mine)")
        try:
            ds = load_beir(root, "dev")
        except UserInputError as err:
            raise _as_field("eval_data", err) from None
        corpus = dict(zip(ds.doc_ids, ds.doc_texts()))
        queries, qrels = ds.queries, ds.qrels
    else:
        corpus_file = root / "corpus.jsonl" if root else Path(cfg.corpus)
        queries_file = root / "queries.jsonl" if root else Path(cfg.queries)
        try:
            corpus = {d: join_title_text(title, text) for d, title, text in iter_corpus(corpus_file)}
            all_queries = read_queries(queries_file)
        except UserInputError as err:
            raise _as_field("eval_data" if root else "corpus", err) from None
        try:
            qrels = read_qrels(cfg.eval_qrels, doc_ids=corpus, query_ids=all_queries)
        except UserInputError as err:
            raise _as_field("eval_qrels", err) from None
        queries = {q: all_queries[q] for q in qrels}
    if not corpus:
        raise UserInputError("eval_data: the corpus is empty")
    relevant = {q: {d for d, grade in docs.items() if grade > 0} for q, docs in qrels.items()}
    relevant = {q: docs for q, docs in relevant.items() if docs}
    if not relevant:
        raise UserInputError("eval_qrels: no query has a relevant document (a score > 0)")
    split = DevSplit({q: queries[q] for q in relevant}, corpus, relevant)
    logger.info("dev split: %d queries against %d documents", len(split.queries), len(split.corpus))
    return split


def build_evaluator(split: DevSplit, similarity: str, batch_size: int):
    """sentence-transformers' ``InformationRetrievalEvaluator`` over ``split`` (queries through
    ``encode_query``, documents through ``encode_document``, so with the model's own prompts)."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    return InformationRetrievalEvaluator(split.queries, split.corpus, split.relevant, name=EVALUATOR_NAME,
                                         batch_size=batch_size, write_csv=False, show_progress_bar=False,
                                         main_score_function=similarity)


def primary_metric(similarity: str) -> str:
    """The evaluator's nDCG@10 as logged: the default best-model metric."""
    return f"eval_{EVALUATOR_NAME}_{similarity}_ndcg@10"


def eval_metric_names(similarity: str | None, *, eval_loss: bool, rewards: bool) -> list[str]:
    """The metrics an evaluation logs (``eval_`` prefixed): the evaluator's (when ``similarity`` is
    given), ``eval_loss`` and ``eval_rewards/*``."""
    names = [f"eval_{EVALUATOR_NAME}_{similarity}_{metric}@{k}"
             for metric, cutoffs in _CUTOFFS.items() for k in cutoffs] if similarity else []
    if eval_loss:
        names.append("eval_loss")
    if rewards:
        names += [f"eval_{name}" for name in REWARD_METRICS]
    return names


def best_model_settings(cfg, args, names: list[str], primary: str | None) -> dict:
    """``metric_for_best_model`` and ``greater_is_better`` for the trainer.

    Needed for ``load_best_model_at_end`` and early stopping. transformers fills an unset metric with
    ``loss``; with an evaluator that means its nDCG@10 (``primary``) here (ask for the eval loss as ``eval_loss``).
    An unknown metric is refused now rather than at the first evaluation."""
    metric = args.metric_for_best_model
    if strategy(args.eval_strategy) == "no" or metric is None and not (args.load_best_model_at_end or cfg.early_stopping_patience):
        return {}
    if metric in (None, "loss") and primary:
        metric = primary
        logger.info("metric_for_best_model: %s (higher is better)", metric)
        return {"metric_for_best_model": metric, "greater_is_better": True}
    metric = metric or "loss"
    full = metric if metric.startswith("eval_") else f"eval_{metric}"
    if full not in names:
        raise UserInputError(f"metric_for_best_model: {metric!r} is not logged by this run's evaluation; choose "
                             f"one of {', '.join(names)}")
    greater = args.greater_is_better if args.greater_is_better is not None else not full.endswith("loss")
    return {"metric_for_best_model": metric, "greater_is_better": greater}


def early_stopping(cfg) -> list:
    """transformers' ``EarlyStoppingCallback`` when ``early_stopping_patience`` is set."""
    if not cfg.early_stopping_patience:
        return []
    from transformers import EarlyStoppingCallback

    return [EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience,
                                  early_stopping_threshold=cfg.early_stopping_threshold)]
