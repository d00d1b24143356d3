"""Encoding throughput: dpo-retrieval's ``encode_texts`` vs plain ``SentenceTransformer.encode`` (fp32).

Side by side in one process, same model (packaged all-MiniLM-L6-v2, max_seq_length 256), same batch
size, on SciFact abstracts (title + " " + text):

1. Timing: a fixed seeded subsample (``--sample``, default 400 docs) encoded ``--repeats`` times
   (default 3) by each variant, the variants interleaved round-robin so drift hits all alike;
   the median docs/s is reported.
2. Accuracy: every variant's subsample embeddings vs the fp32 baseline (min / mean cosine).
3. Full corpus (5,183 docs, skipped by ``--quick``): one timed pass of the fp32 baseline and of
   each ``--check-variants`` variant, min cosine over every document, and nDCG@10 on SciFact test
   (queries encoded the same way, exact inner-product search, pytrec_eval).
4. Scaling: docs/s of the baseline and of ``encode_texts`` at 100 / 200 / 400 docs (``--scaling``).

Variants (all return L2-normalized float32):

- ``st_fp32``: ``model.encode(texts, batch_size=B, normalize_embeddings=True)``: the baseline.
- ``ours_auto``: ``dpo_retrieval.retrieval.encoding.encode_texts(..., precision="auto", task="document")``:
  what ``index``/``evaluate`` run (``auto`` = bf16 autocast where ``models.cpu_bf16_is_faster``
  says bf16 matmuls win on this CPU, else fp32; the JSON records which it resolved to).
- ``ours_bf16`` / ``ours_fp32``: ``encode_texts`` with the precision forced.
- ``ours_auto_bs{16,128}`` (and ``ours_{auto,bf16}_bs{16,32,128,256}`` on request): other batch
  sizes (the batch-size lever).
- ``st_autocast_bf16``: plain ``model.encode`` inside ``torch.autocast("cpu", bfloat16)``.
- ``bf16_weights``: a copy of the model cast to bfloat16 (no autocast; LayerNorm/softmax in bf16).
- ``st_autocast_fp16`` / ``fp16_weights``: the same with float16 (CPUs with AVX512-FP16 run fp16
  matmuls natively; dpo-retrieval's ``--precision`` refuses fp16 on CPU today).
- ``int8_dynamic``: ``torch.ao.quantization.quantize_dynamic`` on every ``nn.Linear`` (VNNI int8).
- ``pretok_bf16``: every text tokenized once up front, then only the forward passes are timed
  under autocast (isolates the tokenizer's share).
- ``openvino_bf16`` / ``openvino_fp32``: the transformer converted with ``openvino.convert_model``
  (and ``openvino_fp16``) and compiled for CPU with INFERENCE_PRECISION_HINT bf16/f32/f16 (mean pooling + normalize in
  numpy); only when ``import openvino`` works. (sentence-transformers' own ``backend="openvino"``
  needs optimum-intel; this is the same runtime without it.)

Backends (``--backends``, written to ``results/bench_encode_backends.json``): the same 400 docs
through ``encode_texts`` (fp32) with the transformer on each backend, interleaved within every
repetition (the order rotates per repetition), median of ``--repeats``, min cosine to ``torch``, and
the machine's load average before each repetition (other jobs share the cores):

- ``st_plain``: plain ``SentenceTransformer.encode`` (the issue's reference).
- ``torch``: ``encode_texts`` on PyTorch (``--backend torch``).
- ``onnx``: the unoptimised ONNX export run by ONNX Runtime; ``onnx-O2`` (what ``--backend onnx``
  runs) / ``onnx-O3`` (plus GELU approximation): onnxruntime's transformer fusions at optimum's levels.
- ``openvino_fp32``: the transformer through ``openvino.convert_model`` (for the record; only when
  ``import openvino`` works).

plus the ``auto`` probe's decision on this machine (``dpo_retrieval.retrieval.backends.probe``).

Usage: ``python benchmarks/bench_encode.py [--quick] [--sample N] [--repeats R] [--batch-size B]``
       ``python benchmarks/bench_encode.py --backends [--sample N] [--repeats R]``
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _common import (PEAK_BF16_GFLOPS, SCIFACT, forward_flops, load_default_model, median,  # noqa: E402
                     ndcg_at_10, scifact_corpus, scifact_qrels, scifact_queries, table, write_result)

from dpo_retrieval.retrieval.encoding import encode_texts, resolved_precision  # noqa: E402


# ------------------------------------------------------------------------------------------
# variants: name -> fn(texts, task) -> float32 (n, 384), normalized
def make_variants(model, batch_size: int, names: list[str]):
    variants = {}

    def st_fp32(texts, task="document"):
        return model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False).astype(np.float32)

    variants["st_fp32"] = st_fp32

    def ours(bs, precision="auto"):
        def fn(texts, task="document"):
            return encode_texts(model, texts, batch_size=bs, precision=precision, task=task,
                                normalize_embeddings=True, show_progress_bar=False)
        return fn

    variants["ours_auto"] = ours(batch_size)
    variants["ours_bf16"] = ours(batch_size, "bf16")
    variants["ours_fp32"] = ours(batch_size, "fp32")
    for bs in (16, 32, 128, 256):
        if bs != batch_size:
            variants[f"ours_auto_bs{bs}"] = ours(bs)
            variants[f"ours_bf16_bs{bs}"] = ours(bs, "bf16")

    def st_autocast(texts, task="document"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            emb = model.encode(texts, batch_size=batch_size, normalize_embeddings=False, convert_to_tensor=True,
                               show_progress_bar=False)
        return torch.nn.functional.normalize(emb.float(), dim=1).numpy()

    variants["st_autocast_bf16"] = st_autocast

    if "bf16_weights" in names:
        bf16_model = copy.deepcopy(model).to(torch.bfloat16)

        def bf16_weights(texts, task="document"):
            emb = bf16_model.encode(texts, batch_size=batch_size, normalize_embeddings=False, convert_to_tensor=True,
                                    show_progress_bar=False)
            return torch.nn.functional.normalize(emb.float(), dim=1).numpy()

        variants["bf16_weights"] = bf16_weights

    def st_autocast16(texts, task="document"):
        with torch.autocast("cpu", dtype=torch.float16):
            emb = model.encode(texts, batch_size=batch_size, normalize_embeddings=False, convert_to_tensor=True,
                               show_progress_bar=False)
        return torch.nn.functional.normalize(emb.float(), dim=1).numpy()

    variants["st_autocast_fp16"] = st_autocast16

    if "fp16_weights" in names:
        fp16_model = copy.deepcopy(model).to(torch.float16)

        def fp16_weights(texts, task="document"):
            emb = fp16_model.encode(texts, batch_size=batch_size, normalize_embeddings=False, convert_to_tensor=True,
                                    show_progress_bar=False)
            return torch.nn.functional.normalize(emb.float(), dim=1).numpy()

        variants["fp16_weights"] = fp16_weights

    if "int8_dynamic" in names:
        int8_model = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)

        def int8_dynamic(texts, task="document"):
            emb = int8_model.encode(texts, batch_size=batch_size, normalize_embeddings=False, convert_to_tensor=True,
                                    show_progress_bar=False)
            return torch.nn.functional.normalize(emb.float(), dim=1).numpy()

        variants["int8_dynamic"] = int8_dynamic

    variants["pretok_bf16"] = "pretok"  # built per text list (tokenizing is outside the timing)

    if any(n.startswith("openvino") for n in names):
        try:
            variants.update(openvino_variants(model, batch_size))
        except Exception as err:  # noqa: BLE001 - optional dependency / converter problems
            print(f"(openvino variants skipped: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
    return {k: v for k, v in variants.items() if k in names}


def pretokenize(model, texts, batch_size):
    """Sorted, tokenized batches (the tokenizer's work done once, outside the timed region)."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    batches = []
    for start in range(0, len(texts), batch_size):
        idx = order[start:start + batch_size]
        batches.append((idx, model.tokenize([texts[i] for i in idx])))
    return batches


def run_pretok(model, batches, n):
    out = np.empty((n, model.get_embedding_dimension()), dtype=np.float32)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for idx, feats in batches:
            emb = model.forward(dict(feats))["sentence_embedding"]
            out[idx] = torch.nn.functional.normalize(emb.float(), dim=1).numpy()
    return out


def openvino_variants(model, batch_size):
    import openvino as ov

    am = model[0].auto_model.eval()
    ex = dict(model.tokenize(["an example sentence for tracing", "a second one"]))
    ex = {k: v for k, v in ex.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        ov_model = ov.convert_model(am, example_input=ex)
    core = ov.Core()
    out = {}
    for hint in ("bf16", "f32", "f16"):
        try:
            compiled = core.compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                            "PERFORMANCE_HINT": "LATENCY"})
        except RuntimeError as err:
            print(f"(openvino {hint} unavailable: {str(err).splitlines()[0]})")
            continue
        names = [i.get_any_name() for i in compiled.inputs]

        def fn(texts, task="document", compiled=compiled, names=names):
            order = np.argsort([-len(t) for t in texts], kind="stable")
            res = np.empty((len(texts), model.get_embedding_dimension()), dtype=np.float32)
            for start in range(0, len(texts), batch_size):
                idx = order[start:start + batch_size]
                feats = model.tokenize([texts[i] for i in idx])
                inputs = {k: feats[k].numpy() for k in names}
                hidden = compiled(inputs)[0]
                mask = inputs["attention_mask"][..., None].astype(np.float32)
                emb = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
                res[idx] = emb / np.linalg.norm(emb, axis=1, keepdims=True)
            return res

        out[{"bf16": "openvino_bf16", "f32": "openvino_fp32", "f16": "openvino_fp16"}[hint]] = fn
    return out


