"""Shared helpers for the benchmarks: machine info, medians, tables, JSON results, data loading.

Not a benchmark itself. Every ``bench_*.py`` imports it as ``from _common import ...`` (the
scripts put their own folder first on ``sys.path``), so they run as ``python benchmarks/<name>.py``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: taken when a benchmark starts (this module is imported first), before it loads the CPU itself
START_LOAD = [round(x, 2) for x in os.getloadavg()]
START_DATE = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SCIFACT = Path(os.environ.get("BENCH_SCIFACT", "/work/shared/data/beir/scifact"))
MODEL_NAME = "all-MiniLM-L6-v2 (packaged)"

#: all-MiniLM-L6-v2: 6 layers, hidden 384, FFN 1536.
LAYERS, HIDDEN, FFN = 6, 384, 1536
#: the brief's rough peak for bf16 matmuls on the 2 cores of this machine
PEAK_BF16_GFLOPS = 450.0


def forward_flops(batch: int, seq_len: int) -> float:
    """Forward FLOPs of one MiniLM-L6 batch padded to ``seq_len`` (matmuls only, 2 FLOP per MAC)."""
    per_token_layer = 2 * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * FFN)  # QKV+O projections, FFN
    attn_layer = 2 * 2 * seq_len * seq_len * HIDDEN  # QK^T and AV, per sequence
    return batch * LAYERS * (seq_len * per_token_layer + attn_layer)


def cpu_model() -> str:
    from dpo_retrieval.models import cpu_name

    return cpu_name()


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in flags if f.startswith(("avx512_bf16", "amx", "avx512_fp16", "avx512f", "avx_vnni")))
    except OSError:
        pass
    return []


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("torch", "sentence-transformers", "transformers", "faiss-cpu", "numpy", "pytrec-eval-terrier",
                 "openvino", "onnxruntime"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    try:
        out["dpo-retrieval-commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                                     capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def machine_info() -> dict:
    try:
        import torch
        threads = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        threads = None
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 1024 ** 2, 1)
    except OSError:
        pass
    return {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "torch_threads": threads,
        "memory_gib": mem,
        "platform": platform.platform(),
        "versions": versions(),
        "date_utc": START_DATE,
        "load_average_at_start": START_LOAD,
    }


def median(xs) -> float:
    return float(statistics.median(xs))


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


def table(rows: list[dict], columns: list[str], floatfmt: str = ".3f") -> str:
    """A plain-text table of ``rows`` (dicts) with ``columns``."""
    def cell(v):
        if isinstance(v, float):
            return format(v, floatfmt)
        return "" if v is None else str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = "  ".join(c.rjust(w) for c, w in zip(columns, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


def write_result(name: str, payload: dict, *, quick: bool) -> Path:
    """``benchmarks/results/<name>.json`` (``<name>.quick.json`` for --quick runs, so they never
    overwrite a real run)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / (f"{name}.quick.json" if quick else f"{name}.json")
    payload = {"benchmark": name, "quick": quick, "command": " ".join([Path(sys.executable).name] + sys.argv),
               "machine": machine_info(), **payload, "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
               "date_utc_end": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    print(f"\nwrote {path.relative_to(ROOT)}")
    return path


# ------------------------------------------------------------------------------------------
# SciFact
def read_jsonl(path: Path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def scifact_corpus(path: Path = SCIFACT) -> tuple[list[str], list[str]]:
    """(doc ids, texts) in file order; text = BEIR's (title + " " + text).strip()."""
    ids, texts = [], []
    for rec in read_jsonl(path / "corpus.jsonl"):
        ids.append(str(rec["_id"]))
        texts.append(f"{rec.get('title') or ''} {rec.get('text') or ''}".strip())
    return ids, texts


def scifact_queries(path: Path = SCIFACT) -> dict[str, str]:
    return {str(r["_id"]): r["text"] for r in read_jsonl(path / "queries.jsonl")}


def scifact_qrels(split: str, path: Path = SCIFACT) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with open(path / "qrels" / f"{split}.tsv", encoding="utf-8") as f:
        for i, line in enumerate(f):
            parts = line.rstrip("\n").split("\t")
            if i == 0 and not parts[-1].lstrip("-").isdigit():
                continue  # header
            qid, did, score = parts[0], parts[1], int(parts[2])
            qrels.setdefault(qid, {})[did] = score
    return qrels


def load_default_model(max_seq_length: int = 256):
    from dpo_retrieval.models import load_model

    return load_model(None, device="cpu", max_seq_length=max_seq_length)


def ndcg_at_10(qrels, q_emb, d_emb, qids, doc_ids) -> float:
    """nDCG@10 of exact inner-product search, scored by pytrec_eval."""
    import numpy as np
    import pytrec_eval

    scores = q_emb @ d_emb.T
    top = np.argsort(-scores, axis=1)[:, :100]
    run = {q: {doc_ids[j]: float(scores[i, j]) for j in top[i]} for i, q in enumerate(qids)}
    ev = pytrec_eval.RelevanceEvaluator({q: qrels[q] for q in qids if q in qrels}, {"ndcg_cut.10"})
    per = ev.evaluate(run)
    return float(np.mean([v["ndcg_cut_10"] for v in per.values()]))
