"""Prediction tables: their schema, and how train and infer write them and evaluate and the CLI read them.

The schema lives here and nowhere else (models/predict.py builds tables by it; report/ and tables/
read them by it): the fixed columns, then `score_<class>` per class in the model's class order,
and one rule for what "unlabelled" means. This module imports neither TensorFlow nor, at import
time, pandas, so models/, report/ and tables/ can all import it cheaply.

The table is Parquet (pyarrow, zstd): typed columns (float32 scores stay float32), the column
order kept, several times smaller than CSV, and read by pandas in milliseconds.
"""

from __future__ import annotations

import io

from lineage.contract import Artifact, Output, StageContext
from lineage.errors import UserError
from lineage.records import Manifest

FILE = "predictions.parquet"

# One row per image. `id` is the image's object digest; `truth` is missing for an unlabelled image.
FIXED_COLUMNS = ("id", "path", "split", "truth", "guess", "confidence")
SCORE_PREFIX = "score_"  # then one float32 column per class, in the model's class order


def score_column(class_name: str) -> str:
    return f"{SCORE_PREFIX}{class_name}"


def class_names(columns) -> list[str]:
    """The model's classes, in its order, read off the `score_<class>` columns (a frame or its column names)."""
    return [str(c)[len(SCORE_PREFIX):] for c in columns if str(c).startswith(SCORE_PREFIX)]


# What "unlabelled" means, for every reader: the truth is missing (None, NaN, pd.NA) or the empty string.
# The empty string counts because a table written by hand, or by a CSV round trip, has "" where a
# missing truth was; it is also the filter language's null (tables/query.py), so `x["truth"] = null`
# selects exactly the unlabelled rows.


# What "unknown" means: infer with `min_score` writes this literal guess where the top score is below its
# class's minimum (the score columns and `confidence` keep the model's output). infer refuses min_score for a
# model with a class of that name, so a guess of "unknown" is an abstention exactly when "unknown" is not among
# the classes. Such a row is labelled or not by its truth as any other; an abstention is never right.
UNKNOWN = "unknown"


def unknown_mask(frame, classes: list[str]):
    """True for each row whose guess is an abstention (UNKNOWN, with no class of that name)."""
    if UNKNOWN in classes or "guess" not in frame.columns:
        import numpy as np

        return np.zeros(len(frame), dtype=bool)
    return (frame["guess"] == UNKNOWN).to_numpy(dtype=bool, na_value=False)


def guesses(scores, classes: list[str], min_score=None) -> list[str]:
    """Each row's guess: its top-scoring class (ties to the first, as numpy's arg-max), or UNKNOWN where
    that top score is below the class's minimum. `min_score` is one number for every class, a mapping of
    some classes to theirs (the others have none), or None. Scores equal to the minimum keep their guess."""
    import numpy as np

    if min_score is not None and UNKNOWN in classes:
        raise UserError(f"min_score would write the guess {UNKNOWN!r}, but the model has a class named "
                        f"{UNKNOWN!r}: rename that class's folder and retrain, or drop min_score")
    best = scores.argmax(axis=1)
    names = np.asarray(classes, dtype=object)[best]
    if min_score is None:
        return names.tolist()
    if isinstance(min_score, dict):
        minimums = np.asarray([min_score.get(name, 0.0) for name in classes], dtype=np.float64)
    else:
        minimums = np.full(len(classes), float(min_score))
    top = scores[np.arange(len(scores)), best].astype(np.float64)
    return np.where(top >= minimums[best], names, UNKNOWN).tolist()


def missing_label(values):
    """True where a label column (truth, or a guess) holds no label: None, NaN, pd.NA or ""."""
    return (values.isna() | (values == "")).to_numpy(dtype=bool, na_value=True)


def labelled_mask(frame):
    """True for each row with a truth label: the rows that accuracy, metrics and plots count."""
    if "truth" not in frame.columns:
        raise UserError(f"prediction table has no 'truth' column; it has {list(frame.columns)}")
    return ~missing_label(frame["truth"])


