"""The images of a split (or of a folder), decoded for a model, with what a prediction row needs.

Shared by train and infer. Decoded pixels are cached under the store's cache/images/, keyed by
the split's digest, the split name, the image size and the resize mode: a later epoch, run or
stage reuses them instead of decoding again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from lineage.contract import Artifact, StageContext


@dataclass
class SplitImages:
    images: np.ndarray  # (N, S, S, 3) uint8
    labels: np.ndarray  # (N,) int32 class indices; -1 where there is no truth
    ids: list[str]  # object digests
    paths: list[str]  # paths in the source folder, for people
    truths: list[str | None]
    failures: list[dict]  # images that could not be decoded: {"id", "path", "reason"}


@dataclass(frozen=True, slots=True)
class StoredImage:
    """An image object opened when it is decoded, loose or packed: a packed one has no path of its own."""

    artifact: Artifact
    digest: str

    def __call__(self) -> BinaryIO:
        return self.artifact.open_object(self.digest)

    def __str__(self) -> str:
        return f"object {self.digest[:12]}"


def load_split_images(split: Artifact, name: str, classes: list[str], size: int, resize: str,
                      ctx: StageContext) -> SplitImages:
    """Decode one split's images, in a fixed order (class, then digest)."""
    source_rows = split.source().rows(["digest", "path"])
    paths_by_digest = dict(zip(source_rows.column("digest").to_pylist(), source_rows.column("path").to_pylist()))
    ids, truths = [], []
    for label, digests in split.split_digests(name).items():
        ids += digests
        truths += [label] * len(digests)
    cache = ctx.cache_dir("images") / f"{split.digest[:24]}-{name}-{size}-{resize}.npy"
    return decode(split, ids, [paths_by_digest[d] for d in ids], truths, classes, size, resize, str(cache),
                  ctx)


def decode(artifact: Artifact, ids: list[str], paths: list[str], truths: list[str | None], classes: list[str],
           size: int, resize: str, cache_file: str | None, ctx: StageContext) -> SplitImages:
    from models.data import decode_images

    decoded = decode_images([StoredImage(artifact, d) for d in ids], size, resize, cache_file,
                            progress=ctx.progress)
    failures = [{"id": ids[i], "path": paths[i], "reason": reason} for i, _, reason in decoded.failures]
    for failure in failures:
        ctx.log(f"  skipped {failure['path']}: {failure['reason']}")
    kept = [int(i) for i in decoded.kept]
    index = {name: i for i, name in enumerate(classes)}
    return SplitImages(
        images=decoded.images,
        labels=np.array([index.get(truths[i], -1) for i in kept], dtype=np.int32),  # no truth ("", None): -1
        ids=[ids[i] for i in kept], paths=[paths[i] for i in kept], truths=[truths[i] for i in kept],
        failures=failures)
