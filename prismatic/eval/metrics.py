"""Ranking metrics the protocol reports beside accuracy for binary closed-form tasks (VSR, POPE): AUROC and AUPR
(average precision), from the renormalised probability of the positive answer. Written out (a few lines each) rather
than pulling in scikit-learn; they follow `sklearn.metrics.roc_auc_score` and `average_precision_score` (ties in the
score count half for AUROC; AUPR steps at each distinct threshold).
"""

from __future__ import annotations

from collections.abc import Sequence


def auroc(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve in [0, 1] (the Mann-Whitney U statistic, ties counted half); None without both
    classes."""
    positives = [s for s, y in zip(scores, labels) if y]
    negatives = [s for s, y in zip(scores, labels) if not y]
    if not positives or not negatives:
        return None
    ranked = sorted(scores)
    # Average 1-based rank of each distinct score (ties share their mean rank).
    rank_of: dict[float, float] = {}
    start = 0
    while start < len(ranked):
        end = start
        while end + 1 < len(ranked) and ranked[end + 1] == ranked[start]:
            end += 1
        rank_of[ranked[start]] = (start + end) / 2 + 1
        start = end + 1
    rank_sum = sum(rank_of[s] for s in positives)
    n_pos, n_neg = len(positives), len(negatives)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def average_precision(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Average precision in [0, 1]: sum over distinct thresholds (high to low) of precision x recall increment; None
    without positives."""
    n_pos = sum(bool(y) for y in labels)
    if n_pos == 0:
        return None
    pairs = sorted(zip(scores, labels), key=lambda pair: -pair[0])
    true_pos = false_pos = 0
    previous_recall, total, index = 0.0, 0.0, 0
    while index < len(pairs):
        threshold = pairs[index][0]
        while index < len(pairs) and pairs[index][0] == threshold:
            true_pos += bool(pairs[index][1])
            false_pos += not pairs[index][1]
            index += 1
        recall = true_pos / n_pos
        total += (recall - previous_recall) * true_pos / (true_pos + false_pos)
        previous_recall = recall
    return total
