"""A small prediction table and thumbnails for the report's tests, browser or not.

Kept apart from tests/test_report_browser.py, which skips itself where there is no Chromium: a test
that only needs this data must not be skipped with it.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

CLASSES = ["cat", "dog", "fox", "owl"]
ROWS = 300
UNLABELLED = 20


def _predictions() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    truth = rng.integers(0, len(CLASSES), ROWS)
    logits = rng.normal(size=(ROWS, len(CLASSES)))
    logits[np.arange(ROWS), truth] += 1.2
    scores = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    frame = pd.DataFrame({
        "id": [f"{index:064x}" for index in range(ROWS)],
        "path": [f"images/{CLASSES[label]}/{index}.jpg" for index, label in enumerate(truth)],
        "split": np.where(np.arange(ROWS) % 5 == 0, "val", "test"),
        "truth": np.asarray(CLASSES, dtype=object)[truth],
        "guess": np.asarray(CLASSES, dtype=object)[scores.argmax(axis=1)],
        "confidence": scores.max(axis=1),
    })
    frame.loc[frame.index[-UNLABELLED:], "truth"] = None
    for index, name in enumerate(CLASSES):
        frame[f"score_{name}"] = scores[:, index].astype(np.float32)
    return frame


def _thumbnail(index: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (48, 48), (index * 7 % 256, index * 13 % 256, 90)).save(buffer, "JPEG")
    return buffer.getvalue()
