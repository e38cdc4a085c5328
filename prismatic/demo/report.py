"""Tables, statistics and the plot of the demo's world-model study (from the evaluation harness's results.json files).

Every number here is a held-out (or validation) accuracy in percent as the `demo-world` benchmark reports it, one
metric per question type (`accuracy__DemoWorld-<type>`). A group's score (static single-image, future, multi-frame)
is the unweighted mean over its types. Across seeds: mean, sample standard deviation and a 95% confidence interval
of the mean from Student's t (seeds are few, so the normal 1.96 would be too narrow).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from prismatic.demo.future import FUTURE_TYPES, chance_level
from prismatic.demo.questions import MOTION_TYPES, SINGLE_TYPES

GROUPS: dict[str, tuple[str, ...]] = {"static": SINGLE_TYPES, "future": FUTURE_TYPES, "motion": MOTION_TYPES}
# Two-sided 95% quantiles of Student's t by degrees of freedom (seeds - 1); beyond the table, the normal's 1.96.
T_975: dict[int, float] = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
                           9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}  # fmt: skip


def type_metric(question_type: str) -> str:
    return f"accuracy__DemoWorld-{question_type}"


def group_scores(metrics: Mapping[str, float]) -> dict[str, float]:
    """Per type and per group accuracy (percent) from one results.json's metrics (missing types are skipped)."""
    scores = {t: metrics[type_metric(t)] for types in GROUPS.values() for t in types if type_metric(t) in metrics}
    for group, types in GROUPS.items():
        present = [scores[t] for t in types if t in scores]
        if present:
            scores[group] = sum(present) / len(present)
    return scores


def chance(name: str) -> float:
    """Chance level (percent) of a question type or group."""
    types = GROUPS.get(name, (name,))
    return 100 * sum(chance_level(t) for t in types) / len(types)


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float
    low: float  # 95% confidence interval of the mean
    high: float
    n: int

    def cell(self) -> str:
        if self.n == 1:
            return f"{self.mean:.1f}"
        return f"{self.mean:.1f} ± {self.std:.1f} [{self.low:.1f}, {self.high:.1f}]"


def summarize(values: Sequence[float]) -> Summary:
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return Summary(mean, 0.0, mean, mean, 1)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = T_975.get(n - 1, 1.96 if n - 1 > 30 else T_975[max(k for k in T_975 if k <= n - 1)])
    half = t * std / math.sqrt(n)
    return Summary(mean, std, mean - half, mean + half, n)


def per_type_table(scores: Mapping[str, Mapping[str, float]], titles: Mapping[str, str],
                   counts: Mapping[str, int]) -> str:  # fmt: skip
    """One model per column: every question type and group mean, with chance and item counts."""
    models = list(scores)
    lines = ["| question type | chance % | " + " | ".join(f"{titles[m]} %" for m in models) + " | n |",
             "| --- | ---: | " + " | ".join("---:" for _ in models) + " | ---: |"]  # fmt: skip
    for group, types in GROUPS.items():
        for question_type in types:
            if not all(question_type in scores[m] for m in models):
                continue
            cells = " | ".join(f"{scores[m][question_type]:.1f}" for m in models)
            count = counts.get(question_type, "")
            lines.append(f"| {question_type} | {chance(question_type):.1f} | {cells} | {count} |")
        if all(group in scores[m] for m in models):
            cells = " | ".join(f"**{scores[m][group]:.1f}**" for m in models)
            lines.append(f"| **mean {group}** | {chance(group):.1f} | {cells} | |")
    return "\n".join(lines)


def study_table(cells: Mapping[tuple[str, int], Sequence[Mapping[str, float]]], titles: Mapping[str, str],
                group: str) -> str:  # fmt: skip
    """Mean ± std [95% CI] over seeds of one group's accuracy: labelled-set size x model."""
    models = list(dict.fromkeys(m for m, _ in cells))
    sizes = sorted({n for _, n in cells})
    lines = [f"| {group} (chance {chance(group):.1f}%): examples per type | "
             + " | ".join(titles[m] for m in models) + " |",
             "| ---: | " + " | ".join("---:" for _ in models) + " |"]  # fmt: skip
    for size in sizes:
        row = [summarize([s[group] for s in cells[(m, size)]]).cell() if (m, size) in cells else "" for m in models]
        lines.append(f"| {size} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot_study(cells: Mapping[tuple[str, int], Sequence[Mapping[str, float]]], titles: Mapping[str, str],
               path: Path) -> None:  # fmt: skip
    """Accuracy vs labelled examples per type, one line per model (95% CI as error bars), one panel per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(m for m, _ in cells))
    sizes = sorted({n for _, n in cells})
    figure, axes = plt.subplots(1, len(GROUPS), figsize=(4.2 * len(GROUPS), 3.6), sharey=True)
    for axis, group in zip(axes, GROUPS):
        for model in models:
            stats = [summarize([s[group] for s in cells[(model, n)]]) for n in sizes if (model, n) in cells]
            xs = [n for n in sizes if (model, n) in cells]
            axis.errorbar(xs, [s.mean for s in stats], yerr=[[s.mean - s.low for s in stats],
                          [s.high - s.mean for s in stats]], marker="o", capsize=3, label=titles[model])  # fmt: skip
        axis.axhline(chance(group), color="grey", linestyle=":", label="chance")
        axis.set_xscale("log")
        axis.set_xticks(sizes, [str(n) for n in sizes])
        axis.set_title(f"{group} questions")
        axis.set_xlabel("labelled examples per question type")
    axes[0].set_ylabel("held-out accuracy (%)")
    axes[-1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
