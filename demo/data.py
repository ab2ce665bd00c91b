"""Materialise demo images as class folders of PNG files, the layout `ingest` reads.

Fashion-MNIST (70,000 real 28×28 photos of clothes, 10 balanced classes, with the well-known
confusable group T-shirt/top, Pullover, Coat, Shirt) comes offline from Debian's
`dataset-fashion-mnist` package, installed here when apt can, or online from
`keras.datasets.fashion_mnist`. The synthetic set is for CI's smoke run: a few small images
per class whose dominant colour is the class, so even one short epoch learns something.
"""

from __future__ import annotations

import gzip
import io
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np

from lineage.atomic import write_atomic
from lineage.errors import UserError

FASHION_CLASSES = ("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle_boot")
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
SYNTHETIC_CLASSES = ("red", "green", "blue", "yellow")


def fashion_mnist(out: Path, per_class: int, source: str = "auto") -> dict[str, int]:
    images, labels = _load_fashion(source)
    counts = {}
    for index, name in enumerate(FASHION_CLASSES):
        chosen = np.flatnonzero(labels == index)[:per_class]
        if len(chosen) < per_class:
            raise UserError(f"Fashion-MNIST has only {len(chosen)} {name} images; ask for at most that many")
        for number, row in enumerate(chosen):
            _write_png(out / name / f"{name}_{number:05d}.png", images[row])
        counts[name] = len(chosen)
    return counts


def synthetic(out: Path, per_class: int, size: int = 40, seed: int = 0) -> dict[str, int]:
    """Noisy images whose mean colour is the class: learnable in one epoch, generated in milliseconds."""
    rng = np.random.default_rng(seed)
    tints = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1), "yellow": (1, 1, 0)}
    for name in SYNTHETIC_CLASSES:
        for number in range(per_class):
            pixels = rng.integers(0, 110, (size, size, 3)) + np.array(tints[name]) * 140
            _write_png(out / name / f"{name}_{number:03d}.png", pixels.astype(np.uint8))
    return {name: per_class for name in SYNTHETIC_CLASSES}


def _write_png(path: Path, pixels: np.ndarray) -> None:
    """Write only when missing or different: unchanged files keep their mtime, so re-ingest is a no-op."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    data = buffer.getvalue()
    if path.exists() and path.read_bytes() == data:
        return
    write_atomic(path, data, durable=False)  # no fsync: 70,000 small files, and they can be made again


def _load_fashion(source: str) -> tuple[np.ndarray, np.ndarray]:
    if source in ("auto", "debian"):
        if not _debian_files_present() and shutil.which("apt-get"):
            _install_debian_package()
        if _debian_files_present():
            return (_read_idx(DEBIAN_DIR / "train-images-idx3-ubyte.gz"),
                    _read_idx(DEBIAN_DIR / "train-labels-idx1-ubyte.gz"))
        if source == "debian":
            raise UserError(f"Fashion-MNIST is not in {DEBIAN_DIR}: run `apt-get install {DEBIAN_PACKAGE}` as root")
    try:
        import keras
        (images, labels), _ = keras.datasets.fashion_mnist.load_data()
        return images, labels
    except Exception as error:  # any download failure: say what to do instead
        raise UserError(f"no Fashion-MNIST: {DEBIAN_DIR} is missing and the Keras download failed ({error}); "
                        f"install Debian's {DEBIAN_PACKAGE} or connect to the internet") from None


def _debian_files_present() -> bool:
    return all((DEBIAN_DIR / f"{part}-ubyte.gz").exists() for part in ("train-images-idx3", "train-labels-idx1"))


def _install_debian_package() -> None:
    print(f"demo-data: installing Debian's {DEBIAN_PACKAGE} (offline Fashion-MNIST)")
    install = ["apt-get", "install", "-y", "-q", DEBIAN_PACKAGE]
    if subprocess.run(install, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True)
        subprocess.run(install, capture_output=True)


def _read_idx(path: Path) -> np.ndarray:
    """The idx format: a magic number giving the element type and rank, the dimensions, then the data."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    zero, dtype_code, rank = struct.unpack_from(">HBB", data, 0)
    if zero != 0 or dtype_code != 0x08:
        raise UserError(f"{path} is not an idx file of unsigned bytes")
    shape = struct.unpack_from(">" + "I" * rank, data, 4)
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank).reshape(shape)
