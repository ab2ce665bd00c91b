"""Training-side throughput against same-run baselines, at 96 and 224 px.

    decode     models.data.decode_images (Pillow, thread pool) vs a tf.data pipeline of
               tf.io.decode_image + tf.image.resize, on the same JPEG files
    fine-tune  model.fit on make_dataset over the cached uint8 array (memory-mapped, cast to
               float32 in the pipeline) vs model.fit on an in-memory float32 tensor
    head       one frozen-backbone epoch of the head on cached features vs the same epoch
               through the whole classifier on images (plus the one-off feature extraction)
    inference  models.predict.predict_scores over the memory-mapped array vs model.predict
               on an in-memory float32 tensor

    python bench/bench_train.py                       # 96 and 224 px, 512 images
    python bench/bench_train.py --quick               # 64 images: checks it works
    python bench/bench_train.py --size 224 --n 1024 --backbone mobilenet_v2

Writes bench/results/train.json. The backbone has random weights (weights=None): speed
does not depend on the weights, and nothing is downloaded. Each comparison alternates the
two sides and keeps the best of two, and reports images per CPU-second next to wall-clock
rates: on a shared machine another job's load stretches wall time, not CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from models.data import decode_images, make_dataset  # noqa: E402
from models.predict import predict_scores  # noqa: E402
from models.training import unfreeze_top  # noqa: E402

RESULT = ROOT / "bench" / "results" / "train.json"
SIZES = (96, 224)
IMAGES, QUICK_IMAGES = 512, 64
BATCH = 32
CLASSES = 10
SOURCE_PX = ((500, 375), (2000, 1500))  # a typical iNaturalist download; a phone photo
DECODE_IMAGES = {(500, 375): 256, (2000, 1500): 48}
DEFAULT_BACKBONE = "efficientnet_lite0"


# ---------------------------------------------------------------------------------------
# models


def build_models(backbone: str | None, size: int):
    """name, extractor, head, classifier: from models.backbones, or a MobileNetV2 stand-in."""
    try:
        from models.backbones import build_classifier, build_feature_extractor, build_head
    except ImportError:
        return ("mobilenet_v2 (stand-in)", *stand_in_models(size))
    extractor = build_feature_extractor(backbone or DEFAULT_BACKBONE, size, None)
    head = build_head(extractor.output_shape[-1], CLASSES, 0.2)
    return backbone or DEFAULT_BACKBONE, extractor, head, build_classifier(extractor, head)


def stand_in_models(size: int):
    inputs = keras.Input((size, size, 3))
    backbone = keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False, weights=None,
                                              name="backbone")
    features = keras.layers.GlobalAveragePooling2D()(backbone(keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)))
    extractor = keras.Model(inputs, features, name="extractor")
    head_in = keras.Input(extractor.output_shape[1:])
    probabilities = keras.layers.Dense(CLASSES, activation="softmax")(keras.layers.Dropout(0.2)(head_in))
    head = keras.Model(head_in, probabilities, name="head")
    image = keras.Input((size, size, 3))
    return extractor, head, keras.Model(image, head(extractor(image, training=False)), name="classifier")


def compile_adam(model, learning_rate=1e-4):
    model.compile(keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy", metrics=["accuracy"])


# ---------------------------------------------------------------------------------------
# timing


class Timing:
    """Wall and process CPU seconds of one call. On a shared machine the CPU figure (all
    threads of this process) is the steadier one: other jobs' load stretches wall time."""

    def __init__(self, function):
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        self.wall, self.cpu = time.perf_counter() - wall, time.process_time() - cpu

    def rates(self, count: int, prefix: str) -> dict:
        return {f"{prefix}_img_s": round(count / self.wall, 1), f"{prefix}_img_per_cpu_s": round(count / self.cpu, 1)}


def fit_timing(model, data, labels=None) -> Timing:
    """One epoch, after a two-batch warm-up so tracing is not timed."""
    if labels is None:
        model.fit(data.take(2), epochs=1, verbose=0)
        return Timing(lambda: model.fit(data, epochs=1, verbose=0, shuffle=False))
    model.fit(data[: 2 * BATCH], labels[: 2 * BATCH], batch_size=BATCH, epochs=1, verbose=0)
    return Timing(lambda: model.fit(data, labels, batch_size=BATCH, epochs=1, verbose=0, shuffle=True))


