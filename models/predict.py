"""A trained classifier over decoded images, as the prediction table every report reads.

The table's schema (fixed columns, score columns, what "unlabelled" means) is tables/predictions.py's.
The score columns follow `class_names`, the model's own class-index map, in its order:
column score_<c> holds output unit i only because class_names[i] == c. Sorting or retyping
that list is how a well-known notebook for this task swapped two classes' scores.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lineage.errors import UserError
from models.data import progress_enabled
from tables.predictions import FIXED_COLUMNS, guesses, is_labelled, score_column


def predict_table(
    model,
    images: np.ndarray,
    ids: list[str],
    paths: list[str],
    splits: list[str],
    truths: list[str | None],
    class_names: list[str],
    batch_size: int = 64,
    progress: bool | None = None,
    min_score: float | dict[str, float] | None = None,
) -> pd.DataFrame:
    """One row per image: FIXED_COLUMNS, then score_<class> per class.

    `truth` is None for unlabelled images (and "" becomes None). `progress` None shows a bar only on a terminal.
    `min_score` (one number, or some classes' own) turns a guess whose top score is below it into "unknown"
    (tables/predictions.py: guesses); `confidence` and the scores stay the model's.
    """
    count = len(images)
    if not (len(ids) == len(paths) == len(splits) == len(truths) == count):
        raise ValueError(f"{count} images but {len(ids)} ids, {len(paths)} paths, {len(splits)} splits, "
                         f"{len(truths)} truths")
    if len(set(class_names)) != len(class_names):
        raise UserError(f"the model's class list has duplicates: {class_names}; retrain with distinct folder names")
    outputs = model.output_shape[-1]
    if outputs != len(class_names):
        raise UserError(f"the model has {outputs} outputs but its class map lists {len(class_names)} classes; "
                        "the model artifact is inconsistent: train it again")
    scores = predict_scores(model, images, batch_size, progress)
    best = scores.argmax(axis=1)
    columns = (list(ids), list(paths), list(splits), [truth if is_labelled(truth) else None for truth in truths],
               guesses(scores, class_names, min_score), scores[np.arange(count), best])
    table = pd.DataFrame(dict(zip(FIXED_COLUMNS, columns, strict=True)))
    score_frame = pd.DataFrame(scores, columns=[score_column(c) for c in class_names])
    return pd.concat([table, score_frame], axis=1)


def predict_scores(model, images: np.ndarray, batch_size: int = 64, progress: bool | None = None) -> np.ndarray:
    """Softmax scores, (N, classes) float32, a batch at a time so a memory-mapped split streams."""
    from tqdm.auto import tqdm

    count, width = len(images), model.output_shape[-1]
    scores = np.empty((count, width), dtype=np.float32)
    batch = np.zeros((batch_size,) + tuple(images.shape[1:]), dtype=np.float32)
    with tqdm(total=count, desc="predict", unit="img", disable=not progress_enabled(progress)) as bar:
        for start in range(0, count, batch_size):
            rows = len(images[start : start + batch_size])
            batch[:rows] = images[start : start + rows]  # a full batch every time: one trace, no retracing
            scores[start : start + rows] = np.asarray(model.predict_on_batch(batch))[:rows]
            bar.update(rows)
    return scores
