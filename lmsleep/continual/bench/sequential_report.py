"""The `sequential` benchmark's figure and readings of its results (shared with `levels`): ACC and
forgetting per system, what each system had learnt before it could forget it, and the forgetting verdict."""
from __future__ import annotations

NAME = "sequential"


def plot(summary: dict, path, per_seed: list[dict], title: str = NAME) -> None:
    """ACC and forgetting per system, mean ± std over seeds (dots: seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(summary)
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 1.3 * len(systems) + 3), 3.8))
    for ax, metric in zip(axes, ("ACC", "forgetting")):
        means = [100 * summary[s][metric]["mean"] for s in systems]
        stds = [100 * summary[s][metric]["std"] for s in systems]
        ax.bar(range(len(systems)), means, yerr=stds, capsize=3, color="#9ecae1", edgecolor="#3182bd")
        for i, s in enumerate(systems):
            values = [100 * v for v in summary[s][metric]["values"]]
            ax.scatter([i] * len(values), values, s=10, color="#08519c", zorder=3)
        ax.set_xticks(range(len(systems)), systems, rotation=30, ha="right")
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(f"{title}: {metric}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def peak(R: list[list[float]]) -> float:
    """Mean over the tasks before the last of their best accuracy before the end: what there was to forget."""
    T = len(R)
    return sum(max(R[l][j] for l in range(T - 1)) for j in range(T - 1)) / (T - 1)


def peaks(per_seed: list[dict]) -> dict[str, float]:
    """peak(R) per system, mean over seeds (from the stored R matrices)."""
    systems = {s for r in per_seed for s in r["R"]}
    return {s: sum(peak(r["R"][s]) for r in per_seed if s in r["R"]) / sum(s in r["R"] for r in per_seed)
            for s in systems}


def forgetting_verdict(summary: dict, per_seed: list[dict], sleeps: list[str]) -> str:
    """'Sleep at least halves the forgetting of plain fine-tuning', read beside what each had learnt (a system
    that learns nothing forgets nothing) and the final accuracy."""
    ft = summary["finetune"]
    best = min(sleeps, key=lambda s: summary[s]["forgetting"]["mean"])
    f_ft, f_s = ft["forgetting"]["mean"], summary[best]["forgetting"]["mean"]
    learnt = peaks(per_seed)
    halves = f_s <= f_ft / 2
    useful = summary[best]["ACC"]["mean"] >= ft["ACC"]["mean"] and learnt[best] >= learnt["finetune"] / 2
    verdict = ("holds" if halves and useful else
               "holds only vacuously: it forgets less because it learnt little, and its ACC is not better"
               if halves else "does not hold")
    return (f"Claim 'Sleep at least halves the forgetting of plain fine-tuning': {verdict} here (forgetting: "
            f"fine-tuning {f_ft:.1%}, {best} {f_s:.1%}; best accuracy reached on the earlier languages before the "
            f"end: fine-tuning {learnt['finetune']:.1%}, {best} {learnt[best]:.1%}; ACC fine-tuning "
            f"{ft['ACC']['mean']:.1%}, {best} {summary[best]['ACC']['mean']:.1%}).")



DIAGNOSIS = (
    "Why Sleep fails after the first language here (measured on seed 0, language 0 then 1, sleep-1, 120 "
    "seeding steps at lr 3e-2): the first book's consolidation works (closed-book 76% on language 0), but the "
    "new low-rank expert is always on (`expert_gating` \"sum\"), and it breaks reading: with it, in-context "
    "accuracy on a new book falls from 100% to 19% (39% on language 0's own book). The teacher of the next "
    "consolidation is that model reading the next book, so its replay is wrong; after language 1, language 1 "
    "was 0% and language 0 6% closed-book. A gate that can switch an expert off (routing on the language's "
    "name), or replay that also keeps in-context reading (the student distilled on teacher samples with a "
    "book in context), are the next things to try.")
