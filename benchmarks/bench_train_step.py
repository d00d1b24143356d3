"""Training-step cost: DPO (precomputed / online reference) vs MultipleNegativesRankingLoss.

One process, one model (packaged all-MiniLM-L6-v2), identical pre-tokenized batches of SciFact
train triplets (query, positive from qrels/train.tsv, one seeded random negative). A step is
``loss(features, labels)`` forward, ``backward()`` and an AdamW step, timed directly (no Trainer,
no data loading). Each variant gets one warm-up step, then ``--steps`` timed steps; the variants
run round-robin on the same batch each round, and the median step time is reported.

Variants (``--precision`` applies to all, default bf16 = what ``train --precision auto`` picks on
this CPU; autocast as the HF Trainer does on CPU):

- ``mnrl``: ``dpo_retrieval.training.build_loss`` with ``--loss contrastive`` =
  sentence-transformers' ``MultipleNegativesRankingLoss(scale=20, cos_sim)``. The baseline.
- ``dpo_precomputed``: ``DPOLoss(model)`` with reference scores from ``add_reference_scores``
  in the labels (what ``train --reference precomputed``, the default, does).
- ``dpo_online``: ``DPOLoss(model, reference=OnlineReference.frozen_copy(model))``.
- ``dpo_precomputed_fp32`` (when --precision bf16): the same step without autocast.
- ``dpo_precomputed_bs{8,16}``: batch-size scaling.

Also reported: ``add_reference_scores`` stats on all SciFact train triplets (rows, texts, distinct
texts actually encoded, seconds).

Usage: ``python benchmarks/bench_train_step.py [--quick] [--batch-size 32] [--max-seq-length 128]``
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _common import (forward_flops, load_default_model, median, scifact_corpus, scifact_qrels,  # noqa: E402
                     scifact_queries, table, write_result)


def build_triplets(seed: int = 0, limit: int | None = None):
    """SciFact train triplets: every positive qrel, one random non-relevant negative each."""
    from datasets import Dataset

    doc_ids, texts = scifact_corpus()
    text_of = dict(zip(doc_ids, texts))
    queries = scifact_queries()
    qrels = scifact_qrels("train")
    rng = random.Random(seed)
    rows = {"anchor": [], "positive": [], "negative_1": []}
    for qid in sorted(qrels):
        for did, grade in sorted(qrels[qid].items()):
            if grade <= 0 or qid not in queries or did not in text_of:
                continue
            neg = rng.choice(doc_ids)
            while neg in qrels[qid]:
                neg = rng.choice(doc_ids)
            rows["anchor"].append(queries[qid])
            rows["positive"].append(text_of[did])
            rows["negative_1"].append(text_of[neg])
    ds = Dataset.from_dict(rows)
    return ds.select(range(min(limit, len(ds)))) if limit else ds


def tokenize_batches(model, ds, batch_size: int, n_batches: int, seed: int = 0):
    """``n_batches`` batches of ``batch_size`` triplets: (features per column, labels (B, 2))."""
    order = list(range(len(ds)))
    random.Random(seed).shuffle(order)
    batches = []
    for b in range(n_batches):
        rows = ds.select(order[b * batch_size:(b + 1) * batch_size])
        feats = [dict(model.preprocess(rows[col])) for col in ("anchor", "positive", "negative_1")]
        labels = torch.tensor(rows["label"], dtype=torch.float32) if "label" in rows.column_names else None
        batches.append((feats, labels))
    return batches


def batch_flops(feats) -> float:
    """Forward matmul FLOPs of one step's three columns (each padded to its own width)."""
    return sum(forward_flops(f["input_ids"].shape[0], f["input_ids"].shape[1]) for f in feats)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: batch 4, 1 timed step, 64 triplets")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-seq-length", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant after 1 warm-up (3)")
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--scaling", default="8,16", help="extra batch sizes for dpo_precomputed ('' = none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--losses", default="",
                    help="also time these losses (issue 11), comma list from: cmnrl, dpo+mnrl, dpo_hinge, sdpo "
                         "(sdpo with precomputed reference embeddings); '' = none")
    ap.add_argument("--tag", default="", help="write results/bench_train_step.<tag>.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch_size, args.steps, args.scaling = 4, 1, "2"

    from dpo_retrieval.losses import DPOLoss
    from dpo_retrieval.training.reference import OnlineReference, add_reference_scores
    from dpo_retrieval.training import build_loss

    torch.manual_seed(args.seed)
    model = load_default_model(args.max_seq_length)

    # ---- reference precompute over all train triplets (the stats the brief asks for) ----
    ds = build_triplets(args.seed, limit=64 if args.quick else None)
    ds, ref_stats = add_reference_scores(ds, model, precision="auto", show_progress_bar=False)
    ref_stats = dict(ref_stats, texts_encoded_per_row=ref_stats["texts_encoded"] / ref_stats["rows"],
                     texts_encoded_share=ref_stats["texts_encoded"] / ref_stats["texts"],
                     max_seq_length=args.max_seq_length)
    print(f"reference precompute: {ref_stats['rows']} triplets, {ref_stats['texts']} texts, "
          f"{ref_stats['texts_encoded']} distinct texts encoded ({ref_stats['texts_encoded_share']:.1%}) "
          f"in {ref_stats['seconds']:.1f}s")

    model.train()
    mnrl = build_loss("contrastive", model)
    dpo = build_loss("dpo", model)
    assert isinstance(dpo, DPOLoss)
    online = DPOLoss(model, beta=dpo.beta, scale=dpo.scale, policy=dpo.policy,
                     reference=OnlineReference.frozen_copy(model))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-7)  # tiny lr: the weights barely move between variants

    n_batches = args.steps + 1
    main_batches = tokenize_batches(model, ds, args.batch_size, n_batches, args.seed)
    bf16 = args.precision == "bf16"

    def ctx(use_bf16):
        return torch.autocast("cpu", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()

    variants = {  # name -> (loss, batches, bf16?)
        "mnrl": (mnrl, main_batches, bf16),
        "dpo_precomputed": (dpo, main_batches, bf16),
        "dpo_online": (online, main_batches, bf16),
    }
    if bf16:
        variants["dpo_precomputed_fp32"] = (dpo, main_batches, False)
        variants["mnrl_fp32"] = (mnrl, main_batches, False)
    from dpo_retrieval.training.args import DPOArgs

    for name in [x.strip() for x in args.losses.split(",") if x.strip()]:
        if name == "dpo_hinge":
            variants[name] = (build_loss("dpo", model, DPOArgs(loss_type="hinge")), main_batches, bf16)
        elif name == "sdpo":
            from dpo_retrieval.training.reference import add_reference_embeddings

            emb_ds, _ = add_reference_embeddings(build_triplets(args.seed, limit=64 if args.quick else None), model,
                                                 precision="auto", show_progress_bar=False)
            model.train()
            variants[name] = (build_loss("sdpo", model), tokenize_batches(model, emb_ds, args.batch_size, n_batches,
                                                                          args.seed), bf16)
        else:
            variants[name] = (build_loss(name, model), main_batches, bf16)
    for bs in [int(b) for b in args.scaling.split(",") if b]:
        variants[f"dpo_precomputed_bs{bs}"] = (dpo, tokenize_batches(model, ds, bs, n_batches, args.seed), bf16)

    def step(loss_fn, feats, labels, use_bf16):
        opt.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        with ctx(use_bf16):
            loss = loss_fn([dict(f) for f in feats], labels)  # fresh dicts: modules write into them
        loss.backward()
        opt.step()
        return time.perf_counter() - t0, float(loss.detach())

    times = {n: [] for n in variants}
    losses = {n: [] for n in variants}
    for r in range(n_batches):  # round 0 = warm-up
        for name, (loss_fn, batches, use_bf16) in variants.items():
            feats, labels = batches[r]
            t, lv = step(loss_fn, feats, labels, use_bf16)
            if r > 0:
                times[name].append(t)
                losses[name].append(lv)
            print(f"  {'warm-up' if r == 0 else f'step {r}/{args.steps}'} {name:<24} {t:7.2f}s  loss {lv:.4f}",
                  flush=True)

    base = median(times["mnrl"])
    rows = []
    for name, (loss_fn, batches, use_bf16) in variants.items():
        med = median(times[name])
        fl = np.mean([batch_flops(b[0]) for b in batches[1:]]) * 3  # fwd + bwd ~ 3x fwd
        rows.append({"variant": name, "batch": batches[0][0][0]["input_ids"].shape[0],
                     "precision": "bf16" if use_bf16 else "fp32", "median_step_s": med,
                     "ratio_vs_mnrl": med / base, "triplets_per_s": batches[0][0][0]["input_ids"].shape[0] / med,
                     "train_gflops_per_s": fl / med / 1e9, "steps_s": [round(t, 3) for t in times[name]]})
    print(f"\nstep = forward + backward + AdamW; max_seq_length {args.max_seq_length}; median of {args.steps} "
          f"steps after 1 warm-up; torch threads {torch.get_num_threads()}")
    print(table(rows, ["variant", "batch", "precision", "median_step_s", "ratio_vs_mnrl", "triplets_per_s",
                       "train_gflops_per_s"]))
    r = {row["variant"]: row for row in rows}
    goals = {
        "dpo_precomputed_vs_mnrl": {"ratio": r["dpo_precomputed"]["ratio_vs_mnrl"], "goal": 1.05},
        "dpo_online_vs_mnrl": {"ratio": r["dpo_online"]["ratio_vs_mnrl"], "goal": 1.4},
    }
    if "dpo_precomputed_fp32" in r:
        goals["bf16_vs_fp32_dpo_step"] = {
            "ratio": r["dpo_precomputed"]["median_step_s"] / r["dpo_precomputed_fp32"]["median_step_s"],
            "goal": None, "note": "bf16-autocast step time / fp32 step time (< 1 = bf16 faster)"}
    for k, v in goals.items():
        print(f"  {k}: {v['ratio']:.3f}" + (f" (goal <= {v['goal']})" if v["goal"] else ""))
    write_result("bench_train_step" + (f".{args.tag}" if args.tag else ""), {
        "model": "all-MiniLM-L6-v2", "max_seq_length": args.max_seq_length, "batch_size": args.batch_size,
        "precision": args.precision, "steps": args.steps, "seed": args.seed,
        "data": "SciFact train qrels, one seeded random negative per positive",
        "reference_precompute": ref_stats, "rows": rows, "goals": goals, "extra_losses": args.losses,
    }, quick=args.quick)


if __name__ == "__main__":
    main()
