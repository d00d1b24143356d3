"""Run files: TREC (``qid Q0 docid rank score tag``, what trec_eval and pytrec_eval read) or JSONL."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

from dpo_retrieval._io import atomic_write_text
from dpo_retrieval.data.beir import _check_file
from dpo_retrieval.errors import UserInputError


def run_format(path: str | os.PathLike, fmt: str | None = None) -> str:
    if fmt:
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix == ".jsonl":
        return "jsonl"
    if suffix in (".trec", ".run", ".txt", ""):
        return "trec"
    raise UserInputError(f"output: cannot tell the run format from {Path(path).name!r}; use .trec or .jsonl")


def write_run(run: Mapping[str, Mapping[str, float]], path: str | os.PathLike, *, fmt: str | None = None,
              tag: str = "dpo-retrieval", titles: Mapping[str, str] | None = None) -> Path:
    """Write a run atomically: TREC (``qid Q0 docid rank score tag``, what trec_eval/pytrec_eval read)
    or JSONL (``{"query_id", "results": [{"rank", "doc_id", "score"}]}`` per query)."""
    fmt = run_format(path, fmt)
    if any(c.isspace() for c in tag):
        raise ValueError("the run tag may not contain whitespace")

    def ranked(hits):
        return sorted(hits.items(), key=lambda kv: (-kv[1], kv[0]))

    def write(f):
        for qid, hits in run.items():
            if fmt == "trec":
                for rank, (did, score) in enumerate(ranked(hits), 1):
                    f.write(f"{qid} Q0 {did} {rank} {score:.6f} {tag}\n")
            else:
                rows = [{"rank": r, "doc_id": d, "score": round(float(s), 6),
                         **({"title": titles.get(d, "")} if titles is not None else {})}
                        for r, (d, s) in enumerate(ranked(hits), 1)]
                f.write(json.dumps({"query_id": qid, "results": rows}, ensure_ascii=False) + "\n")

    for qid, hits in run.items():
        if fmt == "trec" and (any(c.isspace() for c in qid) or any(any(c.isspace() for c in d) for d in hits)):
            raise UserInputError(f"output: query or doc ids with whitespace (e.g. in query {qid!r}) cannot be "
                                 "written as a TREC run; use .jsonl")
    return atomic_write_text(path, write)


def read_run(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """Read a run written by :func:`write_run` (TREC via pytrec_eval's parser, or JSONL)."""
    path = _check_file(Path(path), "run file")
    try:
        return _read_run(path)
    except UnicodeDecodeError as err:
        raise UserInputError.at(path, None, f"not UTF-8 text ({err.reason} at byte {err.start})") from None


def _read_run(path: Path) -> dict[str, dict[str, float]]:
    import pytrec_eval

    if run_format(path) == "trec":
        with open(path, encoding="utf-8") as f:
            try:
                return pytrec_eval.parse_run(f)
            except (ValueError, IndexError) as err:
                raise UserInputError.at(path, None, f"not a TREC run ({err})") from None
    run: dict[str, dict[str, float]] = {}
    with open(path, encoding="utf-8") as f:
        lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
    for lineno, line in lines:
        try:
            obj = json.loads(line)
            run[str(obj["query_id"])] = {str(r["doc_id"]): float(r["score"]) for r in obj["results"]}
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise UserInputError.at(path, lineno, f"not a JSONL run line ({type(err).__name__}: {err})") from None
    return run
