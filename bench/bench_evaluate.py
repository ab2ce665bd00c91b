"""compute_metrics on 100,000 images x 10 classes, against the bare scikit-learn calls.

The baseline is what a notebook would do by hand on the same arrays: accuracy,
top-k, precision/recall/F1, the confusion matrix, and per class (and micro) the
PR and ROC curves plus average_precision_score and roc_auc_score, with no rounding
and no JSON. The difference is what compute_metrics costs for picking labelled
rows, validating the table and storing full curves compactly.

    python bench/bench_evaluate.py                          # writes bench/results/evaluate.json
    python bench/bench_evaluate.py --rows 1000000 --repeats 1   # the issue-10 scale (~2 GB, minutes)
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from report.metrics import compute_metrics, curves_npz  # noqa: E402

ROWS = 100_000
CLASSES = [f"class_{index}" for index in range(10)]
REPEATS = 3
RESULT = ROOT / "bench" / "results" / "evaluate.json"


def random_predictions(rows: int, classes: list[str], seed: int = 0,
                       unlabelled: float = 0.0) -> pd.DataFrame:
    """A prediction table shaped like infer's output: softmax scores that favour the truth."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, len(classes), rows)
    logits = rng.normal(size=(rows, len(classes))).astype(np.float32)
    logits[np.arange(rows), truth] += 1.5
    scores = np.exp(logits)
    scores /= scores.sum(axis=1, keepdims=True)
    names = np.asarray(classes, dtype=object)
    frame = pd.DataFrame({
        "id": [f"{index:064x}" for index in range(rows)],
        "path": [f"images/{names[label]}/{index:06d}.jpg" for index, label in enumerate(truth)],
        "split": np.where(rng.random(rows) < 0.5, "val", "test"),
        "truth": names[truth],
        "guess": names[scores.argmax(axis=1)],
        "confidence": scores.max(axis=1),
    })
    if unlabelled:
        frame.loc[rng.random(rows) < unlabelled, "truth"] = None
    for index, name in enumerate(classes):
        frame[f"score_{name}"] = scores[:, index].astype(np.float32)
    return frame


def bare_scikit_learn(y_true: np.ndarray, y_pred: np.ndarray, scores: np.ndarray) -> None:
    """The same numbers straight from scikit-learn, kept as numpy arrays."""
    from sklearn import metrics as skm

    labels = np.arange(scores.shape[1])
    skm.accuracy_score(y_true, y_pred)
    skm.top_k_accuracy_score(y_true, scores, k=3, labels=labels)
    skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    for average in ("micro", "macro"):
        skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, average=average,
                                            zero_division=0)
    skm.confusion_matrix(y_true, y_pred, labels=labels)
    onehot = (y_true[:, None] == labels[None, :]).astype(np.int8)
    columns = [(onehot[:, index], scores[:, index]) for index in labels]
    for positive, score in columns + [(onehot.ravel(), scores.ravel())]:
        skm.precision_recall_curve(positive, score)
        skm.roc_curve(positive, score, drop_intermediate=False)
        skm.average_precision_score(positive, score)
        skm.roc_auc_score(positive, score)


def best_of(repeats: int, function, *args) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(*args)
        times.append(time.perf_counter() - start)
    return min(times), result


def main(rows: int = ROWS, repeats: int = REPEATS) -> dict:
    frame = random_predictions(rows, CLASSES, seed=0)
    scores = frame[[f"score_{name}" for name in CLASSES]].to_numpy(dtype=np.float64)
    y_true = pd.Categorical(frame["truth"], categories=CLASSES).codes.astype(np.int64)
    y_pred = pd.Categorical(frame["guess"], categories=CLASSES).codes.astype(np.int64)

    ours, metrics = best_of(repeats, compute_metrics, frame, CLASSES)
    baseline, _ = best_of(repeats, bare_scikit_learn, y_true, y_pred, scores)
    curves = metrics.pop("curves")
    start = time.perf_counter()
    text = json.dumps(metrics, allow_nan=False)
    stored = curves_npz(curves, CLASSES)
    dump_seconds = time.perf_counter() - start

    points = sum(len(curve) for curve in list(curves["per_class"].values()) + [curves["micro"]])
    result = {
        "rows": rows, "classes": len(CLASSES), "repeats_best_of": repeats,
        "compute_metrics_s": round(ours, 3),
        "bare_scikit_learn_s": round(baseline, 3),
        "ratio": round(ours / baseline, 2),
        "store_s": round(dump_seconds, 3),  # metrics.json and curves.npz, as evaluate writes them
        "metrics_json_mb": round(len(text) / 1e6, 3),
        "curves_npz_mb": round(len(stored) / 1e6, 1),
        "curve_points_total": points,
        "micro_curve_points": len(curves["micro"]),
        "accuracy": metrics["accuracy"],
        "micro_average_precision": metrics["micro"]["average_precision"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "target": "compute_metrics well under 10 s; evaluate at 1,000,000 x 10 under 30 s and 2 GB",
        "host": platform.node(), "python": platform.python_version(),
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    result_file = RESULT if rows == ROWS else RESULT.with_name(f"evaluate-{rows}.json")
    result_file.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    arguments = parser.parse_args()
    print(json.dumps(main(arguments.rows, arguments.repeats), indent=2))