def interleaved(ours, baseline, repeats: int = 2) -> tuple[Timing, Timing]:
    """Best of `repeats` alternating runs, so a burst of load from another job hits both sides."""
    runs = [(ours(), baseline()) for _ in range(repeats)]
    return min((r[0] for r in runs), key=lambda t: t.wall), min((r[1] for r in runs), key=lambda t: t.wall)


def compare(count: int, ours: Timing, baseline: Timing, ours_name: str, baseline_name: str) -> dict:
    return {**ours.rates(count, ours_name), **baseline.rates(count, baseline_name),
            "wall_ratio": round(baseline.wall / ours.wall, 3), "cpu_ratio": round(baseline.cpu / ours.cpu, 3)}


# ---------------------------------------------------------------------------------------
# the four comparisons


def write_jpegs(folder: Path, count: int, source_px: tuple[int, int]) -> list[str]:
    """Smooth random images (so JPEG sizes are realistic), with no file extension."""
    rng = np.random.default_rng(0)
    width, height = source_px
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        small = rng.integers(0, 256, (height // 25, width // 25, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((width, height), Image.BICUBIC)
        noisy = np.asarray(img, dtype=np.int16) + rng.integers(-12, 12, (height, width, 3))
        path = folder / f"{index:05d}"
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, format="JPEG", quality=90)
        paths.append(str(path))
    return paths


def tf_decode(paths: list[str], size: int) -> int:
    def load(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return tf.cast(tf.image.resize(image, (size, size)), tf.uint8)

    dataset = tf.data.Dataset.from_tensor_slices(paths).map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(64)
    return sum(len(batch) for batch in dataset)


def bench_decode(paths: list[str], size: int) -> dict:
    count = len(paths)
    tf_decode(paths[:8], size)  # warm-up
    threads, tf_data = interleaved(lambda: Timing(lambda: decode_images(paths, size, "resize", progress=False)),
                                   lambda: Timing(lambda: tf_decode(paths, size)))
    one_thread = Timing(lambda: decode_images(paths, size, "resize", workers=1, progress=False))
    return {**compare(count, threads, tf_data, "pillow_threads", "tf_decode_image"),
            **one_thread.rates(count, "pillow_1_thread")}


def bench_size(backbone: str | None, size: int, jpegs: list[str], count: int, work: Path) -> dict:
    decoded = decode_images((jpegs * (count // len(jpegs) + 1))[:count], size, "resize",
                            cache_file=str(work / f"split-{size}.npy"), progress=False)
    images = decoded.images  # memory-mapped uint8, as the stages get it
    labels = np.arange(count) % CLASSES
    in_memory = tf.constant(np.asarray(images, dtype=np.float32))
    name, extractor, head, classifier = build_models(backbone, size)
    result = {"backbone": name}

    # frozen backbone: the head phase, on images vs on features computed once
    extractor.trainable = False
    compile_adam(classifier, 1e-3)
    on_images = fit_timing(classifier, make_dataset(images, labels, BATCH, shuffle=True))
    features = []
    extractor.predict(make_dataset(images[:BATCH], None, BATCH), verbose=0)  # warm-up: tracing not timed
    extraction = Timing(lambda: features.append(extractor.predict(make_dataset(images, None, BATCH), verbose=0)))
    compile_adam(head, 1e-3)
    on_features = fit_timing(head, make_dataset(features[0], labels, BATCH, shuffle=True))
    result["head_phase"] = {
        "epoch_on_images_s": round(on_images.wall, 3),
        "epoch_on_cached_features_s": round(on_features.wall, 4),
        "feature_extraction_once_s": round(extraction.wall, 3),
        "wall_speedup_per_epoch": round(on_images.wall / on_features.wall, 1),
        "cpu_speedup_per_epoch": round(on_images.cpu / on_features.cpu, 1),
    }

    # unfrozen backbone: the fine-tune phase, streamed from the uint8 cache vs a float32 tensor
    unfreeze_top(extractor, 10**6)
    compile_adam(classifier)
    ours, baseline = interleaved(lambda: fit_timing(classifier, make_dataset(images, labels, BATCH, shuffle=True)),
                                 lambda: fit_timing(classifier, in_memory, labels))
    result["finetune"] = compare(count, ours, baseline, "make_dataset", "in_memory_tensor")

    predict_scores(classifier, images[:BATCH], BATCH, progress=False)  # warm-up both
    classifier.predict(in_memory[:BATCH], batch_size=BATCH, verbose=0)
    ours, baseline = interleaved(lambda: Timing(lambda: predict_scores(classifier, images, BATCH, progress=False)),
                                 lambda: Timing(lambda: classifier.predict(in_memory, batch_size=BATCH, verbose=0)))
    result["inference"] = compare(count, ours, baseline, "predict_scores", "model_predict_tensor")
    return result


def print_table(results: dict) -> None:
    rows = []
    for key, d in results["decode"].items():
        rows.append((f"decode {key} img/s (Pillow threads | tf.decode_image)", d["pillow_threads_img_s"],
                     d["tf_decode_image_img_s"], d["pillow_threads_img_per_cpu_s"], d["tf_decode_image_img_per_cpu_s"]))
    for size, r in results["sizes"].items():
        h, f, i = r["head_phase"], r["finetune"], r["inference"]
        rows += [
            (f"{size}px fine-tune img/s (make_dataset | float32 tensor)", f["make_dataset_img_s"],
             f["in_memory_tensor_img_s"], f["make_dataset_img_per_cpu_s"], f["in_memory_tensor_img_per_cpu_s"]),
            (f"{size}px head epoch s (cached features | images)", h["epoch_on_cached_features_s"],
             h["epoch_on_images_s"], "", ""),
            (f"{size}px inference img/s (predict_scores | model.predict)", i["predict_scores_img_s"],
             i["model_predict_tensor_img_s"], i["predict_scores_img_per_cpu_s"],
             i["model_predict_tensor_img_per_cpu_s"]),
        ]
    width = max(len(row[0]) for row in rows)
    print(f"{'':{width}}  {'ours':>9}  {'baseline':>9}  {'ours/cpu':>9}  {'base/cpu':>9}")
    for name, *figures in rows:
        print(f"{name:{width}}" + "".join(f"  {figure:>9}" for figure in figures))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, action="append", help="image size (repeatable); default 96 and 224")
    parser.add_argument("--n", type=int, help=f"images per run (default {IMAGES}, {QUICK_IMAGES} with --quick)")
    parser.add_argument("--quick", action="store_true", help="few images: checks the bench runs")
    parser.add_argument("--backbone", help=f"models.backbones name (default {DEFAULT_BACKBONE}, weights=None)")
    args = parser.parse_args(argv)
    count = args.n or (QUICK_IMAGES if args.quick else IMAGES)
    sizes = args.size or list(SIZES)
    results = {"images": count, "batch_size": BATCH, "classes": CLASSES, "quick": args.quick,
               "cpus": os.cpu_count(), "tensorflow": tf.__version__, "keras": keras.__version__,
               "host": platform.node(), "python": platform.python_version(), "decode": {}, "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sources = {px: write_jpegs(work / f"jpeg-{px[0]}", min(count, DECODE_IMAGES[px]), px) for px in SOURCE_PX}
        for size in sizes:
            for px, jpegs in sources.items():
                results["decode"][f"{px[0]}x{px[1]}->{size}px"] = bench_decode(jpegs, size)
            results["sizes"][str(size)] = bench_size(args.backbone, size, sources[SOURCE_PX[0]], count, work)
            # Peak so far, so the figure for the largest size includes fine-tuning at that size.
            results["sizes"][str(size)]["peak_rss_mb_so_far"] = round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
            keras.backend.clear_session()
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    for size, figures in results["sizes"].items():
        print(f"peak RSS after {size}px: {figures['peak_rss_mb_so_far']} MB")
    return results


if __name__ == "__main__":
    main()