def flops_for(model, texts, batch_size):
    lens = np.array([len(x) for x in model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]])
    lens = np.sort(lens)[::-1]
    total = 0.0
    for start in range(0, len(lens), batch_size):
        chunk = lens[start:start + batch_size]
        total += forward_flops(len(chunk), int(chunk[0]))
    return total, float(lens.mean())


def cosines(a, b):
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


BACKEND_ROWS = ("st_plain", "torch", "onnx", "onnx-O2", "onnx-O3", "openvino_fp32")


def run_backends(args) -> None:
    """The backend rows: interleaved, median of ``args.repeats``, min cosine to torch, load averages."""
    import os

    from dpo_retrieval.retrieval import backends

    doc_ids, texts = scifact_corpus()
    rng = np.random.default_rng(args.seed)
    sample_idx = np.sort(rng.choice(len(texts), size=min(args.sample, len(texts)), replace=False))
    sample = [texts[i] for i in sample_idx]
    bs = args.batch_size

    def ours(model):
        return lambda txts: encode_texts(model, txts, batch_size=bs, precision="fp32", task="document",
                                         normalize_embeddings=True, show_progress_bar=False)

    torch_model = load_default_model(256).eval()
    fns = {"st_plain": lambda txts: torch_model.encode(txts, batch_size=bs, normalize_embeddings=True,
                                                       convert_to_numpy=True, show_progress_bar=False),
           "torch": ours(torch_model)}
    exports = {}
    for name, level in (("onnx", "none"), ("onnx-O2", "O2"), ("onnx-O3", "O3")):
        if name not in args.backend_rows.split(","):
            continue
        m = load_default_model(256)
        t0 = time.perf_counter()
        backends.to_onnx(m, level)
        exports[name] = {"seconds": round(time.perf_counter() - t0, 2), "file": m[0].model.onnx_path}
        fns[name] = ours(m)
    try:
        ov = openvino_variants(torch_model, bs) if "openvino_fp32" in args.backend_rows else {}
        if "openvino_fp32" in ov:
            fns["openvino_fp32"] = ov["openvino_fp32"]
    except Exception as err:  # noqa: BLE001 - optional
        print(f"(openvino skipped: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
    wanted = [n for n in args.backend_rows.split(",") if n]
    names = [n for n in BACKEND_ROWS if n in fns and n in wanted]
    for n in names:  # warm-up
        fns[n](sample[:2 * bs])
    times = {n: [] for n in names}
    embs, loads = {}, []
    for r in range(args.repeats):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate: no backend always runs first
        loads.append([round(x, 2) for x in os.getloadavg()])
        for n in order:
            t0 = time.perf_counter()
            embs[n] = np.asarray(fns[n](sample), dtype=np.float32)
            times[n].append(time.perf_counter() - t0)
            print(f"  repeat {r + 1}/{args.repeats} {n:<14} {len(sample) / times[n][-1]:7.2f} docs/s "
                  f"(load {loads[-1][0]})", flush=True)
    base = median(times["torch"])
    rows = [{"backend": n, "median_s": median(times[n]), "docs_per_s": len(sample) / median(times[n]),
             "speedup_vs_torch": base / median(times[n]),
             "speedup_vs_st_plain": median(times["st_plain"]) / median(times[n]),
             "min_cos_to_torch": float(cosines(embs[n], embs["torch"]).min()),
             "times_s": [round(t, 3) for t in times[n]]} for n in names]
    print(f"\n{len(sample)} SciFact docs, max length 256, batch {bs}, fp32, median of {args.repeats} "
          f"(interleaved); load averages before each repetition: {loads}")
    print(table(rows, ["backend", "median_s", "docs_per_s", "speedup_vs_torch", "speedup_vs_st_plain",
                       "min_cos_to_torch"], floatfmt=".4f"))
    t0 = time.perf_counter()
    decision = backends.probe(load_default_model(256), fresh=True)
    print(f"\nauto probe: {decision['backend']} (ONNX {decision['speedup']}x torch on the probe, min cosine "
          f"{decision['min_cosine']}; {time.perf_counter() - t0:.1f} s incl. a cached export)")
    write_result("bench_encode_backends" + (f".{args.tag}" if args.tag else ""), {
        "dataset": str(SCIFACT), "model": "all-MiniLM-L6-v2", "max_seq_length": 256, "batch_size": bs,
        "sample_docs": len(sample), "seed": args.seed, "repeats": args.repeats, "interleaved": True,
        "load_average_per_repeat": loads, "exports": exports, "rows": rows, "auto_probe": decision,
    }, quick=args.quick)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (120 docs, 1 repeat, no full-corpus pass)")
    ap.add_argument("--sample", type=int, default=400, help="docs in the timed subsample (default 400)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64, help="batch size of the baseline and ours_auto (64)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default="st_fp32,ours_auto,ours_bf16,ours_auto_bs16,ours_auto_bs128,"
                                          "bf16_weights,openvino_bf16,openvino_fp32",
                    help="comma list; also available: ours_fp32, ours_{auto,bf16}_bs{16,32,128,256}, "
                         "st_autocast_bf16, st_autocast_fp16, fp16_weights, int8_dynamic, openvino_fp16, pretok_bf16")
    ap.add_argument("--check-variants", default="best",
                    help="variants that also get the full-corpus pass (cosine over all docs + nDCG@10); 'best' = "
                         "ours_auto plus the fastest other variant with subsample cosine >= 0.999, if faster")
    ap.add_argument("--scaling", default="100,200,400", help="corpus sizes for the scaling table ('' = skip)")
    ap.add_argument("--no-full", action="store_true", help="skip the full-corpus pass")
    ap.add_argument("--full-limit", type=int, default=None, help="smoke-test the full pass on the first N docs")
    ap.add_argument("--tag", default="", help="write results/bench_encode.<tag>.json (extra runs)")
    ap.add_argument("--backends", action="store_true",
                    help="only the backend rows (torch, onnx, onnx-O2, onnx-O3, openvino) -> bench_encode_backends.json")
    ap.add_argument("--backend-rows", default="st_plain,torch,onnx,onnx-O2,openvino_fp32",
                    help=f"rows of --backends, from {','.join(BACKEND_ROWS)} (default: all but onnx-O3)")
    args = ap.parse_args(argv)
    if args.quick:
        args.sample, args.repeats, args.no_full, args.scaling = min(args.sample, 120), 1, True, "60,120"
    if args.backends:
        return run_backends(args)

    torch.manual_seed(args.seed)
    model = load_default_model(256)
    model.eval()
    auto_precision = resolved_precision(model, "auto")
    print(f"precision auto -> {auto_precision}; torch threads {torch.get_num_threads()}")
    doc_ids, texts = scifact_corpus()
    rng = np.random.default_rng(args.seed)
    sample_idx = np.sort(rng.choice(len(texts), size=min(args.sample, len(texts)), replace=False))
    sample = [texts[i] for i in sample_idx]
    names = [n for n in args.variants.split(",") if n]
    variants = make_variants(model, args.batch_size, names)
    print("variants:", ", ".join(variants))

    def bs_of(name):
        return int(name.split("_bs")[1]) if "_bs" in name else args.batch_size

    pretok = pretokenize(model, sample, args.batch_size) if "pretok_bf16" in variants else None

    def call(name, txts, task="document"):
        fn = variants[name]
        if fn == "pretok":
            return run_pretok(model, pretok, len(txts))
        return fn(txts, task)

    # warm-up: every variant once on a small slice (oneDNN kernels, OpenVINO first inference)
    for name in variants:
        if variants[name] != "pretok":
            call(name, sample[:2 * args.batch_size])
    if pretok is not None:
        run_pretok(model, pretok[:1], len(sample))

    times = {n: [] for n in variants}
    embs = {}
    for r in range(args.repeats):
        for name in variants:
            t0 = time.perf_counter()
            emb = call(name, sample)
            times[name].append(time.perf_counter() - t0)
            embs[name] = emb
            print(f"  repeat {r + 1}/{args.repeats} {name:<18} {len(sample) / times[name][-1]:7.2f} docs/s", flush=True)

    base = embs["st_fp32"]
    base_dps = len(sample) / median(times["st_fp32"])
    rows = []
    for name in variants:
        flops, mean_len = flops_for(model, sample, bs_of(name))
        med = median(times[name])
        cos = cosines(embs[name], base)
        dps = len(sample) / med
        bound = len(sample) / (flops / (PEAK_BF16_GFLOPS * 1e9))
        rows.append({
            "variant": name, "batch": bs_of(name), "median_s": med, "docs_per_s": dps,
            "speedup_vs_st_fp32": dps / base_dps, "gflops_per_s": flops / med / 1e9,
            "fraction_of_bf16_bound": dps / bound, "min_cos": float(cos.min()), "mean_cos": float(cos.mean()),
            "times_s": [round(t, 3) for t in times[name]],
        })
    flops_b, mean_len = flops_for(model, sample, args.batch_size)
    bound_b = len(sample) / (flops_b / (PEAK_BF16_GFLOPS * 1e9))
    print(f"\nsubsample: {len(sample)} SciFact docs (seed {args.seed}), median of {args.repeats}; "
          f"mean tokens/doc {mean_len:.0f} (max 256), {flops_b / len(sample) / 1e9:.2f} GFLOP/doc at batch "
          f"{args.batch_size}; bf16 bound {bound_b:.1f} docs/s ({PEAK_BF16_GFLOPS:.0f} GFLOP/s)")
    print(table(rows, ["variant", "batch", "median_s", "docs_per_s", "speedup_vs_st_fp32", "gflops_per_s",
                       "fraction_of_bf16_bound", "min_cos"]))

    # ---- scaling ----
    scaling = []
    sizes = [int(s) for s in args.scaling.split(",") if s]
    for size in sizes:
        sub = sample[:size]
        row = {"docs": len(sub)}
        for name in ("st_fp32", "ours_auto"):
            if name not in variants:
                continue
            t0 = time.perf_counter()
            call(name, sub)
            s = time.perf_counter() - t0
            row[f"{name}_s"] = s
            row[f"{name}_docs_per_s"] = len(sub) / s
        if "st_fp32_s" in row and "ours_auto_s" in row:
            row["speedup"] = row["st_fp32_s"] / row["ours_auto_s"]
        scaling.append(row)
    if scaling:
        print("\nscaling (one pass each):")
        print(table(scaling, list(scaling[0].keys())))

    # ---- full corpus: cosine + nDCG ----
    full = None
    if not args.no_full:
        queries = scifact_queries()
        qrels = scifact_qrels("test")
        if args.full_limit:
            doc_ids, texts = doc_ids[:args.full_limit], texts[:args.full_limit]
        qids = [q for q in qrels if q in queries]
        qtexts = [queries[q] for q in qids]
        full = {"docs": len(texts), "queries": len(qids), "rows": []}
        t0 = time.perf_counter()
        d_base = variants["st_fp32"](texts)
        t_base = time.perf_counter() - t0
        q_base = variants["st_fp32"](qtexts, "query")
        ndcg_base = ndcg_at_10(qrels, q_base, d_base, qids, doc_ids)
        full["rows"].append({"variant": "st_fp32", "seconds": t_base, "docs_per_s": len(texts) / t_base,
                             "speedup_vs_st_fp32": 1.0, "min_cos": 1.0, "ndcg@10": ndcg_base, "ndcg_delta": 0.0})
        if args.check_variants == "best":
            speed = {r["variant"]: r["docs_per_s"] for r in rows}
            check = ["ours_auto"] if "ours_auto" in variants else []
            others = [r for r in rows if r["variant"] not in ("st_fp32", "ours_auto", "pretok_bf16")
                      and r["min_cos"] >= 0.999]
            if others:
                fastest = max(others, key=lambda r: r["docs_per_s"])
                if fastest["docs_per_s"] > speed.get("ours_auto", 0):
                    check.append(fastest["variant"])
        else:
            check = args.check_variants.split(",")
        for name in [n for n in check if n in variants and variants[n] != "pretok"]:
            t0 = time.perf_counter()
            d = variants[name](texts)
            t = time.perf_counter() - t0
            q = variants[name](qtexts, "query")
            cos = cosines(d, d_base)
            qcos = cosines(q, q_base)
            nd = ndcg_at_10(qrels, q, d, qids, doc_ids)
            full["rows"].append({"variant": name, "seconds": t, "docs_per_s": len(texts) / t,
                                 "speedup_vs_st_fp32": t_base / t, "min_cos": float(min(cos.min(), qcos.min())),
                                 "docs_below_0.999": int((cos < 0.999).sum()), "ndcg@10": nd,
                                 "ndcg_delta": nd - ndcg_base})
        print(f"\nfull corpus ({len(texts)} docs, one pass each; nDCG@10 on SciFact test, {len(qids)} queries):")
        print(table(full["rows"], ["variant", "seconds", "docs_per_s", "speedup_vs_st_fp32", "min_cos",
                                   "docs_below_0.999", "ndcg@10", "ndcg_delta"], floatfmt=".4f"))

    ours = next(r for r in rows if r["variant"] == "ours_auto") if "ours_auto" in variants else None
    goal = {
        "goal": "encode_texts docs/s >= 2.0x st_fp32 at the same batch size; cosine >= 0.999; |nDCG@10 delta| <= 0.002",
        "ratio": ours and ours["speedup_vs_st_fp32"],
        "best_variant": max(rows, key=lambda r: r["speedup_vs_st_fp32"] if r["min_cos"] >= 0.999 else 0)["variant"],
    }
    print(f"\ngoal: {goal['goal']}\n  ours_auto speedup {goal['ratio'] and round(goal['ratio'], 3)}; "
          f"fastest variant with cos>=0.999: {goal['best_variant']}")
    write_result("bench_encode" + (f".{args.tag}" if args.tag else ""), {
        "dataset": str(SCIFACT), "model": "all-MiniLM-L6-v2", "max_seq_length": 256, "batch_size": args.batch_size,
        "auto_precision_resolved_to": auto_precision,
        "sample_docs": len(sample), "seed": args.seed, "repeats": args.repeats,
        "peak_bf16_gflops_assumed": PEAK_BF16_GFLOPS, "mean_tokens_per_doc": mean_len,
        "gflop_per_doc": flops_b / len(sample) / 1e9, "bf16_bound_docs_per_s": bound_b, "subsample": rows, "scaling": scaling,
        "full_corpus": full, "goal": goal,
    }, quick=args.quick)


if __name__ == "__main__":
    main()
