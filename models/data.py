"""From image files to batches: decode once, cache the pixels, stream them to Keras.

Each split is decoded and resized once, into a uint8 array on disk that later epochs and
later runs memory-map instead of decoding again: the frozen-backbone phase then costs one
forward pass per image in all, and a rerun with other training parameters decodes nothing.

Pillow does the decoding because the store's images come in every format users have
(TensorFlow's decode_image reads neither WebP nor TIFF), in a thread pool because Pillow
releases the GIL while decoding and resizing. bench/bench_train.py has the figures against
tf.io.decode_image: on large photos Pillow is faster (JPEG draft mode decodes at a reduced
scale); on 500 px JPEGs at 224 px TF is faster, as its resize does no antialiasing.

An image to decode is a "source": a file's path, or a zero-argument callable that opens a binary file.
The store's small images live in packs and have no path of their own (lineage/packs.py), so a split's
images are opened through the store (models/split_images.py); a folder's files are plain paths.
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Union

import numpy as np
from PIL import Image

from lineage.atomic import atomic_path, write_atomic
from lineage.errors import UserError

RESIZE_MODES = ("resize", "crop", "pad")
FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")
AUGMENTATION_KEYS = ("flip", "rotation", "zoom", "contrast")
CACHE_FORMAT = 1  # bump when the decoded pixels would change for the same inputs

ImageSource = Union[str, os.PathLike, Callable[[], BinaryIO]]  # a path, or what opens the image's bytes


@dataclass(frozen=True)
class DecodedImages:
    """A split's pixels, with the images that could not be read left out and named."""

    images: np.ndarray  # (K, S, S, 3) uint8; memory-mapped when it came from the cache
    kept: np.ndarray  # (K,) int64: the index in the input sources of each row of images
    failures: list[tuple[int, str, str]]  # (index, source_name, reason) for each skipped image


def progress_enabled(progress: bool | None) -> bool:
    """Progress bars are on when asked for, or by default when a person watches stderr."""
    return sys.stderr.isatty() if progress is None else progress


# ---------------------------------------------------------------------------------------
# one image


def source_name(source: ImageSource) -> str:
    """What a failure calls a source: its path, or the opener's str (a StoredImage's names its digest)."""
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else str(source)


