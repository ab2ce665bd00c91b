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

Operating thresholds (`thresholds`) come from a second kind of curve per class, the operating curve:
the labelled rows whose top score is that class's, ranked by that score, each right or wrong. It is
exactly what infer's `min_score` acts on (a guess whose top score is below its class's minimum becomes
"unknown"), so the precision, recall and unknown count read off it at a threshold are the ones a
prediction table made with that minimum scores. The one-vs-rest PR curve cannot say that: below 0.5
its "predicted" rows include images whose top guess is another class, which no minimum changes.

An "unknown" guess (tables/predictions.py) is wrong for accuracy and recall, predicts no class (so
it leaves precision alone), and is counted on its own: overall, per true class, and as the last
column of the confusion matrix.

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
from tables.predictions import UNKNOWN, labelled_mask, score_column, unknown_mask

SIGNIFICANT_DIGITS = 6
EXACT_POWER_OF_TEN = 22  # 10**22 is the largest power of ten a double holds exactly
DEFAULT_TARGET = {"precision": 0.9}  # evaluate.threshold_for's default: W&B's "production threshold" reading
ALL_CLASSES = "(all)"  # the operating curve of one minimum score for every class


def compute_metrics(frame: pd.DataFrame, classes: list[str], top_k: int = 3,
                    threshold_for: dict | None = None) -> dict:
    """Accuracy, per-class and averaged scores, confusion matrix and full curves.

    Everything but "curves" is plain JSON; "curves" holds a `Curve` per class and the
    micro pool (write them with `curves_npz`, read them back with `read_curves`).

    Unlabelled rows (`labelled_mask`) are left out and counted as `unlabelled`. The
    prediction is the table's `guess` column (what the user sees), or the arg-max
    of the scores when the table has none. `threshold_for` ({"precision": p} or {"recall": r})
    picks the operating threshold reported per class (`thresholds`).
    """
    from sklearn import metrics as skm

    if top_k < 1:
        raise UserError(f"top_k must be at least 1, got {top_k}")
    classes = list(classes)
    target = check_target(threshold_for if threshold_for is not None else DEFAULT_TARGET)
    y_true, y_pred, scores, unlabelled = _labelled_arrays(frame, classes)
    labels = np.arange(len(classes))
    onehot = y_true[:, None] == labels[None, :]
    abstained = y_pred == len(classes)  # an "unknown" guess: the index past the last class
    operating = operating_curves(y_true, scores, classes)

    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    per_class, curves = {}, {}
    for index, name in enumerate(classes):
        ranking = _one_vs_rest(onehot[:, index], scores[:, index], name)
        curves[name] = ranking.pop("curves")
        per_class[name] = {"precision": float(precision[index]), "recall": float(recall[index]),
                           "f1": float(f1[index]), "support": int(support[index]),
                           "unknown": int(abstained[y_true == index].sum()), **ranking}
    micro_ranking = _one_vs_rest(onehot.ravel(), scores.ravel(), "micro")
    unknown_unlabelled = int(unknown_mask(frame.loc[~labelled_mask(frame)], classes).sum())

    return {
        "classes": classes,
        "labelled": int(len(y_true)),
        "unlabelled": unlabelled,
        "unknown": {"count": int(abstained.sum()), "rate": float(abstained.mean()),
                    "unlabelled": unknown_unlabelled},
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
        "thresholds": thresholds(operating, target),
        "curves": {"per_class": curves, "micro": micro_ranking["curves"], "operating": operating},
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
        abstained = unknown_mask(labelled, classes)
        y_pred = np.full(len(labelled), len(classes), dtype=np.int64)
        y_pred[~abstained] = _class_indices(labelled["guess"][~abstained], classes, "guess")
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
    operating = curves.get("operating")
    if operating:  # the operating curves (thresholds); files written before them lack these entries
        named += [(f"operating{index}", operating["per_class"][name]["curve"]) for index, name in enumerate(classes)]
        named += [("operating_all", operating["all"]["curve"])]
        arrays["operating_support"] = np.asarray([operating["per_class"][name]["support"] for name in classes]
                                                 + [operating["all"]["support"]], dtype=np.int64)
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
    """`curves_npz`'s bytes back as {"classes", "per_class": {name: Curve}, "micro": Curve}, and "operating"
    (as `operating_curves` gives it) when the file holds those."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            classes = [str(name) for name in arrays["classes"]]

            def curve(key: str) -> Curve:
                return Curve(thresholds=arrays[f"{key}_thresholds"],
                             tps=np.cumsum(arrays[f"{key}_positives"], dtype=np.int64),
                             fps=np.cumsum(arrays[f"{key}_negatives"], dtype=np.int64))

            curves = {"classes": classes, "micro": curve("micro"),
                      "per_class": {name: curve(f"class{index}") for index, name in enumerate(classes)}}
            if "operating_support" in arrays:
                support = [int(count) for count in arrays["operating_support"]]
                curves["operating"] = {
                    "per_class": {name: {"curve": curve(f"operating{index}"), "support": support[index]}
                                  for index, name in enumerate(classes)},
                    "all": {"curve": curve("operating_all"), "support": support[-1]}}
            return curves
    except (OSError, ValueError, KeyError, IndexError, zipfile.BadZipFile) as error:
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
    """Rows: the true classes; columns (`guesses`): the classes, then "unknown" when any guess abstained."""
    from sklearn import metrics as skm

    abstained = bool((y_pred == len(classes)).any())
    columns = np.arange(len(classes) + abstained)
    counts = skm.confusion_matrix(y_true, y_pred, labels=columns)[: len(classes)]  # truth is never unknown
    totals = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    return {"classes": classes, "guesses": classes + [UNKNOWN] * abstained, "counts": counts.tolist(),
            "normalised": round_significant(normalised).tolist()}


# ---------------------------------------------------------------- operating thresholds

TARGET_KINDS = ("precision", "recall")


def check_target(target) -> tuple[str, float]:
    """{"precision": p} or {"recall": r}, with the value in (0, 1], as (kind, value)."""
    if not isinstance(target, dict) or len(target) != 1 or next(iter(target)) not in TARGET_KINDS:
        raise UserError(f"threshold_for is {target!r}: give one target, {{precision: 0.9}} or {{recall: 0.9}}")
    (kind, value), = target.items()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise UserError(f"threshold_for.{kind} is {value!r}: it must be a number above 0 and at most 1")
    return kind, float(value)


def operating_curves(y_true: np.ndarray, scores: np.ndarray, classes: list[str]) -> dict:
    """Per class, the labelled rows whose top score is that class's, ranked by it (a positive: the guess
    is right), with the class's support; and the same over every row under ALL_CLASSES. Ties for the top
    score go to the first class, as infer's arg-max does."""
    best = scores.argmax(axis=1) if len(scores) else np.zeros(0, np.int64)
    top = scores[np.arange(len(scores)), best]
    right = best == y_true
    support = np.bincount(y_true, minlength=len(classes))
    per_class = {}
    for index, name in enumerate(classes):
        guessed = best == index
        per_class[name] = {"curve": Curve.ranking(right[guessed], top[guessed]), "support": int(support[index])}
    return {"per_class": per_class, "all": {"curve": Curve.ranking(right, top), "support": int(len(y_true))}}


