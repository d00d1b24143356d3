"""The study's finals config (``python scripts/study.py freeze``): each final model's best dev point over its
sweeps, and the confirmation at the full budget of DPO's screened knobs and variants (``tune_dpo_confirm``,
amendments 2 and 3 of benchmarks/results/study_scifact.md)."""

from __future__ import annotations

from pathlib import Path

import study as S

#: the finals' models: name -> (the sweeps its best dev point is taken from, a filter on their rows)
FINALS = {
    "mnrl": (["contrastive", "contrastive_epochs", "contrastive_negatives"], lambda o: o["loss"] == "contrastive"),
    "cmnrl": (["cmnrl", "cmnrl_epochs", "cmnrl_negatives"], lambda o: o["loss"] == "cmnrl"),
    "dpo": (["dpo", "dpo_epochs", "dpo_knobs", "dpo_negatives", "dpo_confirm"],
            lambda o: o["loss"] == "dpo" and o.get("loss_type") != "hinge"),
    "dpo-mnrl": (["variants", "dpo_confirm"], lambda o: o["loss"] == "dpo+mnrl"),
    "sdpo": (["variants", "dpo_confirm"], lambda o: o["loss"] == "sdpo"),
    "dpo-hinge": (["variants", "dpo_confirm"], lambda o: o["loss"] == "dpo" and o.get("loss_type") == "hinge"),
}
#: the final models tune_dpo_confirm may confirm (amendment 2)
DPO_FAMILY = ("dpo", "dpo-mnrl", "sdpo", "dpo-hinge")
#: the DPO variants: only the one best on dev (over its screening and confirmation) enters the finals (amendment 4)
VARIANTS = ("dpo-mnrl", "sdpo", "dpo-hinge")
#: the run-level settings every final shares (compare's names); a variant holds what its tuning changed
FINAL_RUN = {"dataset": "scifact", "preset": "full", "train_max_seq_length": 128, "per_device_train_batch_size": 32,
             "num_train_epochs": 1.0, "warmup_steps": 0.1, "seed": 42, "precision": "fp32",
             "eval_datasets": ["dbpedia-entity-5k"],
             # the backend the study's triplets were mined with (runs/study/mine), not ``auto``: auto's probe picks
             # by the speed it measures, which changes with the load (two jobs side by side) and the CPU
             "backend": "onnx"}
_SWEEP_ONLY = {"max_seq_length", "seed", "loss", "negatives"}
#: amendment 5: the most epochs the plan gives every family, and the one point screened beyond it
EPOCHS_END, EPOCHS_BEYOND = 3, 4
#: the sweep that holds a final model's point beyond EPOCHS_END (amendment 5), run only for a model whose best is there
EPOCHS_SWEEPS = {"mnrl": "contrastive_epochs4", "cmnrl": "cmnrl_epochs4", "dpo": "dpo_epochs4",
                 "dpo-mnrl": "variant_epochs4", "sdpo": "variant_epochs4", "dpo-hinge": "variant_epochs4"}


def model_sweeps(name: str) -> list[str]:
    """The sweeps final model ``name``'s best dev point is taken from: :data:`FINALS`' and, once recorded, its
    epochs-beyond sweep (:data:`EPOCHS_SWEEPS`)."""
    extra = EPOCHS_SWEEPS.get(name)
    return FINALS[name][0] + ([extra] if extra and (S.KEPT / f"tune_{extra}.json").exists() else [])


def epochs_edge(name: str, best: dict) -> str | None:
    """Amendment 5: what final model ``name`` still needs when ``best`` (its best dev row) trains
    :data:`EPOCHS_END` epochs and none of its rows trains :data:`EPOCHS_BEYOND` (a line saying which point to
    add where); else None (a best at the point beyond is not extended again)."""
    import json

    if best["options"].get("num_train_epochs") != EPOCHS_END:
        return None
    keep = FINALS[name][1]
    for sweep in model_sweeps(name):
        path = S.KEPT / f"tune_{sweep}.json"
        rows = json.loads(path.read_text()).get("points", []) if path.exists() else []
        if any(keep(r["options"]) and r["options"].get("num_train_epochs") == EPOCHS_BEYOND for r in rows):
            return None
    return (f"its best trains {EPOCHS_END} epochs, the most the plan gives: add its best point at "
            f"{{num_train_epochs: {EPOCHS_BEYOND}}} to configs/study/tune_{EPOCHS_SWEEPS[name]}.yaml (amendment 5 of "
            f"study_scifact.md) and run `python scripts/study.py tune {EPOCHS_SWEEPS[name]}`")


def variant_of(options: dict) -> dict:
    """A sweep point's options as a compare variant (``loss`` + what differs from the shared run settings;
    the sweep's ``max_seq_length`` and ``negatives`` are compare's ``train_max_seq_length`` and
    ``train_negatives``)."""
    out = {"loss": options["loss"]}
    for k, v in options.items():
        if k in _SWEEP_ONLY or FINAL_RUN.get(k) == v:
            continue
        out[k] = v
    if options.get("max_seq_length", 128) != FINAL_RUN["train_max_seq_length"]:
        out["train_max_seq_length"] = options["max_seq_length"]
    if options.get("negatives", 1) != 1:
        out["train_negatives"] = options["negatives"]
    return out


def final_run(variants: dict) -> dict:
    """The finals' run settings: :data:`FINAL_RUN`, and where a variant trains on more than one negative,
    mining enough for it (``negatives``) with every other variant on the first (``train_negatives: 1``): the
    study's triplets, which run_unit checks the mined file's first column against."""
    need = max(v.get("train_negatives", 1) for v in variants.values())
    return {**FINAL_RUN, "negatives": need, "train_negatives": 1} if need > 1 else dict(FINAL_RUN)


