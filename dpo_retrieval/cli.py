"""The ``dpo-retrieval`` command line: thin entry points (parse, one library call, say where it went).

Nothing in the library imports this module.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import sys
from pathlib import Path

from dpo_retrieval.cli_train import TRAIN_ALIASES, _add_train, _run_train, flag_name, train_parser  # noqa: F401
from dpo_retrieval.errors import UserInputError

logger = logging.getLogger("dpo_retrieval")


# ----------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block); ``--help`` still shows the usage.

    Subparsers inherit the class (``add_subparsers`` uses ``type(parent)``)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ----------------------------------------------------------------------------------------------
# option checks shared by several commands
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def unit_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < 0.5:
        raise argparse.ArgumentTypeError(f"must be in [0, 0.5), got {text}")
    return value


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="sentence-transformers model name or directory (default: the packaged "
                        "all-MiniLM-L6-v2, loaded offline)")
    p.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:N or mps; auto picks cuda > mps > cpu (default: auto)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow a model's own Python code to run when loading it (off by default)")


def _add_backend_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto",
                   help="encoding backend: torch (PyTorch), onnx (the transformer exported once to ONNX, "
                        "graph-optimised at O2, cached under ~/.cache/dpo_retrieval/onnx, run by ONNX Runtime on "
                        "CPU; needs the [onnx] extra), auto = onnx only on a CPU where a one-time probe finds it "
                        "faster at equal embeddings, else torch; training always runs torch (default: auto)")


# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dpo-retrieval",
        description="Train dual-encoder retrievers with DPO, index corpora with FAISS, and compare on BEIR.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    for add in _EXTRA_COMMANDS:
        add(sub)
    return parser


# ----------------------------------------------------------------------------------------------
# index / search / evaluate
def _add_encode_options(p: argparse.ArgumentParser, *, max_seq_default: str = "256") -> None:
    p.add_argument("--batch-size", type=positive_int, default=64, help="texts per forward pass (default: 64)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="encoding precision: auto = bf16 autocast on CPUs/GPUs that run bf16 natively, fp16 AMP "
                        "on older GPUs, else fp32; embeddings are float32 either way (default: auto)")
    p.add_argument("--max-seq-length", type=positive_int, default=None,
                   help=f"tokens per text; longer texts are truncated (default: {max_seq_default})")


def _model_help_from_index(p: argparse.ArgumentParser) -> None:
    for action in p._actions:
        if action.dest == "model":
            action.help = ("sentence-transformers model name or directory (default: the model recorded in the "
                           "index; another model is refused unless it produces the same embeddings)")


def _add_index(sub) -> None:
    p = sub.add_parser(
        "index", help="encode a corpus and build a FAISS index directory",
        description="Encode a BEIR-style corpus.jsonl (title + ' ' + text) with a sentence-transformers model and "
                    "save a FAISS index directory (index.faiss, doc_ids.json, titles.json, metadata.json). The "
                    "corpus is read and encoded in chunks; the directory appears only when the build succeeds.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--corpus", help="corpus.jsonl: one {\"_id\", \"title\", \"text\"} object per line")
    src.add_argument("--dataset", help="BEIR dataset name (resolved under $DPO_RETRIEVAL_DATA, downloaded if "
                                       "absent) or a dataset directory; its corpus.jsonl is indexed")
    p.add_argument("--output", required=True, help="index directory to write")
    _add_model_options(p)
    p.add_argument("--factory", default="Flat",
                   help="FAISS index factory string: Flat (exact), HNSW32, IVF{n},Flat, IVF{n},PQ{m} ... "
                        "(default: Flat)")
    _add_encode_options(p)
    _add_backend_option(p)
    p.add_argument("--chunk-size", type=positive_int, default=8192,
                   help="documents read and encoded per chunk (default: 8192)")
    p.add_argument("--keep-embeddings", action="store_true",
                   help="also keep the raw float32 document embeddings as embeddings.npy in the index directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing index directory at --output")
    p.set_defaults(func=_run_index)


def _run_index(args) -> None:
    from dpo_retrieval.data.beir import check_corpus
    from dpo_retrieval.retrieval.search import index_corpus
    from dpo_retrieval.models import DEFAULT_MODEL, load_model

    corpus = check_corpus(corpus=args.corpus, dataset=args.dataset)  # every line, before the model loads
    model = load_model(args.model, device=args.device, max_seq_length=args.max_seq_length or 256,
                       trust_remote_code=args.trust_remote_code, backend=args.backend)
    index = index_corpus(model, args.output, corpus=corpus, factory=args.factory,
                         batch_size=args.batch_size, precision=args.precision, chunk_size=args.chunk_size,
                         keep_embeddings=args.keep_embeddings, model_name=args.model or DEFAULT_MODEL,
                         overwrite=args.overwrite)
    logger.info("indexed %d documents (%s, dim %d) into %s", index.count, index.factory, index.dimension, args.output)


def _add_search(sub) -> None:
    p = sub.add_parser(
        "search", help="search an index with one query or a queries file",
        description="Encode queries the way the index's metadata says and search it. One --query prints rank, "
                    "doc id, score and title; --queries writes a run file (TREC: 'qid Q0 docid rank score tag', "
                    "what trec_eval and pytrec_eval read; or JSONL).")
    p.add_argument("--index", required=True, help="index directory written by `dpo-retrieval index`")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--query", help="one query text")
    src.add_argument("--queries", help="queries.jsonl: one {\"_id\", \"text\"} object per line")
    p.add_argument("-k", "--top-k", dest="k", type=positive_int, default=10, help="hits per query (default: 10)")
    p.add_argument("--output", help="write the run here: .trec (TREC run format) or .jsonl; without it the "
                                    "hits are printed")
    p.add_argument("--format", choices=["trec", "jsonl"], default=None,
                   help="run file format (default: from the --output suffix; .trec/.run/.txt = trec)")
    _add_model_options(p)
    _model_help_from_index(p)
    p.add_argument("--batch-size", type=positive_int, default=64, help="queries per forward pass (default: 64)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="query encoding precision (default: auto, see `evaluate --help`)")
    _add_backend_option(p)
    p.add_argument("--nprobe", type=positive_int, default=None,
                   help="IVF indexes: inverted lists visited per query; more = better recall, slower (default: 16)")
    p.add_argument("--ef-search", type=positive_int, default=None,
                   help="HNSW indexes: candidate list size; more = better recall, slower (default: max(128, k))")
    p.set_defaults(func=_run_search)


def _run_search(args) -> None:
    from dpo_retrieval.data.beir import read_queries
    from dpo_retrieval.evaluation.runs import write_run
    from dpo_retrieval.retrieval.index import FaissIndex
    from dpo_retrieval.retrieval.search import retrieve
    from dpo_retrieval.models import load_model

    index = FaissIndex.load(args.index)
    queries = {"query": args.query} if args.query is not None else read_queries(args.queries)
    model = load_model(args.model or index.meta.get("model"), device=args.device,
                       max_seq_length=index.meta.get("max_seq_length"), trust_remote_code=args.trust_remote_code,
                       backend=args.backend)
    run = retrieve(index, model, queries, args.k, batch_size=args.batch_size, precision=args.precision,
                   nprobe=args.nprobe, ef_search=args.ef_search)
    if args.output:
        titles = dict(zip(index.doc_ids, index.titles)) if index.titles is not None else None
        write_run(run, args.output, fmt=args.format, titles=titles)
        logger.info("wrote %d queries x top %d to %s", len(run), args.k, args.output)
        return
    for qid, hits in run.items():
        if args.queries:
            print(f"# {qid}: {queries[qid]}")
        for rank, (doc_id, score) in enumerate(sorted(hits.items(), key=lambda kv: -kv[1]), 1):
            print(f"{rank:>4}  {doc_id:<20} {score:8.4f}  {index.title(doc_id)}")


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="score a model on a BEIR dataset (nDCG, MAP, Recall, MRR)",
        description="Encode a BEIR split's corpus and queries, search with a FAISS index (exact by default), and "
                    "score the run with BEIR's EvaluateRetrieval (pytrec_eval): nDCG@1/3/5/10/100, MAP@100, "
                    "Recall@10/100/1000, MRR@10, with per-query scores and timings in the JSON.")
    p.add_argument("--dataset", required=True,
                   help="BEIR dataset name (resolved to $DPO_RETRIEVAL_DATA/<name>, default "
                        "~/.cache/dpo_retrieval/datasets; downloaded when absent) or a path with a '/' "
                        "(./scifact) used as is")
    p.add_argument("--split", default="test", help="qrels split: qrels/<split>.tsv (default: test)")
    p.add_argument("--output", required=True, help="results JSON (metrics, per-query scores, timings)")
    _add_model_options(p)
    _add_encode_options(p, max_seq_default="256, or the index's with --index")
    _add_backend_option(p)
    p.add_argument("--top-k", type=positive_int, default=1000, help="hits retrieved per query (default: 1000)")
    p.add_argument("--factory", default="Flat",
                   help="FAISS factory for the index built here (default: Flat, exact search)")
    p.add_argument("--index", default=None,
                   help="reuse this saved index directory (same corpus and model) instead of encoding the corpus")
    p.add_argument("--save-index", default=None, help="also save the index built here to this directory")
    p.add_argument("--embeddings-cache", default=None,
                   help=".npy file for the corpus embeddings: reused when made by the same model and settings "
                        "over the same corpus, else written")
    p.add_argument("--run", default=None, help="also write the run (.trec or .jsonl)")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args) -> None:
    from dpo_retrieval._io import write_json
    from dpo_retrieval.data.beir import load_beir
    from dpo_retrieval.evaluation.evaluate import evaluate_model
    from dpo_retrieval.evaluation.metrics import format_table
    from dpo_retrieval.evaluation.runs import write_run
    from dpo_retrieval.retrieval.index import FaissIndex
    from dpo_retrieval.models import DEFAULT_MODEL, load_model

    index = FaissIndex.load(args.index) if args.index else None
    max_len = args.max_seq_length or (index.meta.get("max_seq_length") if index else None) or 256
    dataset = load_beir(args.dataset, args.split)
    model = load_model(args.model, device=args.device, max_seq_length=max_len, trust_remote_code=args.trust_remote_code,
                       backend=args.backend)
    result = evaluate_model(model, dataset, top_k=args.top_k, batch_size=args.batch_size, precision=args.precision,
                            factory=args.factory, index=index, save_index=args.save_index,
                            embeddings_cache=args.embeddings_cache, model_name=args.model or DEFAULT_MODEL)
    run = result.pop("run")
    if args.run:
        write_run(run, args.run)
        logger.info("wrote the run to %s", args.run)
    write_json(result, args.output)
    print(format_table(result))
    logger.info("wrote results to %s", args.output)


# ----------------------------------------------------------------------------------------------
# mine / compare
def _add_mining_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--negatives", type=positive_int, default=1, help="hard negatives per (query, positive) (default: 1)")
    p.add_argument("--rank-window", default="10-50",
                   help="MIN-MAX: sample negatives from the hits ranked MIN+1..MAX by the base retriever, never "
                        "a judged document (default: 10-50)")
    p.add_argument("--source", choices=["dense", "bm25"], default="dense",
                   help="first-stage retriever for negatives: dense = the base model through FAISS, bm25 = bm25s "
                        "(default: dense)")
    p.add_argument("--sampling", choices=["random", "top"], default="random",
                   help="random = sample within the window (seeded), top = take the highest-ranked (default: random)")
    p.add_argument("--margin", type=float, default=None,
                   help="false-negative filter: drop candidates scoring above (positive score - MARGIN) (dense only)")
    p.add_argument("--dev-fraction", type=float, default=0.1,
                   help="share of the train queries held out as a dev split for choosing hyper-parameters; the "
                        "test split is only used for the final report (default: 0.1)")


def _mine_config(args):
    from dpo_retrieval.mining import MineConfig

    try:
        lo, hi = (int(x) for x in args.rank_window.split("-"))
    except ValueError:
        raise UserInputError(f"--rank-window: expected MIN-MAX such as 10-50, got {args.rank_window!r}") from None
    return MineConfig(negatives=args.negatives, rank_min=lo, rank_max=hi, source=args.source, sampling=args.sampling,
                      margin=args.margin, dev_fraction=args.dev_fraction, seed=args.seed).check()


def _add_mine(sub) -> None:
    p = sub.add_parser(
        "mine", help="mine training triplets (hard negatives) from a BEIR train split",
        description="Positives are qrels with score > 0; hard negatives come from a rank window of the base "
                    "model (FAISS) or BM25, never a judged document. A train query whose text is a test query's (when "
                    "the dataset has a test split) or a dev query's is dropped. Writes triplets.jsonl, "
                    "train_qrels.tsv, dev_qrels.tsv (held-out train queries) and mining.json to --output.")
    p.add_argument("--dataset", required=True, help="BEIR dataset name or path (see evaluate --help)")
    p.add_argument("--split", default="train", help="qrels split to mine (default: train)")
    p.add_argument("--output", required=True, help="output directory")
    _add_model_options(p)
    _add_encode_options(p)
    _add_backend_option(p)
    _add_mining_options(p)
    p.add_argument("--seed", type=int, default=42, help="seed for sampling and the dev split (default: 42)")
    p.set_defaults(func=_run_mine)


def _run_mine(args) -> None:
    from dpo_retrieval.data.beir import load_beir
    from dpo_retrieval.mining import mine, split_query_texts
    from dpo_retrieval.models import load_model

    cfg = _mine_config(args)
    dataset = load_beir(args.dataset, args.split)
    # never train on a test query: train queries with a test query's text are dropped
    test_texts = split_query_texts(dataset.path, "test") if args.split != "test" else []
    model = load_model(args.model, device=args.device, max_seq_length=args.max_seq_length or 256,
                       trust_remote_code=args.trust_remote_code, backend=args.backend)
    info = mine(model, dataset, args.output, cfg, precision=args.precision, batch_size=args.batch_size,
                exclude_texts=test_texts)
    logger.info("wrote %d triplets to %s", info["triplets"], Path(args.output) / "triplets.jsonl")


def _add_compare(sub) -> None:
    from dpo_retrieval.experiment.compare import PRESETS

    presets = "; ".join(f"{k}: " + ", ".join(f"{n}={v}" for n, v in d.items()) for k, d in PRESETS.items())
    p = sub.add_parser(
        "compare", help="mine triplets, train DPO and contrastive from one base, evaluate on BEIR, report",
        description="The whole experiment in one command: mine triplets from the dataset's train split, train "
                    "every --losses entry from the same base on the same triplets and budget, evaluate the base "
                    "and each model on the test split (plus a dev split held out from train, and any "
                    "--eval-datasets), and write report.json, report.md and PNG plots with paired significance "
                    "tests. Each stage is cached under --output and skipped when its inputs are unchanged, so an "
                    f"interrupted run resumes. Presets ({presets}); options override presets.")
    p.add_argument("--dataset", required=True, help="BEIR dataset with train and test splits (name or path)")
    p.add_argument("--output", required=True, help="run directory")
    _add_model_options(p)
    p.add_argument("--losses", default="dpo,contrastive",
                   help="comma-separated losses to train: dpo, contrastive, dpr (default: dpo,contrastive)")
    p.add_argument("--eval-datasets", default="",
                   help="comma-separated extra BEIR test sets for out-of-domain retention, e.g. dbpedia-entity-5k")
    p.add_argument("--preset", choices=["quick", "full"], default="quick", help="budget preset (default: quick)")
    p.add_argument("--max-triplets", type=positive_int, default=None, help="train on a seeded subsample of this many triplets")
    p.add_argument("--train-max-seq-length", type=positive_int, default=None, help="tokens per text in training")
    p.add_argument("--eval-max-seq-length", type=positive_int, default=256, help="tokens per text in evaluation (default: 256)")
    p.add_argument("--epochs", type=positive_float, default=None, help="training epochs")
    p.add_argument("--batch-size", type=positive_int, default=None, help="triplets per training batch")
    p.add_argument("--lr", type=positive_float, default=None, help="learning rate")
    p.add_argument("--warmup", type=float, default=0.1, help="warm-up ratio (< 1) or steps (default: 0.1)")
    p.add_argument("--seed", type=int, default=42, help="seed for mining, subsampling and training (default: 42)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="training and encoding precision (default: auto = bf16 where native)")
    p.add_argument("--eval-batch-size", type=positive_int, default=64, help="encoding batch size (default: 64)")
    _add_backend_option(p)
    p.add_argument("--top-k", type=positive_int, default=1000, help="hits retrieved per query (default: 1000)")
    p.add_argument("--beta", type=positive_float, default=None, help="DPO beta (default by policy: linear 1, sigmoid 10)")
    p.add_argument("--scale", type=positive_float, default=None, help="DPO scale (default by policy: linear 20, sigmoid 10)")
    p.add_argument("--policy", choices=["linear", "sigmoid"], default="linear", help="DPO policy (default: linear)")
    p.add_argument("--loss-type", choices=["sigmoid", "ipo"], default="sigmoid", help="DPO objective (default: sigmoid)")
    p.add_argument("--label-smoothing", type=unit_interval, default=0.0, help="cDPO epsilon (default: 0)")
    p.add_argument("--dropout", choices=["on", "off"], default="on",
                   help="dropout while training, for every loss: on (the model's own) or off (default: on)")
    _add_mining_options(p)
    p.set_defaults(func=_run_compare)


def _run_compare(args) -> None:
    from dpo_retrieval.experiment.compare import CompareConfig, run_compare

    split = lambda text: tuple(x.strip() for x in text.split(",") if x.strip())  # noqa: E731
    cfg = CompareConfig(
        dataset=args.dataset, output=args.output, model=args.model, losses=split(args.losses),
        eval_datasets=split(args.eval_datasets), preset=args.preset, max_triplets=args.max_triplets,
        train_max_seq_length=args.train_max_seq_length, eval_max_seq_length=args.eval_max_seq_length,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, seed=args.seed,
        device=args.device, precision=args.precision, eval_batch_size=args.eval_batch_size, top_k=args.top_k,
        beta=args.beta, scale=args.scale, policy=args.policy, loss_type=args.loss_type,
        label_smoothing=args.label_smoothing, dropout=args.dropout, mining=_mine_config(args), show_progress_bar=not args.quiet,
        trust_remote_code=args.trust_remote_code, backend=args.backend)
    out = run_compare(cfg)
    print(Path(out["report_md"]).read_text())
    logger.info("wrote %s, %s and %d plots", out["report_json"], out["report_md"], len(out["plots"]))


_EXTRA_COMMANDS = [_add_index, _add_search, _add_evaluate, _add_mine, _add_compare]


def _flagged(message: str) -> str:
    """A library error names the field (``beta: must be ...``); the command line shows its flag."""
    m = re.match(r"([a-z][a-z_]*): ", message)
    if not m:
        return message
    from dpo_retrieval.training.args import DPOArgs, TrainArgs

    import dataclasses

    fields = {f.name for cls in (TrainArgs, DPOArgs) for f in dataclasses.fields(cls)}
    if m.group(1) not in fields | set(TRAIN_ALIASES) | {"save_steps", "logging_steps", "max_steps", "seed"}:
        return message
    return flag_name(m.group(1)) + message[len(m.group(1)):]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    if args.command != "train" and extra:
        parser.parse_args(argv)  # argparse's own one-line error for the unknown arguments
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # "Generating train split" bars on every load are noise here; datasets is imported only when needed
    if "datasets" in sys.modules:
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    else:
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    try:
        if args.command == "train":
            _run_train(args, extra)
        else:
            args.func(args)
    except UserInputError as err:
        if args.debug:
            raise
        print(f"dpo-retrieval {args.command}: error: {_flagged(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dpo-retrieval {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