def thresholds(operating: dict, target: tuple[str, float]) -> dict:
    """For each class (and one minimum for all), the threshold that reaches the target: as infer.min_score,
    the lowest whose precision reaches it (the most recall at that precision) or the highest whose recall
    reaches it (the fewest unknowns dropped); None with the reason when no threshold does."""
    kind, value = target
    return {"target": {kind: value},
            "per_class": {name: operating_point(entry["curve"], entry["support"], target, name)
                          for name, entry in operating["per_class"].items()},
            "all": operating_point(operating["all"]["curve"], operating["all"]["support"], target, "any class")}


def operating_point(curve: Curve, support: int, target: tuple[str, float], name: str) -> dict:
    """The threshold on one operating curve (support: the class's labelled images) and what it gives."""
    kind, value = target
    if support == 0:
        return {"threshold": None, "reason": f"no labelled {name} images, so {kind} is undefined"}
    if len(curve) == 0:
        return {"threshold": None, "reason": f"the model never guesses {name}, so no threshold keeps a guess"}
    kept = curve.tps + curve.fps  # at least one row at every threshold
    precision, recall = curve.tps / kept, curve.tps / support
    reached = np.flatnonzero((precision if kind == "precision" else recall) >= value)
    if not len(reached):
        best = precision.max() if kind == "precision" else recall[-1]
        return {"threshold": None, "reason": f"no threshold reaches {kind} {value:g} for {name}: the most is "
                                             f"{best:.4f}" + (" with no minimum score" if kind == "recall" else "")}
    at = reached[-1] if kind == "precision" else reached[0]
    return {"threshold": float(curve.thresholds[at]), "precision": float(precision[at]),
            "recall": float(recall[at]), "kept": int(kept[at]), "right": int(curve.tps[at]),
            "unknown": int(kept[-1] - kept[at])}


THRESHOLD_STEPS = 500  # the report's slider: minimum scores 0, 1/500, …, 1


def threshold_grid(operating: dict, steps: int = THRESHOLD_STEPS) -> dict:
    """The operating curves at minimum scores k/steps (k = 0…steps), exactly: per class and for all, the right
    and wrong guesses kept at each, with the support; kept at 0 is every guess of the class. This is what the
    report's threshold slider reads (a few KB per class, whatever the table's size)."""
    grid = np.arange(steps + 1) / steps

    def sampled(entry: dict) -> dict:
        curve = entry["curve"]
        above = np.searchsorted(-curve.thresholds.astype(np.float64), -grid, side="right")
        return {"right": np.r_[0, curve.tps][above].tolist(), "wrong": np.r_[0, curve.fps][above].tolist(),
                "support": entry["support"]}

    return {"steps": steps, "all": sampled(operating["all"]),
            "per_class": {name: sampled(entry) for name, entry in operating["per_class"].items()}}

