"""Evaluation metrics of a prediction table, as one JSON-serialisable dict.

Every number comes from scikit-learn; this module only picks the labelled rows
(tables/predictions.py says which those are), lines the scores up with the model's
class order, and stores the results in a plain form that the evaluate stage writes
to disk and the report reads back.

Curves are kept at full resolution: one point per distinct score, every
threshold kept. W&B's PR plot samples 20 points and its ROC plot drops points
past a table row limit; the tail of a curve is exactly where two models differ,
so nothing is dropped here. Floats are rounded to 6 significant digits, which
keeps the JSON compact without moving a point by a visible amount.

scikit-learn is imported inside the functions that use it: it takes about a
second, and report/html.py imports this module only for `round_significant`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from lineage.errors import UserError
from tables.predictions import labelled_mask, score_column

SIGNIFICANT_DIGITS = 6
EXACT_POWER_OF_TEN = 22  # 10**22 is the largest power of ten a double holds exactly


def compute_metrics(frame: pd.DataFrame, classes: list[str], top_k: int = 3) -> dict:
    """Accuracy, per-class and averaged scores, confusion matrix and full curves.

    Unlabelled rows (`labelled_mask`) are left out and counted as `unlabelled`. The
    prediction is the table's `guess` column (what the user sees), or the arg-max
    of the scores when the table has none.
    """
    from sklearn import metrics as skm

    if top_k < 1:
        raise UserError(f"top_k must be at least 1, got {top_k}")
    classes = list(classes)
    y_true, y_pred, scores, unlabelled = _labelled_arrays(frame, classes)
    labels = np.arange(len(classes))
    onehot = y_true[:, None] == labels[None, :]

    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    per_class, curves = {}, {}
    for index, name in enumerate(classes):
        ranking = _one_vs_rest(onehot[:, index], scores[:, index], name)
        curves[name] = ranking.pop("curves")
        per_class[name] = {"precision": float(precision[index]), "recall": float(recall[index]),
                           "f1": float(f1[index]), "support": int(support[index]), **ranking}
    micro_ranking = _one_vs_rest(onehot.ravel(), scores.ravel(), "micro")

    return {
        "classes": classes,
        "labelled": int(len(y_true)),
        "unlabelled": unlabelled,
        "top_k": int(top_k),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "top_k_accuracy": _top_k_accuracy(y_true, scores, top_k),
        "per_class": per_class,
        "micro": {**_averaged(y_true, y_pred, labels, "micro"),
                  "average_precision": micro_ranking["average_precision"],
                  "roc_auc": micro_ranking["roc_auc"]},
        "macro": {**_averaged(y_true, y_pred, labels, "macro"),
                  "average_precision": _mean_defined(per_class, "average_precision"),
                  "roc_auc": _mean_defined(per_class, "roc_auc")},
        "confusion": _confusion(y_true, y_pred, labels, classes),
        "curves": {"per_class": curves, "micro": micro_ranking["curves"]},
    }


def score_columns(frame: pd.DataFrame, classes: list[str]) -> list[str]:
    """The `score_<class>` column names in class order; a missing one is a UserError."""
    columns = [score_column(name) for name in classes]
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise UserError(f"prediction table lacks score columns {missing}; "
                        f"it has {list(frame.columns)}")
    return columns


def round_significant(values, digits: int = SIGNIFICANT_DIGITS) -> np.ndarray:
    """Round to `digits` significant digits, vectorised; inf and nan pass through.

    Dividing an exact integer by an exact power of ten (up to 1e22) gives the
    double nearest the decimal, so the rounded values also print short in JSON.
    The rare values past that range go through the decimal string instead.
    """
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values) & (values != 0)
    exponent = np.zeros(values.shape, dtype=np.int64)
    exponent[finite] = digits - 1 - np.floor(np.log10(np.abs(values[finite]))).astype(np.int64)
    rounded = values.copy()
    up = finite & (exponent >= 0) & (exponent <= EXACT_POWER_OF_TEN)
    scale = 10.0 ** exponent[up]
    rounded[up] = np.round(values[up] * scale) / scale
    down = finite & (exponent < 0) & (exponent >= -EXACT_POWER_OF_TEN)
    scale = 10.0 ** -exponent[down]
    rounded[down] = np.round(values[down] / scale) * scale
    far = finite & ~up & ~down
    rounded[far] = [float(f"{value:.{digits}g}") for value in values[far].tolist()]
    return rounded


def _labelled_arrays(frame: pd.DataFrame, classes: list[str]):
    """(truth indices, predicted indices, score matrix, unlabelled count) of the labelled rows."""
    if not classes:
        raise UserError("no classes given: metrics need the model's class list")
    columns = score_columns(frame, classes)
    mask = labelled_mask(frame)
    labelled = frame.loc[mask]
    if labelled.empty:
        raise UserError(f"none of the {len(frame)} prediction rows has a truth label; "
                        "metrics need labelled images")
    scores = labelled[columns].to_numpy(dtype=np.float64)
    if not np.isfinite(scores).all():
        bad = [column for column in columns if not np.isfinite(labelled[column]).all()]
        raise UserError(f"score columns {bad} hold NaN or infinite values")
    y_true = _class_indices(labelled["truth"], classes, "truth")
    if "guess" in labelled.columns:
        y_pred = _class_indices(labelled["guess"], classes, "guess")
    else:
        y_pred = scores.argmax(axis=1)
    return y_true, y_pred, scores, int((~mask).sum())


def _class_indices(values: pd.Series, classes: list[str], column: str) -> np.ndarray:
    codes = pd.Categorical(values.astype(object), categories=classes).codes.astype(np.int64)
    if (codes < 0).any():
        unknown = sorted(set(values[codes < 0].astype(str)))
        raise UserError(f"{column} labels {unknown[:10]} are not among the model's classes "
                        f"{classes}")
    return codes


def _one_vs_rest(positive: np.ndarray, score: np.ndarray, name: str) -> dict:
    """AP, ROC AUC and both full curves of one class against the rest (or of the micro pool)."""
    from sklearn import metrics as skm

    n_positive = int(positive.sum())
    n_negative = int(len(positive) - n_positive)
    result = {"average_precision": None, "roc_auc": None,
              "curves": {"pr": None, "roc": None}}
    if n_positive == 0:
        result["note"] = f"{name}: no positive examples among {len(positive)} labelled rows"
        return result
    precision, recall, thresholds = skm.precision_recall_curve(positive, score)
    # scikit-learn's average_precision_score, from the curve already sorted (saves a sort).
    result["average_precision"] = float(-np.sum(np.diff(recall) * precision[:-1]))
    result["curves"]["pr"] = {"precision": _compact(precision), "recall": _compact(recall),
                              "thresholds": _compact(thresholds)}
    if n_negative == 0:
        result["note"] = f"{name}: no negative examples, so ROC is undefined"
        return result
    fpr, tpr, roc_thresholds = skm.roc_curve(positive, score, drop_intermediate=False)
    result["roc_auc"] = float(skm.auc(fpr, tpr))  # roc_auc_score's area, without its own sort
    # roc_curve's first threshold is +inf (nothing predicted positive); JSON has no inf.
    result["curves"]["roc"] = {"fpr": _compact(fpr), "tpr": _compact(tpr),
                               "thresholds": [None] + _compact(roc_thresholds[1:])}
    return result


def _top_k_accuracy(y_true: np.ndarray, scores: np.ndarray, top_k: int) -> float:
    from sklearn import metrics as skm

    if top_k >= scores.shape[1]:
        return 1.0  # every class is within the top k; scikit-learn would warn and say the same
    return float(skm.top_k_accuracy_score(y_true, scores, k=top_k,
                                          labels=np.arange(scores.shape[1])))


def _averaged(y_true, y_pred, labels, average: str) -> dict:
    from sklearn import metrics as skm

    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=average, zero_division=0)
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def _mean_defined(per_class: dict, key: str) -> float | None:
    values = [entry[key] for entry in per_class.values() if entry[key] is not None]
    return float(np.mean(values)) if values else None


def _confusion(y_true, y_pred, labels, classes: list[str]) -> dict:
    from sklearn import metrics as skm

    counts = skm.confusion_matrix(y_true, y_pred, labels=labels)
    totals = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    return {"classes": classes, "counts": counts.tolist(),
            "normalised": round_significant(normalised).tolist()}


def _compact(values: np.ndarray) -> list[float]:
    return round_significant(values).tolist()