def load_rgb(source: ImageSource, size_hint: int | None = None) -> Image.Image:
    """Open any image Pillow reads as 8-bit RGB: first frame, alpha dropped, 16-bit scaled."""
    if callable(source):
        with source() as handle:
            return load_rgb(handle, size_hint)
    with Image.open(source) as img:
        if size_hint and img.format == "JPEG":
            img.draft("RGB", (size_hint, size_hint))  # DCT-domain downscale: much faster
        img.load()
        return _to_rgb(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        pixels = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or pixels.max(initial=0) > 255:
            pixels = pixels / 257.0  # 16-bit range onto 8-bit
        img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L")
    elif img.mode in ("P", "PA"):
        img = img.convert("RGBA")  # palette transparency must go through RGBA
    return img if img.mode == "RGB" else img.convert("RGB")


def fit_to_square(img: Image.Image, size: int, resize_mode: str) -> np.ndarray:
    """Resize to (size, size): stretch, centre-crop the long side, or letterbox with zeros."""
    check_resize_mode(resize_mode)
    width, height = img.size
    if resize_mode == "resize":
        out = img.resize((size, size), Image.BILINEAR)
    elif resize_mode == "crop":
        side = min(width, height)
        left, top = (width - side) / 2, (height - side) / 2
        out = img.resize((size, size), Image.BILINEAR, box=(left, top, left + side, top + side))
    else:  # pad
        scale = size / max(width, height)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        out = Image.new("RGB", (size, size))
        out.paste(img.resize((new_w, new_h), Image.BILINEAR), ((size - new_w) // 2, (size - new_h) // 2))
    return np.asarray(out, dtype=np.uint8)


def check_resize_mode(resize_mode: str) -> None:
    if resize_mode not in RESIZE_MODES:
        raise UserError(f"resize mode {resize_mode!r} is unknown; use one of {', '.join(RESIZE_MODES)}")


def decode_one(source: ImageSource, image_size: int, resize_mode: str) -> np.ndarray:
    """One image to a (S, S, 3) uint8 array; raises whatever Pillow (or the opener) raises on a bad one."""
    return fit_to_square(load_rgb(source, image_size), image_size, resize_mode)


# ---------------------------------------------------------------------------------------
# a split, with its on-disk cache


def decode_images(
    paths: list[ImageSource],
    image_size: int,
    resize_mode: str = "resize",
    cache_file: str | None = None,
    workers: int | None = None,
    progress: bool | None = None,
) -> DecodedImages:
    """Decode and resize every source (a path or an opener, see ImageSource), reusing `cache_file` (a .npy
    the caller keys) if present.

    A file that cannot be decoded is skipped and listed in `failures`, never raised: one
    corrupt download should not cost a user their training run.
    """
    check_resize_mode(resize_mode)
    if not cache_file:
        pixels = np.empty((len(paths), image_size, image_size, 3), np.uint8)
        failures = _decode_into(pixels, paths, image_size, resize_mode, workers, progress)
        kept = _kept_indices(len(paths), failures)
        return DecodedImages(pixels[kept] if failures else pixels, kept, failures)
    meta = {"format": CACHE_FORMAT, "count": len(paths), "image_size": image_size, "resize_mode": resize_mode}
    cached = _load_cache(cache_file, meta)
    if cached is None:
        _decode_to_cache(paths, cache_file, meta, workers, progress)
        cached = _load_cache(cache_file, meta)
        assert cached is not None, f"cache {cache_file} unreadable right after writing it"
    return cached


def _kept_indices(count: int, failures: list[tuple[int, str, str]]) -> np.ndarray:
    return np.setdiff1d(np.arange(count), [f[0] for f in failures]).astype(np.int64)


def _decode_into(pixels, paths, image_size, resize_mode, workers, progress) -> list[tuple[int, str, str]]:
    def decode_row(index: int) -> tuple[int, str, str] | None:
        try:
            pixels[index] = decode_one(paths[index], image_size, resize_mode)
            return None
        except Exception as exc:  # any unreadable file is a skip, whatever Pillow raised
            return index, source_name(paths[index]), f"{type(exc).__name__}: {exc}"

    from tqdm.auto import tqdm

    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        results = pool.map(decode_row, range(len(paths)))
        bar = tqdm(results, total=len(paths), desc="decode", unit="img", disable=not progress_enabled(progress))
        return [failure for failure in bar if failure is not None]


def _decode_to_cache(paths, cache_file, meta, workers, progress) -> None:
    """Decode straight into a memory-mapped temporary .npy, then rename it and its sidecar into place.

    The sidecar (which names the failures) lands last, so a crash leaves no cache at all
    rather than a half-written one.
    """
    size = meta["image_size"]
    with atomic_path(cache_file) as staging:
        pixels = np.lib.format.open_memmap(staging, "w+", np.uint8, (len(paths), size, size, 3))
        failures = _decode_into(pixels, paths, size, meta["resize_mode"], workers, progress)
        if failures:  # rare: the file must hold only the rows that decoded
            pixels = _without_rows(pixels, staging, _kept_indices(len(paths), failures))
        pixels.flush()
        del pixels
    sidecar = json.dumps(dict(meta, failures=[list(f) for f in failures])).encode()
    write_atomic(f"{cache_file}.json", sidecar)


def _without_rows(pixels: np.memmap, path: str, kept: np.ndarray) -> np.memmap:
    """The kept rows in a new file of the right length at `path`, copied a block at a time (never all in
    memory); the full one is moved aside and removed."""
    full = f"{path}.full"
    os.replace(path, full)
    try:
        compact = np.lib.format.open_memmap(path, "w+", np.uint8, (len(kept),) + pixels.shape[1:])
        for start in range(0, len(kept), 256):
            compact[start : start + 256] = pixels[kept[start : start + 256]]
        return compact
    finally:
        os.remove(full)  # the caller's map of it stays valid until released


def _load_cache(cache_file: str, meta: dict[str, Any]) -> DecodedImages | None:
    """The cached split if both files are there and describe these inputs, else None."""
    try:
        with open(f"{cache_file}.json", "rb") as f:
            sidecar = json.load(f)
        images = np.load(cache_file, mmap_mode="r")
    except (OSError, ValueError, EOFError, RecursionError):  # missing, binary or truncated: decode again
        return None
    # The cache is disposable: a sidecar that is not what _decode_to_cache writes is a miss, and is rewritten.
    if not isinstance(sidecar, dict) or any(sidecar.get(key) != value for key, value in meta.items()):
        return None
    try:
        failures = [(int(i), str(p), str(r)) for i, p, r in sidecar["failures"]]
    except (KeyError, TypeError, ValueError):
        return None
    if any(not 0 <= i < meta["count"] for i, _, _ in failures):
        return None
    kept = _kept_indices(meta["count"], failures)
    if images.shape != (len(kept), meta["image_size"], meta["image_size"], 3) or images.dtype != np.uint8:
        return None
    return DecodedImages(images, kept, failures)


def save_array_atomic(path: str, array: np.ndarray) -> None:
    """np.save streamed into a temporary file, so a reader never sees half an array (and no copy is made)."""
    write_atomic(path, lambda handle: np.save(handle, array))


# ---------------------------------------------------------------------------------------
# batches for Keras


def make_dataset(
    array: np.ndarray,
    labels: np.ndarray | None = None,
    batch_size: int = 32,
    shuffle: bool = False,
    seed: int = 0,
    augment: Any = None,
):
    """Batches of float32 rows of `array` (images or features), with labels when given.

    The pipeline shuffles indices and gathers each batch from the (possibly memory-mapped)
    array, so a split larger than memory streams from the page cache and nothing is copied
    into the graph. The same seed gives the same order for images and for their cached
    features, which is what makes the two head-training paths agree.
    """
    import tensorflow as tf

    count = len(array)
    if labels is not None and len(labels) != count:
        raise ValueError(f"{count} rows but {len(labels)} labels")
    indices = tf.data.Dataset.range(count)
    if shuffle:
        indices = indices.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    row_shape = tuple(array.shape[1:])
    label_table = None if labels is None else tf.constant(np.asarray(labels, dtype=np.int32))

    def gather(batch_indices):
        rows = tf.numpy_function(lambda i: np.asarray(array[i]), [batch_indices], tf.as_dtype(array.dtype))
        rows = tf.cast(tf.ensure_shape(rows, (None,) + row_shape), tf.float32)
        if label_table is None:
            return rows
        return rows, tf.gather(label_table, batch_indices)

    dataset = indices.batch(batch_size).map(gather, num_parallel_calls=tf.data.AUTOTUNE)
    if augment is not None:
        dataset = dataset.map(lambda x, *y: (augment(x, training=True), *y), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def build_augmentation(cfg: dict | None, seed: int = 0):
    """A keras.Sequential of random layers from plain config, or None when all are off.

    It is applied in the training dataset only, never saved into the model, so inference
    needs nothing to switch it off.
    """
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(AUGMENTATION_KEYS))
    if unknown:
        raise UserError(f"augmentation: unknown key(s) {', '.join(unknown)}; known: {', '.join(AUGMENTATION_KEYS)}")
    import keras

    steps = []
    flip = cfg.get("flip")
    if flip is True:
        flip = "horizontal"
    if flip not in (None, False, "", "none"):
        if flip not in FLIP_MODES:
            raise UserError(f"augmentation.flip {flip!r} is unknown; use one of {', '.join(FLIP_MODES)} or none")
        steps.append(keras.layers.RandomFlip(flip, seed=seed))
    factories = {
        "rotation": keras.layers.RandomRotation,
        "zoom": keras.layers.RandomZoom,
        "contrast": keras.layers.RandomContrast,
    }
    for offset, (key, layer) in enumerate(factories.items(), start=1):
        amount = cfg.get(key) or 0
        if not isinstance(amount, (int, float)) or isinstance(amount, bool) or not 0 <= amount < 1:
            raise UserError(f"augmentation.{key} must be a number in [0, 1), got {amount!r}")
        if amount:
            steps.append(layer(amount, seed=seed + offset))
    return keras.Sequential(steps, name="augmentation") if steps else None
