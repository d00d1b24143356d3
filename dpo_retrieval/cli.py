"""The ``dpo-retrieval`` command line: thin entry points (parse, one library call, say where it went).

Every subcommand's options are the library's dataclasses (``TrainArgs``/``DPOArgs``/sentence-transformers'
training arguments, ``EncodeArgs``, ``IndexArgs``, ``SearchArgs``, ``EvalArgs``, ``MineArgs``,
``CompareArgs``), turned into a parser by ``transformers.HfArgumentParser`` when the command runs
(:mod:`dpo_retrieval.cli_parser`), as TRL's CLI does; a first argument ending in .yaml/.yml/.json is a
config file for any subcommand. Nothing in the library imports this module.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from dpo_retrieval.cli_args import flagged, split_config
from dpo_retrieval.cli_train import run_train, train_parser  # noqa: F401
from dpo_retrieval.errors import UserInputError

logger = logging.getLogger("dpo_retrieval")

#: subcommand -> (one-line help, description)
COMMANDS = {
    "train": ("fine-tune a dual encoder on a triplet file with DPO or a contrastive loss "
              "(options: dpo-retrieval train --help; a .yaml/.json config file works too)", ""),
    "index": ("encode a corpus and build a FAISS index directory",
              "Encode a BEIR-style corpus.jsonl (title + ' ' + text) with a sentence-transformers model and save a "
              "FAISS index directory (index.faiss, doc_ids.json, titles.json, metadata.json). The corpus is read "
              "and encoded in chunks; the directory appears only when the build succeeds."),
    "search": ("search an index with one query or a queries file",
               "Encode queries the way the index's metadata says and search it. One --query prints rank, doc id, "
               "score and title; --queries writes a run file (TREC: 'qid Q0 docid rank score tag', what trec_eval "
               "and pytrec_eval read; or JSONL)."),
    "evaluate": ("score a model on a BEIR dataset (nDCG, MAP, Recall, MRR)",
                 "Encode a BEIR split's corpus and queries, search with a FAISS index (exact by default), and score "
                 "the run in one pytrec_eval pass (means as BEIR computes them): nDCG@1/3/5/10/100, MAP@100, "
                 "Recall@10/100/1000, MRR@10, with per-query scores and timings in the JSON."),
    "mine": ("mine training triplets (hard negatives) from a BEIR train split",
             "Positives are qrels with score > 0; hard negatives come from a rank window of the base model (FAISS) "
             "or BM25, never a judged document. A train query whose text is a test query's (when the dataset has a "
             "test split) or a dev query's is dropped. Writes triplets.jsonl, train_qrels.tsv, dev_qrels.tsv "
             "(held-out train queries) and mining.json to --output."),
    "compare": ("mine triplets, train DPO and other losses from one base, evaluate on BEIR, report",
                "The whole experiment in one command: mine triplets from the dataset's train split, train every "
                "--losses entry (dpo, contrastive, dpr, cmnrl, dpo+mnrl, sdpo; default dpo+mnrl and contrastive), "
                "once per --seeds entry, from the same base on the same triplets and budget (--wise-ft: also its "
                "WiSE-FT interpolations with the base), evaluate the base and each model on the test split (plus a "
                "dev split held out from train, and any --eval-datasets), and write report.json, report.md and PNG "
                "plots with paired significance tests. Each stage is cached under --output and skipped when its "
                "inputs are unchanged, so an interrupted run resumes. "
                "--preset sets the training budget; options override it."),
    "sweep": ("train a grid of options on the same triplets and score each on the dev split (never test)",
              "dpo-retrieval sweep GRID.yaml: every combination of the grid file's `grid:` values (over `fixed:`), "
              "trained on the triplets of a `mine` directory and scored on its dev queries; a fast score re-ranks "
              "each dev query's base top --fast-depth plus its judged documents, --full-dev also scores full "
              "retrieval and the Spearman agreement of the two. Results are appended to OUTPUT/sweep.json as "
              "they come; a re-run resumes."),
    "merge": ("WiSE-FT: interpolate a fine-tuned model's weights with its base's",
              "dpo-retrieval merge --alpha A BASE FINETUNED OUTPUT saves (1-A)*base + A*finetuned as a "
              "sentence-transformers model (Wortsman et al. 2022); both must share the architecture."),
}
CONFIG_NOTE = (" A first argument ending in .yaml, .yml or .json is a config file of field: value pairs; flags "
               "override it. Dash and underscore spellings of every option work.")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block); ``--help`` still shows the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _rank_window_flag(parser) -> None:
    parser.add_argument("--rank-window", "--rank_window", default=None, metavar="MIN-MAX",
                        help="sets rank_min and rank_max: sample negatives from the hits ranked MIN+1..MAX by the "
                             "base retriever, never a judged document (default: 10-50)")


def _spec(name: str):
    """``(dataclasses, exclusive field pairs, extra arguments)`` of a command; imports only its own."""
    if name == "index":
        from dpo_retrieval.retrieval.args import EncodeArgs, IndexArgs

        return (IndexArgs, EncodeArgs), [("corpus", "dataset")], None
    if name == "search":
        from dpo_retrieval.retrieval.args import EncodeArgs, SearchArgs

        return (SearchArgs, EncodeArgs), [("query", "queries")], None
    if name == "evaluate":
        from dpo_retrieval.evaluation.args import EvalArgs
        from dpo_retrieval.retrieval.args import EncodeArgs

        return (EvalArgs, EncodeArgs), [], None
    if name == "mine":
        from dpo_retrieval.mining import MineArgs, MineJobArgs
        from dpo_retrieval.retrieval.args import EncodeArgs

        return (MineJobArgs, EncodeArgs, MineArgs), [], _rank_window_flag
    if name == "sweep":
        from dpo_retrieval.experiment.sweep import SweepArgs

        return (SweepArgs,), [], None
    if name == "merge":
        from dpo_retrieval.training.merge import MergeArgs

        return (MergeArgs,), [], _merge_paths
    from dpo_retrieval.experiment.compare_args import CompareArgs

    return (CompareArgs,), [], _rank_window_flag


def _merge_paths(parser) -> None:
    parser.add_argument("paths", nargs="*", metavar="BASE FINETUNED OUTPUT",
                        help="the three models as positional arguments (or --base, --finetuned, --output)")


def command_parser(name: str, config: dict | None = None):
    """The parser of a subcommand other than train, generated from its dataclasses."""
    from dpo_retrieval.cli_parser import ArgParser

    types, exclusive, extra = _spec(name)
    return ArgParser(types, prog=f"dpo-retrieval {name}", description=COMMANDS[name][1] + CONFIG_NOTE,
                     config=config, exclusive=exclusive, extra=extra)


def build_parser(*, lazy: bool = False) -> argparse.ArgumentParser:
    """The whole command line. ``lazy``: every subcommand a placeholder whose parser ``main`` builds
    once it knows the command (compare's imports torch; train checks its triplets first)."""
    parser = _Parser(
        prog="dpo-retrieval",
        description="Train dual-encoder retrievers with DPO, index corpora with FAISS, and compare on BEIR.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_, _) in COMMANDS.items():
        sub.add_parser(name, add_help=False, help=help_)
        if not lazy and name != "train":
            sub._name_parser_map[name] = command_parser(name)
    return parser


def parse_command(name: str, argv: list[str], config: dict | None = None, *, dests: set | None = None) -> list:
    """The dataclass objects a subcommand (not train) runs with, from its arguments and a config file's values."""
    from dpo_retrieval.cli_parser import check_config_keys

    parser = command_parser(name, config)
    if dests is not None:
        dests.update(parser.dests())
    check_config_keys(parser)
    namespace = parser.parse_args(argv)
    paths = vars(namespace).pop("paths", None)
    if paths:
        if len(paths) != 3:
            raise UserInputError(f"merge: expected three paths, BASE FINETUNED OUTPUT; got {len(paths)}")
        namespace.base, namespace.finetuned, namespace.output = paths
    text = vars(namespace).pop("rank_window", None)
    if text is not None:
        try:
            namespace.rank_min, namespace.rank_max = (int(x) for x in str(text).split("-"))
        except ValueError:
            raise UserInputError(f"rank_window: expected MIN-MAX such as 10-50, got {text!r}") from None
    return parser.build(namespace)


# ----------------------------------------------------------------------------------------------
def _load_model(enc, max_seq_length, fallback=None):
    from dpo_retrieval.models import load_model

    return load_model(enc.model or fallback, device=enc.device, max_seq_length=max_seq_length,
                      trust_remote_code=enc.trust_remote_code, backend=enc.backend)


def _run_index(opts: list, quiet: bool) -> None:
    from dpo_retrieval.data.beir import check_corpus
    from dpo_retrieval.models import DEFAULT_MODEL
    from dpo_retrieval.retrieval.search import index_corpus

    args, enc = opts
    corpus = check_corpus(corpus=args.corpus, dataset=args.dataset)  # every line, before the model loads
    model = _load_model(enc, enc.seq_length())
    index = index_corpus(model, args.output, corpus=corpus, factory=args.factory, batch_size=enc.batch_size,
                         precision=enc.precision, chunk_size=args.chunk_size, keep_embeddings=args.keep_embeddings,
                         model_name=enc.model or DEFAULT_MODEL, overwrite=args.overwrite, shard=args.shard)
    if index is not None:  # None: a shard written, another process merges
        logger.info("indexed %d documents (%s, dim %d) into %s", index.count, index.factory, index.dimension,
                    args.output)


def _run_search(opts: list, quiet: bool) -> None:
    from dpo_retrieval.data.beir import read_queries
    from dpo_retrieval.evaluation.runs import write_run
    from dpo_retrieval.retrieval.index import FaissIndex
    from dpo_retrieval.retrieval.search import retrieve

    args, enc = opts
    index = FaissIndex.load(args.index)
    queries = {"query": args.query} if args.query is not None else read_queries(args.queries)
    model = _load_model(enc, enc.max_seq_length or index.meta.get("max_seq_length"), index.meta.get("model"))
    run = retrieve(index, model, queries, args.top_k, batch_size=enc.batch_size, precision=enc.precision,
                   nprobe=args.nprobe, ef_search=args.ef_search)
    if args.output:
        titles = dict(zip(index.doc_ids, index.titles)) if index.titles is not None else None
        write_run(run, args.output, fmt=args.format, titles=titles)
        logger.info("wrote %d queries x top %d to %s", len(run), args.top_k, args.output)
        return
    for qid, hits in run.items():
        if args.queries:
            print(f"# {qid}: {queries[qid]}")
        for rank, (doc_id, score) in enumerate(sorted(hits.items(), key=lambda kv: -kv[1]), 1):
            print(f"{rank:>4}  {doc_id:<20} {score:8.4f}  {index.title(doc_id)}")


def _run_evaluate(opts: list, quiet: bool) -> None:
    from dpo_retrieval._io import write_json
    from dpo_retrieval.data.beir import load_beir
    from dpo_retrieval.evaluation.evaluate import evaluate_model
    from dpo_retrieval.evaluation.metrics import format_table
    from dpo_retrieval.evaluation.runs import write_run
    from dpo_retrieval.models import DEFAULT_MODEL
    from dpo_retrieval.retrieval.index import FaissIndex

    args, enc = opts
    index = FaissIndex.load(args.index) if args.index else None
    dataset = load_beir(args.dataset, args.split)
    model = _load_model(enc, enc.seq_length(index))
    result = evaluate_model(model, dataset, top_k=args.top_k, batch_size=enc.batch_size, precision=enc.precision,
                            factory=args.factory, index=index, save_index=args.save_index,
                            embeddings_cache=args.embeddings_cache, model_name=enc.model or DEFAULT_MODEL)
    run = result.pop("run")
    if args.run:
        write_run(run, args.run)
        logger.info("wrote the run to %s", args.run)
    write_json(result, args.output)
    print(format_table(result))
    logger.info("wrote results to %s", args.output)


def _run_mine(opts: list, quiet: bool) -> None:
    from dpo_retrieval.data.beir import load_beir
    from dpo_retrieval.mining import mine, split_query_texts

    job, enc, cfg = opts
    dataset = load_beir(job.dataset, job.split)
    # never train on a test query: train queries with a test query's text are dropped
    test_texts = split_query_texts(dataset.path, "test") if job.split != "test" else []
    model = _load_model(enc, enc.seq_length())
    info = mine(model, dataset, job.output, cfg, precision=enc.precision, batch_size=enc.batch_size,
                exclude_texts=test_texts)
    logger.info("wrote %d triplets to %s", info["triplets"], Path(job.output) / "triplets.jsonl")


def _run_compare(opts: list, quiet: bool) -> None:
    from dpo_retrieval.experiment.compare import run_compare

    (cfg,) = opts
    out = run_compare(dataclasses.replace(cfg, show_progress_bar=False) if quiet else cfg)
    print(Path(out["report_md"]).read_text())
    logger.info("wrote %s, %s and %d plots", out["report_json"], out["report_md"], len(out["plots"]))


def _run_sweep(opts: list, quiet: bool) -> None:
    from dpo_retrieval.experiment.sweep import run_sweep

    (args,) = opts
    summary = run_sweep(args)
    logger.info("%d points scored; best on dev: %s; agreement of fast and full dev: %s",
                len(summary["points"]), summary["best"], summary.get("agreement_ndcg@10"))


def _run_merge(opts: list, quiet: bool) -> None:
    from dpo_retrieval.training.merge import merge_models

    (args,) = opts
    out = merge_models(args.base, args.finetuned, args.output, args.alpha, trust_remote_code=args.trust_remote_code)
    logger.info("saved the merged model (alpha %g) to %s", args.alpha, out)


RUNNERS = {"index": _run_index, "search": _run_search, "evaluate": _run_evaluate, "mine": _run_mine,
           "compare": _run_compare, "sweep": _run_sweep, "merge": _run_merge}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = build_parser(lazy=True).parse_known_args(argv)
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
    dests: set[str] = set()  # the command's fields: a library error naming one shows its flag
    try:
        if args.command == "sweep" and rest and not rest[0].startswith("-"):
            rest = ["--grid", *rest]  # the grid file is the sweep's positional argument, not a config file
        config, rest = split_config(rest)
        if args.command == "train":
            run_train(rest, config, quiet=args.quiet, dests=dests)
        else:
            RUNNERS[args.command](parse_command(args.command, rest, config, dests=dests), args.quiet)
    except UserInputError as err:
        if args.debug:
            raise
        print(f"dpo-retrieval {args.command}: error: {flagged(str(err), dests)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dpo-retrieval {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
