"""split: `raw-data:vN` becomes `split:vN`, train/val/test by reference.

The manifest lists object digests per split and class (no image is copied) and names the
raw-data version it was cut from. The shuffle is seeded per class with Python's own
`random.Random(str)`, which is the same on every machine and Python version, so the same raw
version and params give the same digest anywhere.
"""

from __future__ import annotations

import random
from array import array
from dataclasses import dataclass, field
from typing import Annotated

from lineage.contract import REF, Artifact, Output, StageContext
from lineage.display import format_counts
from lineage.errors import UserError
from lineage.params import Range
from lineage.records import SPLIT_NAMES, Manifest, SplitName

NAME = "split"
OUTPUT = "split"
CODE = ("stages/split.py",)


@dataclass
class Params:
    input: str = field(default="raw-data:latest", metadata=REF)
    # Images per class in each split: whole counts ({train: 800, val: 100, test: 100}) or fractions.
    per_class: dict[SplitName, Annotated[int, Range(0)] | Annotated[float, Range(0, 1)]] = field(
        default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    balanced: bool = True
    allow_small_classes: bool = False
    seed: int = 42

    def __post_init__(self):
        unknown = [k for k in self.per_class if k not in SPLIT_NAMES]
        if unknown or not self.per_class.get("train"):
            raise UserError(f"split.per_class has {', '.join(map(str, unknown)) or 'no train images'}: use train, "
                            "val and optionally test, e.g. {train: 800, val: 100, test: 100} or {train: 0.8, val: 0.2}")
        values = list(self.per_class.values())
        if all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            return
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in values):
            if sum(values) > 1 + 1e-9:
                raise UserError(f"split.per_class fractions add up to {sum(values):g}: they must add up to at most 1")
            return
        raise UserError(f"split.per_class is {self.per_class}: give whole counts per class (800) "
                        "or fractions (0.8), not a mix")

    @property
    def uses_counts(self) -> bool:
        """Whole numbers are counts per class (800); any float makes them fractions (0.8)."""
        return all(isinstance(v, int) for v in self.per_class.values())


def input_refs(params: Params) -> dict[str, str]:
    return {"raw-data": params.input}


def fingerprint(params: Params) -> None:
    """Reads nothing from outside the store."""
    return None


def run(inputs: dict[str, Artifact], params: Params, ctx: StageContext) -> list[Output]:
    import pyarrow as pa
    import pyarrow.compute as pc

    from lineage.rows import return_freed_memory, table_from_columns

    return_freed_memory()
    raw = inputs["raw-data"]
    # Sorted once in Arrow by (class, digest): each class is then a slice, and no digest becomes a Python string.
    rows = raw.rows(["label", "digest"])
    rows = rows.take(pc.sort_indices(rows, sort_keys=[("label", "ascending"), ("digest", "ascending")]))
    counted = pc.value_counts(rows.column("label"))
    sizes = dict(sorted(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist())))
    wanted = split_counts(sizes, params, ctx.log)

    chosen: dict[tuple[str, str], object] = {}  # (split, class) -> its digests, sorted
    first = 0
    for label, size in sizes.items():  # in the sorted order of the rows
        digests = rows.column("digest").slice(first, size)
        first += size
        # The shuffle of the sorted digests, as positions: Random.shuffle's permutation depends only on the
        # length and the seed, so shuffling 0..n-1 in an int64 array gives the same order as shuffling a list
        # of the digests themselves, at 8 bytes an image.
        order = array("q", range(size))
        random.Random(f"{params.seed}:{label}").shuffle(order)
        start = 0
        for name in params.per_class:
            part = digests.take(pa.array(order[start:start + wanted[label][name]], pa.int64()))
            chosen[name, label] = part.take(pc.sort_indices(part))
            start += wanted[label][name]
    del rows
    counts = {name: {label: len(chosen[name, label]) for label in sizes} for name in params.per_class}
    keys = sorted(chosen)  # stream order: by split, then class (lineage/rows.py)
    table = table_from_columns("splits-v1", {
        "split": _chunked([pa.array([name] * len(chosen[name, label]), pa.string()) for name, label in keys]),
        "label": _chunked([pa.array([label] * len(chosen[name, label]), pa.string()) for name, label in keys]),
        "digest": _chunked([chosen.pop(key) for key in keys])})

    ctx.log(f"split: {raw.ref} → " + ", ".join(f"{n} {sum(c.values()):,}" for n, c in counts.items()))
    ctx.log(format_counts(counts, sorted(sizes)))
    return [Output(Manifest(OUTPUT, table=table, source=raw.version.key,
                            meta={"classes": sorted(sizes), "counts": counts, "class_sizes": sizes}))]


def _chunked(parts: list):
    """One column from its parts, without copying them into one buffer."""
    import pyarrow as pa

    arrays = [chunk for part in parts for chunk in (part.chunks if isinstance(part, pa.ChunkedArray) else [part])]
    return pa.chunked_array(arrays, pa.string())


def split_counts(sizes: dict[str, int], params: Params, warn) -> dict[str, dict[str, int]]:
    """How many images of each class go to each split; a class too small is an error or a warning."""
    names = list(params.per_class)
    if params.uses_counts:
        asked = {label: dict(params.per_class) for label in sizes}
    else:
        base = {label: (min(sizes.values()) if params.balanced else size) for label, size in sizes.items()}
        asked = {label: {n: int(params.per_class[n] * base[label]) for n in names} for label in sizes}
        for label, counts in asked.items():
            empty = [n for n in names if counts[n] == 0 and params.per_class[n] > 0]
            if empty:
                _too_small(label, sizes[label], f"fractions {params.per_class} leave {', '.join(empty)} empty",
                           params, warn)
                for n in empty:  # give each requested split at least one image when we can
                    counts[n] = 1 if sum(counts.values()) < sizes[label] else 0
        return asked

    need = sum(params.per_class.values())
    smallest = min(sizes.values())
    for label, size in sizes.items():
        if size < need:
            _too_small(label, size, f"{need} were asked ({', '.join(f'{n} {params.per_class[n]}' for n in names)})",
                       params, warn)
            if params.balanced:  # every class is cut down to what the smallest class can give
                return {lbl: _scaled(params.per_class, smallest) for lbl in sizes}
            asked[label] = _scaled(params.per_class, size)
    return asked


def _too_small(label: str, size: int, detail: str, params: Params, warn) -> None:
    message = f"class {label!r} has {size} images, too few for the split: {detail}"
    if not params.allow_small_classes:
        raise UserError(message + "; lower split.per_class or set split.allow_small_classes: true")
    warn(f"warning: {message}; using fewer (split.allow_small_classes is on)")


def _scaled(counts: dict[str, int], available: int) -> dict[str, int]:
    """Cut counts down proportionally to what is available (largest-remainder rounding)."""
    total = sum(counts.values())
    scaled = {n: c * available // total for n, c in counts.items()}
    by_remainder = sorted(counts, key=lambda n: -(counts[n] * available % total))
    for name in by_remainder[:available - sum(scaled.values())]:
        scaled[name] += 1
    return scaled
