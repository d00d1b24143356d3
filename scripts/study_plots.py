"""The study report's plots: SciFact test nDCG@10 against training triplets (data_efficiency.png, the base as a
dashed line) and drift against beta (drift_vs_beta.png), under benchmarks/results/study/."""

from __future__ import annotations

import study as S


def plots(data: dict, drift: dict, base: float | None = None) -> list[str]:
    """The data-efficiency plot (with the base's SciFact test nDCG@10 as a dashed line) and drift against beta."""
    from dpo_retrieval.experiment.plots import _new_figure, _save_figure

    written = []
    if any(r["mean"] is not None for r in data["rows"]):  # nothing recorded yet: no empty plot
        fig, axes = _new_figure(6, 4)
        ax = axes[0][0]
        sizes = list(dict.fromkeys(r["size"] for r in data["rows"]))  # 64, 128, ..., "all": one slot each
        for m in dict.fromkeys(r["model"] for r in data["rows"]):
            pts = [r for r in data["rows"] if r["model"] == m and r["mean"] is not None]
            if not pts:  # not recorded at any size yet
                continue
            ax.errorbar([sizes.index(r["size"]) for r in pts], [r["mean"] for r in pts],
                        yerr=[r["std"] or 0 for r in pts], marker="o", capsize=3, label=m)
        if base is not None:
            ax.axhline(base, color="grey", linestyle="--", linewidth=1, label=f"base ({base:.4f})")
        ax.set_xticks(range(len(sizes)), [str(x) for x in sizes])
        ax.set_xlabel("training triplets")
        ax.set_ylabel("SciFact test nDCG@10 (mean ± std over seeds)")
        ax.legend()
        written.append(str(_save_figure(fig, S.KEPT / "data_efficiency.png")))
    pts = [r for r in drift["beta_curve"] if r["beta"] is not None]
    if pts:
        fig, axes = _new_figure(10, 4, ncols=2)
        a1, a2 = axes[0]
        for lr in sorted({r["learning_rate"] for r in pts}):
            sel = sorted((r for r in pts if r["learning_rate"] == lr), key=lambda r: r["beta"])
            a1.plot([r["beta"] for r in sel], [r["drift"]["pool"] for r in sel], marker="o", label=f"lr {lr:g}")
            a2.scatter([r["drift"]["pool"] for r in sel], [r["fast_dev_ndcg@10"] for r in sel], label=f"lr {lr:g}")
        a1.set_xscale("log")
        a1.set_xlabel("beta")
        a1.set_ylabel("mean |s - s_ref| on dev pool pairs")
        a2.set_xlabel("mean |s - s_ref| on dev pool pairs")
        a2.set_ylabel("fast dev nDCG@10")
        a1.legend()
        written.append(str(_save_figure(fig, S.KEPT / "drift_vs_beta.png")))
    return written