def freeze(force: bool = False) -> Path:
    """configs/study/final.yaml from the best dev point of each model's sweeps (WiSE-FT 0.5 of each contrastive
    model, study.yaml's ``contrastive_models``: amendment 6), with only
    the DPO variant best on dev (:data:`VARIANTS`, amendment 4); every sweep must have run to its end, and a kept
    model whose best trains the most epochs the plan gives must have its point beyond (:func:`epochs_edge`,
    amendment 5). An existing final.yaml (the config the finals are judged by) is kept unless ``force``."""
    import yaml

    path = S.CONFIGS / "final.yaml"
    if path.exists() and not force:
        raise SystemExit(f"freeze: {path} exists (the finals' config); --force replaces it")
    variants, dev = {}, {}
    for name, (_, keep) in FINALS.items():
        try:
            best = S.best_point(model_sweeps(name), keep)
        except SystemExit as err:
            raise SystemExit(f"freeze: {name}: {err}") from None
        variants[name], dev[name] = best["options"], best["fast_dev"]["ndcg@10"]
    chosen = max(VARIANTS, key=lambda m: dev[m])
    for name in VARIANTS:
        if name != chosen:
            del variants[name]
    for name, options in variants.items():
        edge = epochs_edge(name, {"options": options})
        if edge:
            raise SystemExit(f"freeze: {name}: {edge}")
        variants[name] = variant_of(options)
    for name in S.plan()["contrastive_models"]:  # "the best contrastive model" is chosen on dev over the finals' seeds: both get one
        variants[name]["wise_ft"] = [0.5]
    header = (f"# the finals' compare config, written by `python scripts/study.py freeze` (commit {S._commit()}) from\n"
              "# the best fast-dev point of each model's sweeps in benchmarks/results/study/tune_*.json; the DPO\n"
              f"# variant best on dev (amendment 4): {chosen} (fast dev nDCG@10: "
              + ", ".join(f"{m} {dev[m]:.4f}" for m in VARIANTS) + ")\n")
    path.write_text(header + yaml.safe_dump({**final_run(variants), "losses": list(variants), "variants": variants},
                                            sort_keys=False))
    return path


#: what a confirmation point takes from its base (the full budget), not from the screened row
_BUDGET = ("num_train_epochs", "negatives")


def confirm_points(confirm: dict, fixed: dict) -> list[dict]:
    """``confirm: {final model: screening sweep}`` (amendment 2 of study_scifact.md): for each final model, the
    best row of its screening sweep (:data:`FINALS`' filter for the model), as a point on ``fixed`` (the best of
    DPO's grid, epoch and negatives sweeps): the screened options that differ from ``fixed``, the budget
    (:data:`_BUDGET`) from ``fixed``. The model ``dpo``'s screen varies DPO's own options around its screening
    base (the sweep's ``base_on``): its best is confirmed only if it beat that base."""
    import yaml

    points = []
    for model, sweep in confirm.items():
        if model not in DPO_FAMILY:
            raise SystemExit(f"confirm: {model!r} is not a DPO-family final model ({', '.join(DPO_FAMILY)})")
        best = S.best_point([sweep], FINALS[model][1])
        if model == "dpo":
            screen = yaml.safe_load((S.CONFIGS / f"tune_{sweep}.yaml").read_text()).get("base_on")
            if not screen:
                raise SystemExit(f"confirm: dpo: {S.CONFIGS / f'tune_{sweep}.yaml'} has no base_on (the screening base "
                                 "its best must beat)")
            base = S.best_point([screen] if isinstance(screen, str) else screen, FINALS[model][1])
            if best["fast_dev"]["ndcg@10"] <= base["fast_dev"]["ndcg@10"]:
                print(f"confirm: {sweep}'s best ({best['fast_dev']['ndcg@10']:.4f}) does not beat its screening base "
                      f"({base['fast_dev']['ndcg@10']:.4f}): nothing of dpo to confirm")
                continue
        else:
            edge = variant_edge(sweep, FINALS[model][1], best)
            if edge:
                raise SystemExit(f"confirm: {model}: its best screened {edge[0]} ({best['options'][edge[0]]:g}) is its "
                                 f"list's end: add {{{edge[0]}: {edge[1]:g}}} to configs/study/tune_{sweep}.yaml "
                                 f"(amendment 3 of study_scifact.md) and run `python scripts/study.py tune {sweep}`")
        point = {k: v for k, v in best["options"].items() if k not in _BUDGET and fixed.get(k) != v}
        if point not in points:
            points.append(point)
    return points


#: amendment 3: each variant's own parameter as listed in the plan (its ends), and the one point screened beyond
#: each end when the best lies there (once: a best at the point beyond is not extended again); sdpo's gamma 1.0 is
#: the bound of its range [0, 1] (full subtraction of the reference's scores): nothing lies beyond it
VARIANT_ENDS = {"mnrl_weight": ((0.25, 0.1), (0.75, 0.9)), "sdpo_gamma": ((0.25, 0.125),),
                "hinge_margin": ((0.5, 0.25), (2.0, 4.0))}


def variant_edge(sweep: str, keep, best: dict) -> tuple[str, float] | None:
    """``(parameter, the value to screen)`` when ``best`` (the best row of sweep ``sweep`` that passes ``keep``)
    has its variant parameter at an end of the plan's list and the point beyond is not recorded; else None."""
    import json

    rows = [r for r in json.loads((S.KEPT / f"tune_{sweep}.json").read_text()).get("points", []) if keep(r["options"])]
    for param, ends in VARIANT_ENDS.items():
        value = best["options"].get(param)
        for end, beyond in ends:
            if value == end and all(r["options"].get(param) != beyond for r in rows):
                return param, beyond
    return None

