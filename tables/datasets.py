"""A dataset version's rows as one table: a raw-data version's images, or a split's images with their split.

`pipeline.py table raw-data:vN` and `table split:vN` (and the dataset page) read the same columns
(DATASET_COLUMNS): `id` (the image's object digest, as in prediction tables), `path` (in the folder it
was ingested from), `label`, `split` (empty for raw-data), `format`, `width`, `height`, `bytes`.

A split stores only (split, label, digest) per image (lineage/rows.py `splits-v1`); the rest comes from
the raw-data version it names as `source`, joined by digest in Arrow (`index_in` then `take`), so a
million-row version is a few column operations and no Python object per row. Should a source list one
digest under two paths (the same bytes in two places), a split row shows the first, in path order.

Grouping by `split` or `label` counts the images of each split per class (or of each class per split):
the split x class distribution that W&B's "group by split" shows. Any other column counts its values,
as for predictions.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd

from lineage.contract import Artifact
from lineage.errors import UserError

DATASET_NAMES = ("raw-data", "split")
DATASET_COLUMNS = ("id", "path", "label", "split", "format", "width", "height", "bytes")
# images-v1 column → table column
IMAGE_COLUMNS = {"digest": "id", "path": "path", "label": "label", "format": "format", "width": "width",
                 "height": "height", "size": "bytes"}
CROSS_GROUPS = {"split": "label", "label": "split"}  # a group-by of one counts the other's values per group
SPLIT_ORDER = ("train", "val", "test")  # the order the pipeline uses them; a split's manifest keeps none
NO_VALUE = "(none)"  # the group of rows with no value in the grouped column


def is_dataset(artifact: Artifact) -> bool:
    return artifact.version.name in DATASET_NAMES


def dataset_frame(artifact: Artifact) -> pd.DataFrame:
    """Every image of a raw-data or split version, one row each, in the version's stored order (raw-data by
    path; a split by split, label, digest). Old manifests with inline rows read the same (Artifact.rows)."""
    if artifact.version.name == "raw-data":
        import pyarrow as pa

        table = artifact.rows(list(IMAGE_COLUMNS)).rename_columns([IMAGE_COLUMNS[c] for c in IMAGE_COLUMNS])
        table = table.append_column("split", pa.nulls(table.num_rows, pa.string()))  # raw-data is not split
        return _to_pandas(table.select(list(DATASET_COLUMNS)))
    if artifact.version.name == "split":
        return _split_frame(artifact)
    raise UserError(f"{artifact.ref} is a {artifact.version.name} version: `table` and the dataset page read "
                    "raw-data and split versions (and predictions); e.g. `pipeline.py table split:latest`")


def _split_frame(artifact: Artifact) -> pd.DataFrame:
    import pyarrow.compute as pc

    cut = artifact.rows(["split", "label", "digest"])
    source = artifact.source()
    images = source.rows(list(IMAGE_COLUMNS))
    position = pc.index_in(cut.column("digest"), value_set=images.column("digest"))  # first match: smallest path
    if position.null_count:
        first = cut.column("digest").filter(pc.is_null(position))[0].as_py()
        raise UserError(f"{artifact.ref} names {position.null_count:,} image(s) that its source {source.ref} does "
                        f"not hold (first {first[:12]}): run `pipeline.py verify`, and re-run split on a whole "
                        "raw-data version")
    joined = images.select([c for c in IMAGE_COLUMNS if c not in ("digest", "label")]).take(position)
    joined = joined.rename_columns([IMAGE_COLUMNS[c] for c in joined.column_names])
    for name, column in (("id", "digest"), ("label", "label"), ("split", "split")):  # the split's own values
        joined = joined.append_column(name, cut.column(column))
    return _to_pandas(joined.select(list(DATASET_COLUMNS)))


def _to_pandas(table) -> pd.DataFrame:
    """Columns typed as pandas reads a prediction table's Parquet (the filter and formats expect them)."""
    return table.to_pandas(split_blocks=True)


def group_dataset_rows(rows: pd.DataFrame, by: str, classes: list[str], splits: list[str] = ()) -> pd.DataFrame:
    """split: per split, the count of each class and the total; label: per class, the count in each split
    and the total. Any other column (or a raw-data version, which has no splits): the count of each value.
    Classes and splits come in the order given (the version's), others sorted after them."""
    from tables.table import check_column, class_order, group_rows

    check_column(by, rows.columns, "group by")
    other = CROSS_GROUPS.get(by)
    if other is None or other not in rows.columns or rows[other].isna().all():
        return group_rows(rows, by, classes)
    keys, key_names = _codes(rows[by])
    others, other_names = _codes(rows[other])
    counts = np.bincount(keys * len(other_names) + others, minlength=len(key_names) * len(other_names))
    counts = counts.reshape(len(key_names), len(other_names))
    orders = {"label": list(classes), "split": list(splits)}
    key_order = _order(key_names, orders[by], class_order)
    other_order = _order(other_names, orders[other], class_order)
    counts = counts[np.ix_(key_order, other_order)]
    kept_keys, kept_others = counts.sum(axis=1) > 0, counts.sum(axis=0) > 0  # NO_VALUE when no row lacks one
    counts = counts[np.ix_(kept_keys, kept_others)]
    key_order = [i for i, kept in zip(key_order, kept_keys) if kept]
    other_order = [i for i, kept in zip(other_order, kept_others) if kept]
    names = [other_names[i] for i in other_order]
    names = [f"{other}={n}" if n in (by, "total") else n for n in names]
    table = pd.DataFrame(counts, columns=names)
    table.insert(0, by, [key_names[i] for i in key_order])
    table["total"] = counts.sum(axis=1)
    return table


def _codes(values: pd.Series) -> tuple[np.ndarray, list[str]]:
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    names = [str(u) for u in uniques] + [NO_VALUE]
    return np.where(codes < 0, len(names) - 1, codes), names


def _order(names: list[str], classes: list[str], class_order) -> list[int]:
    """Every group's index: classes in their order, other values sorted, NO_VALUE last."""
    index = {name: i for i, name in enumerate(names[:-1])}
    return [index[name] for name in class_order(index, classes)] + [len(names) - 1]


def dataset_grouping(artifact: Artifact) -> dict:
    """query_table's group-by for this version: its classes in the manifest's order, splits in pipeline
    order (train, val, test)."""
    classes = artifact.manifest.meta.get("classes") if isinstance(artifact.manifest.meta, dict) else None
    return {"group": functools.partial(group_dataset_rows, splits=SPLIT_ORDER),
            "classes": [str(c) for c in classes] if isinstance(classes, list) else []}
