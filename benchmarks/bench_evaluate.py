"""End to end: ``dpo-retrieval evaluate`` vs a plain sentence-transformers + FAISS + pytrec_eval script.

Both run as fresh processes on the same machine, one after the other, and are timed from outside
(wall clock from process start to exit: imports, model load, corpus + query encoding, search,
metrics, writing results):

- ours: ``dpo-retrieval evaluate --dataset DIR --split test --output TMP.json`` with its defaults
  (precision auto = bf16 autocast on this CPU, batch 64, Flat index, top 1000, max_seq_length 256);
- plain: ``python benchmarks/plain_st_evaluate.py DIR`` (fp32 ``SentenceTransformer.encode``,
  batch 64, ``faiss.IndexFlatIP``, pytrec_eval; see that file).

The goal is ours/plain wall time <= 0.45 at equal nDCG@10 (|delta| <= 0.002). ``--repeats``
(default 1) alternates the two; the median is reported. ``--quick`` runs on a 300-doc slice of
SciFact written to a temporary folder.

Usage: ``python benchmarks/bench_evaluate.py [--quick] [--dataset DIR] [--repeats N]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, SCIFACT, median, read_jsonl, table, write_result  # noqa: E402

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def small_scifact(n_docs: int, dest: Path) -> Path:
    """A BEIR folder with the first test queries' relevant docs plus filler, ``n_docs`` in all."""
    (dest / "qrels").mkdir(parents=True, exist_ok=True)
    lines = (SCIFACT / "qrels" / "test.tsv").read_text().splitlines()
    header, rows = lines[0], [ln.split("\t") for ln in lines[1:] if ln.strip()]
    keep_docs, keep_rows = [], []
    for qid, did, score in rows:
        if len(keep_docs) >= n_docs // 3:
            break
        keep_rows.append((qid, did, score))
        if did not in keep_docs:
            keep_docs.append(did)
    wanted = set(keep_docs)
    docs = [d for d in read_jsonl(SCIFACT / "corpus.jsonl")]
    chosen = [d for d in docs if str(d["_id"]) in wanted]
    chosen += [d for d in docs if str(d["_id"]) not in wanted][:n_docs - len(chosen)]
    (dest / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in chosen))
    qids = {q for q, _, _ in keep_rows}
    (dest / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in read_jsonl(SCIFACT / "queries.jsonl")
                                                if str(q["_id"]) in qids))
    (dest / "qrels" / "test.tsv").write_text(header + "\n" + "".join("\t".join(r) + "\n" for r in keep_rows))
    return dest


def run_timed(cmd: list[str], env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT))
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run on a 300-doc slice of SciFact")
    ap.add_argument("--dataset", default=str(SCIFACT))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--extra-args", default="", help="extra arguments for `dpo-retrieval evaluate`")
    args = ap.parse_args(argv)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    tmp = Path(tempfile.mkdtemp(prefix="bench_evaluate."))
    dataset = Path(args.dataset)
    if args.quick:
        dataset = small_scifact(300, tmp / "scifact-small")

    ours_cmd = [str(BIN / "dpo-retrieval"), "evaluate", "--dataset", str(dataset), "--split", "test",
                "--output", str(tmp / "ours.json"), *args.extra_args.split()]
    plain_cmd = [sys.executable, str(HERE / "plain_st_evaluate.py"), str(dataset), "--split", "test"]
    walls = {"ours": [], "plain": []}
    ours_res = plain_res = None
    for r in range(args.repeats):
        for name in ("plain", "ours"):  # plain first: any page-cache warm-up favours the baseline's rival
            if name == "plain":
                wall, out = run_timed(plain_cmd, env)
                plain_res = json.loads(out.strip().splitlines()[-1])
            else:
                wall, _ = run_timed(ours_cmd, env)
                ours_res = json.loads((tmp / "ours.json").read_text())
            walls[name].append(wall)
            print(f"  run {r + 1}/{args.repeats} {name:<6} {wall:8.1f}s wall", flush=True)

    w_ours, w_plain = median(walls["ours"]), median(walls["plain"])
    nd_ours, nd_plain = ours_res["metrics"]["ndcg@10"], plain_res["metrics"]["ndcg@10"]
    rows = [
        {"run": "plain ST fp32 + FAISS + pytrec_eval", "wall_s": w_plain,
         "encode_corpus_s": plain_res["timings"]["encode_corpus_s"], "ndcg@10": nd_plain,
         "recall@100": plain_res["metrics"]["recall@100"]},
        {"run": "dpo-retrieval evaluate", "wall_s": w_ours,
         "encode_corpus_s": ours_res["timings"].get("encode_corpus_s"), "ndcg@10": nd_ours,
         "recall@100": ours_res["metrics"].get("recall@100")},
    ]
    ratio = w_ours / w_plain
    print(f"\n{dataset}: {ours_res['num_docs']} docs, {ours_res['num_queries']} queries; "
          f"median of {args.repeats} run(s) each; precision ours={ours_res.get('precision')}")
    print(table(rows, ["run", "wall_s", "encode_corpus_s", "ndcg@10", "recall@100"], floatfmt=".4f"))
    print(f"  wall-time ratio ours/plain = {ratio:.3f} (goal <= 0.45); nDCG@10 delta = {nd_ours - nd_plain:+.4f} "
          f"(goal |delta| <= 0.002)")
    print(f"  ours timings: {ours_res['timings']}")
    print(f"  plain timings: {plain_res['timings']}")
    write_result("bench_evaluate", {
        "dataset": str(dataset), "split": "test", "repeats": args.repeats,
        "ours_command": " ".join(ours_cmd).replace(str(tmp), "$TMP"),
        "plain_command": " ".join(plain_cmd),
        "walls_s": walls, "ratio": ratio, "goal": 0.45,
        "ndcg@10": {"ours": nd_ours, "plain": nd_plain, "delta": nd_ours - nd_plain},
        "metrics_ours": ours_res["metrics"], "metrics_plain": plain_res["metrics"],
        "timings_ours": ours_res["timings"], "timings_plain": plain_res["timings"],
        "precision_ours": ours_res.get("precision"), "rows": rows,
    }, quick=args.quick)


if __name__ == "__main__":
    main()
