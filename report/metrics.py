"""Evaluation metrics of a prediction table, as one JSON-serialisable dict plus full curves.

Every number but the curves comes from scikit-learn; this module only picks the labelled
rows (tables/predictions.py says which those are), lines the scores up with the model's
class order, and stores the results in a plain form that the evaluate stage writes
to disk and the report reads back.

Curves are kept at full resolution: one point per distinct score, every
threshold kept. W&B's PR plot samples 20 points and its ROC plot drops points
past a table row limit; the tail of a curve is exactly where two models differ,
so nothing is dropped here. A curve is held as counts (`Curve`: each distinct
score with the positives and negatives at or above it), which is what scikit-learn's
precision_recall_curve and roc_curve both derive their arrays from: one sort gives
both, the counts are exact, and they store compactly (`curves_npz`). At 1,000,000
rows x 10 classes the pooled micro curve has ~10 million points, so the arrays
of a curve are derived only when asked for (`Curve.pr`, `Curve.roc`) and the
plots draw a thinned copy (report/plots.py).

scikit-learn is imported inside the functions that use it: it takes about a
second, and report/html.py imports this module only for `round_significant`.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import numpy as np
import pandas as pd
from lineage.errors import UserError
from tables.predictions import labelled_mask, score_column

SIGNIFICANT_DIGITS = 6
EXACT_POWER_OF_TEN = 22  # 10**22 is the largest power of ten a double holds exactly


def compute_metrics(frame: pd.DataFrame, classes: list[str], top_k: int = 3) -> dict:
    """Accuracy, per-class and averaged scores, confusion matrix and full curves.

    Everything but "curves" is plain JSON; "curves" holds a `Curve` per class and the
    micro pool (write them with `curves_npz`, read them back with `read_curves`).

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
    """AP, ROC AUC and the full curve of one class against the rest (or of the micro pool)."""
    from sklearn import metrics as skm

    curve = Curve.ranking(positive, score)
    result = {"average_precision": None, "roc_auc": None, "curves": curve}
    if curve.positives == 0:
        result["note"] = f"{name}: no positive examples among {len(positive)} labelled rows"
        return result
    pr = curve.pr()
    # scikit-learn's average_precision_score, from the curve already sorted (saves a sort).
    result["average_precision"] = float(-np.sum(np.diff(pr["recall"]) * pr["precision"][:-1]))
    if curve.negatives == 0:
        result["note"] = f"{name}: no negative examples, so ROC is undefined"
        return result
    roc = curve.roc()
    result["roc_auc"] = float(skm.auc(roc["fpr"], roc["tpr"]))  # roc_auc_score's area, without its own sort
    return result


@dataclass(frozen=True, eq=False)
class Curve:
    """One ranking at full resolution: each distinct score (descending) with the positives and
    negatives scored at or above it. scikit-learn's precision_recall_curve and
    roc_curve(drop_intermediate=False) are both functions of these counts (`pr`, `roc`)."""

    thresholds: np.ndarray  # distinct scores, descending
    tps: np.ndarray  # cumulative positives at or above each threshold (int64)
    fps: np.ndarray  # cumulative negatives at or above each threshold (int64)

    @classmethod
    def ranking(cls, positive: np.ndarray, score: np.ndarray) -> "Curve":
        """scikit-learn's _binary_clf_curve, unweighted: one sort, ties merged into one point."""
        order = np.argsort(score)[::-1]
        ranked = score[order]
        ends = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1] if len(ranked) else np.zeros(0, np.int64)
        tps = np.cumsum(positive[order], dtype=np.int64)[ends]
        return cls(thresholds=_narrowest_float(ranked[ends]), tps=tps, fps=ends + 1 - tps)

    @property
    def positives(self) -> int:
        return int(self.tps[-1]) if len(self.tps) else 0

    @property
    def negatives(self) -> int:
        return int(self.fps[-1]) if len(self.fps) else 0

    def __len__(self) -> int:
        return len(self.thresholds)

    def __eq__(self, other) -> bool:  # two metrics dicts compare equal when their curves hold the same points
        return isinstance(other, Curve) and all(np.array_equal(getattr(self, name), getattr(other, name))
                                                for name in ("thresholds", "tps", "fps"))

    __hash__ = None

    def pr(self) -> dict | None:
        """precision_recall_curve's arrays (thresholds ascending, then the (recall 0, precision 1) end);
        None without positives."""
        if self.positives == 0:
            return None
        predicted = self.tps + self.fps
        precision = np.divide(self.tps, predicted, out=np.zeros(len(self.tps)), where=predicted != 0)
        return {"precision": np.r_[precision[::-1], 1.0], "recall": np.r_[self.tps[::-1] / self.positives, 0.0],
                "thresholds": self.thresholds[::-1]}

    def roc(self) -> dict | None:
        """roc_curve's arrays with drop_intermediate=False (first threshold +inf); None unless both
        positives and negatives exist."""
        if self.positives == 0 or self.negatives == 0:
            return None
        return {"fpr": np.r_[0.0, self.fps / self.negatives], "tpr": np.r_[0.0, self.tps / self.positives],
                "thresholds": np.r_[np.inf, self.thresholds]}


def _narrowest_float(values: np.ndarray) -> np.ndarray:
    """float32 when that holds every value exactly (scores are stored as float32), else float64."""
    narrow = values.astype(np.float32)
    return narrow if np.array_equal(narrow, values) else values


CURVES_FILE = "curves.npz"


def curves_npz(curves: dict, classes: list[str]) -> bytes:
    """Every curve, exact and compact, as one .npz (numpy's zip of arrays; no pickle).

    Per curve: the thresholds, and the positives and negatives added at each one (the counts'
    steps, mostly 0 or 1, so they compress to almost nothing; the cumulative counts are their sum).
    The zip entries carry a fixed date, so the same curves give the same bytes (and object digest).
    """
    arrays = {"classes": np.asarray(classes, dtype=str)}
    named = [(f"class{index}", curves["per_class"][name]) for index, name in enumerate(classes)]
    for key, curve in named + [("micro", curves["micro"])]:
        arrays[f"{key}_thresholds"] = curve.thresholds
        arrays[f"{key}_positives"] = _steps(curve.tps)
        arrays[f"{key}_negatives"] = _steps(curve.fps)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for key, array in arrays.items():
            entry = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            entry.compress_type = zipfile.ZIP_DEFLATED  # sorted scores share their high bytes: 77 MB -> 33 MB
            with archive.open(entry, "w", force_zip64=True) as stream:
                np.lib.format.write_array(stream, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def read_curves(data: bytes) -> dict:
    """`curves_npz`'s bytes back as {"classes", "per_class": {name: Curve}, "micro": Curve}."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            classes = [str(name) for name in arrays["classes"]]

            def curve(key: str) -> Curve:
                return Curve(thresholds=arrays[f"{key}_thresholds"],
                             tps=np.cumsum(arrays[f"{key}_positives"], dtype=np.int64),
                             fps=np.cumsum(arrays[f"{key}_negatives"], dtype=np.int64))

            return {"classes": classes, "micro": curve("micro"),
                    "per_class": {name: curve(f"class{index}") for index, name in enumerate(classes)}}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise UserError(f"{CURVES_FILE} is damaged ({error}); re-run `pipeline.py evaluate --force` to "
                        "write it again") from None


def _steps(cumulative: np.ndarray) -> np.ndarray:
    steps = np.diff(cumulative, prepend=0)
    return steps.astype(np.uint8 if (steps.max(initial=0) < 256) else np.uint32)


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
