"""Exact average precision of class scores, with scikit-learn's semantics and without importing it.

Training computes AP on the validation predictions at the end of every epoch (models/training.py),
where importing scikit-learn would cost a second per process and its input checks a copy per call;
this is the same number from one sort per ranking. It lives in tables/ so that both models/ and
report/ may use it (imports point one way: docs/architecture.md).

Semantics, as `sklearn.metrics.average_precision_score`: AP = sum over distinct thresholds of
(R_n - R_{n-1}) * P_n, tied scores forming one threshold. A class with no positive example has no
defined AP (scikit-learn warns and returns a number that means nothing); it is None here, and the
macro average is over the classes whose AP is defined, so the caller can say which were left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def average_precision(positive: np.ndarray, score: np.ndarray) -> float | None:
    """AP of one ranking (`positive` true where the row is of the class); None without a positive."""
    positive = np.asarray(positive, dtype=bool)
    score = np.asarray(score)
    if positive.shape != score.shape or positive.ndim != 1:
        raise ValueError(f"positive {positive.shape} and score {score.shape} must be one-dimensional and equal")
    if not np.isfinite(score).all():
        raise ValueError("scores hold NaN or infinite values: AP is undefined")
    order = np.argsort(score, kind="stable")[::-1]
    ranked = score[order]
    ends = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1] if len(ranked) else np.zeros(0, np.int64)
    true_positives = np.cumsum(positive[order], dtype=np.int64)[ends]
    if not len(true_positives) or true_positives[-1] == 0:
        return None
    precision = true_positives / (ends + 1)
    recall = true_positives / true_positives[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


@dataclass(frozen=True)
class AveragePrecisions:
    """Micro, macro and per-class AP of one set of predictions."""

    micro: float | None  # every (row, class) score pooled into one ranking
    macro: float | None  # mean over the classes whose AP is defined; None when none is
    per_class: list[float | None]  # in class-index order; None for a class with no positive row

    @property
    def undefined(self) -> list[int]:
        """The class indices left out of the macro average (no positive row)."""
        return [index for index, value in enumerate(self.per_class) if value is None]


def average_precisions(labels: np.ndarray, scores: np.ndarray) -> AveragePrecisions:
    """AP of an (n, classes) score matrix against integer labels, as scikit-learn's
    average_precision_score(one_hot(labels), scores, average="micro" | None) computes it."""
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    if scores.ndim != 2 or labels.shape != (scores.shape[0],):
        raise ValueError(f"labels {labels.shape} must have one entry per row of scores {scores.shape}")
    one_hot = labels[:, None] == np.arange(scores.shape[1])[None, :]
    per_class = [average_precision(one_hot[:, index], scores[:, index]) for index in range(scores.shape[1])]
    defined = [value for value in per_class if value is not None]
    return AveragePrecisions(micro=average_precision(one_hot.ravel(), scores.ravel()),
                             macro=float(np.mean(defined)) if defined else None, per_class=per_class)