def is_labelled(truth) -> bool:
    """One truth value, by the same rule, for code that builds a table row by row (strings first: it is
    called once per image)."""
    if isinstance(truth, str):
        return truth != ""
    if truth is None:
        return False
    import pandas as pd

    return not pd.isna(truth)


def checked_table(frame, where: str):
    """A table made outside train and infer (a logged run's, keras_lineage/logged_run.py), checked against the
    schema: FIXED_COLUMNS in order, then one finite score in [0, 1] per class and nothing else; a unique string
    id per row; a guess that is a class or UNKNOWN. Returns it with the scores and confidence as float32 (as
    train and infer write them) and its classes; a UserError names the first thing that is wrong and the fix."""
    import numpy as np
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        raise UserError(f"{where} is a {type(frame).__name__}, not a pandas DataFrame: pass the prediction table "
                        "as a DataFrame")
    columns = [str(c) for c in frame.columns]
    classes = class_names(columns)
    expected = list(FIXED_COLUMNS) + [score_column(c) for c in classes]
    if columns != expected or not classes:
        raise UserError(f"{where} has columns {columns[:12]}: a prediction table has "
                        f"{', '.join(FIXED_COLUMNS)}, then {SCORE_PREFIX}<class> per class and nothing else "
                        "(models/predict.py predict_table builds one)")
    if len(set(classes)) != len(classes) or "" in classes:
        raise UserError(f"{where} has a blank or repeated class among {classes}: name each class once")
    table = frame.reset_index(drop=True).copy()
    scores = table[[score_column(c) for c in classes] + ["confidence"]]
    if not all(pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(t) for t in scores.dtypes):
        raise UserError(f"{where}'s scores and confidence must be numbers: convert them with astype('float32')")
    values = scores.to_numpy(dtype=np.float64, na_value=np.nan)
    if not np.isfinite(values).all() or (values < 0).any() or (values > 1).any():
        raise UserError(f"{where} has a score or confidence that is missing, not finite or outside [0, 1]: "
                        "log the model's softmax probabilities")
    ids = table["id"]
    if not ids.map(lambda v: isinstance(v, str) and v != "").all() or ids.duplicated().any():
        raise UserError(f"{where}'s ids must be distinct non-empty strings (each image's object digest)")
    if not table["guess"].map(lambda v: isinstance(v, str) and (v in classes or v == UNKNOWN)).all():
        raise UserError(f"{where} has a guess that is not one of its classes {classes} (or {UNKNOWN!r})")
    for column in ("path", "split"):
        if not table[column].map(lambda v: isinstance(v, str)).all():
            raise UserError(f"{where}'s {column} column must hold strings")
    if not table["truth"].map(lambda v: isinstance(v, str) or not is_labelled(v)).all():
        raise UserError(f"{where}'s truth column must hold class names, or None where an image is unlabelled")
    for column in scores.columns:
        table[column] = table[column].astype(np.float32)
    return table, classes


def prediction_output(ctx: StageContext, table, classes: list[str], split: str, made_with: dict) -> Output:
    """A predictions version: the table as Parquet, with the class order and headline numbers."""
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False, compression="zstd")
    labelled = labelled_mask(table)
    accuracy = float((table.loc[labelled, "truth"] == table.loc[labelled, "guess"]).mean()) if labelled.any() else None
    unknown = int(unknown_mask(table, classes).sum())
    meta = {"classes": classes, "rows": len(table), "split": split, "labelled": int(labelled.sum()),
            "accuracy": accuracy, **({"unknown": unknown} if unknown else {}), **made_with}
    ctx.log(f"predictions: {len(table):,} rows on {split}" +
            (f", accuracy {accuracy:.4f}" if accuracy is not None else " (unlabelled)") +
            (f", {unknown:,} unknown (top score below min_score)" if unknown else ""))
    return Output(Manifest("predictions", files={FILE: ctx.write_object(buffer.getvalue())}, meta=meta))


def read_predictions(artifact: Artifact):
    import pandas as pd

    if artifact.version.name != "predictions":
        raise UserError(f"{artifact.ref} is not a predictions version")
    return pd.read_parquet(artifact.file_path(FILE))
