"""Images per second under each `train.mixed_precision` on this machine: what `auto` should mean here.

    python bench/bench_precision.py                     # float32 vs bfloat16 (and float16 where a GPU is seen)
    python bench/bench_precision.py --precisions float32 bfloat16 float16 --images 256
    python bench/bench_precision.py --quick             # 64 images: checks it works

For each precision, in one process with the Keras policy set before the models are built (as the train
stage does it, models/precision.py), on generated images at the demo's settings (efficientnet_lite0 at
96 px with random weights, batch 32, top 30 backbone layers unfrozen):

    head       the head phase as train runs it: the frozen backbone's features of every image
               once, then one epoch of the head on them
    finetune   one epoch of the classifier with the top of the backbone unfrozen (models/training.py)
    inference  models.predict.predict_scores over the images

Each figure is the best of `--repeats` rounds, the precisions alternating within a round so a burst of
load from another job hits each alike; images per CPU-second are printed beside wall-clock rates. Writes
bench/results/precision.json. float16 without a GPU is measured only when asked: it is what the train
stage refuses, and this shows why.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from models.quiet import import_tensorflow  # noqa: E402

tf = import_tensorflow()
import keras  # noqa: E402

from models.backbones import build_classifier, build_feature_extractor, build_head  # noqa: E402
from models.data import make_dataset  # noqa: E402
from models.precision import keras_policy, visible_gpus  # noqa: E402
from models.predict import predict_scores  # noqa: E402
from models.training import unfreeze_top  # noqa: E402

RESULT = ROOT / "bench" / "results" / "precision.json"
BACKBONE, SIZE, BATCH, CLASSES, UNFREEZE = "efficientnet_lite0", 96, 32, 10, 30
PHASES = ("head", "finetune", "inference")


class Timing:
    """Wall and process CPU seconds of one call."""

    def __init__(self, function):
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        self.wall, self.cpu = time.perf_counter() - wall, time.process_time() - cpu


def generated_images(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random RGB 0-255 images (uint8, as the decoded-pixel cache holds them) and labels."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (count, SIZE // 8, SIZE // 8, 3), dtype=np.uint8)
    images = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)
    return np.ascontiguousarray(images), np.arange(count) % CLASSES


def compile_adam(model, learning_rate: float) -> None:
    model.compile(keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy", metrics=["accuracy"])


class Models:
    """The extractor, head and classifier built under one precision's policy, warmed up so no tracing is timed."""

    def __init__(self, precision: str, images: np.ndarray, labels: np.ndarray):
        keras.mixed_precision.set_global_policy(keras_policy(precision))
        try:
            keras.utils.set_random_seed(0)
            self.extractor = build_feature_extractor(BACKBONE, SIZE, None)
            self.head = build_head(self.extractor.output_shape[-1], CLASSES, 0.2)
            self.classifier = build_classifier(self.extractor, self.head)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        self.extractor.trainable = False
        compile_adam(self.head, 1e-3)
        warm = images[: 2 * BATCH], labels[: 2 * BATCH]
        features = self.extractor.predict(make_dataset(warm[0], None, BATCH), verbose=0).astype(np.float32)
        self.head.fit(make_dataset(features, warm[1], BATCH), epochs=1, verbose=0, shuffle=False)
        predict_scores(self.classifier, warm[0], BATCH, progress=False)
        # The top unfrozen once and for all, compiled as models/training.py does: toggling `trainable` between
        # rounds would retrace the train step inside the timing. Prediction does not depend on it.
        unfreeze_top(self.extractor, UNFREEZE)
        compile_adam(self.classifier, 1e-4)
        self.classifier.fit(make_dataset(*warm, BATCH), epochs=1, verbose=0, shuffle=False)

    def head_phase(self, images, labels) -> None:
        features = self.extractor.predict(make_dataset(images, None, BATCH), verbose=0).astype(np.float32)
        self.head.fit(make_dataset(features, labels, BATCH, shuffle=True), epochs=1, verbose=0, shuffle=False)

    def finetune(self, images, labels) -> None:
        self.classifier.fit(make_dataset(images, labels, BATCH, shuffle=True), epochs=1, verbose=0, shuffle=False)

    def inference(self, images, labels) -> None:
        predict_scores(self.classifier, images, BATCH, progress=False)


def measure(precisions: list[str], count: int, repeats: int) -> dict:
    images, labels = generated_images(count)
    models = {precision: Models(precision, images, labels) for precision in precisions}
    best: dict[str, dict[str, Timing]] = {precision: {} for precision in precisions}
    for _ in range(repeats):
        for phase in PHASES:
            for precision in precisions:
                step = getattr(models[precision], {"head": "head_phase"}.get(phase, phase))
                timing = Timing(lambda: step(images, labels))
                kept = best[precision].get(phase)
                best[precision][phase] = timing if kept is None or timing.wall < kept.wall else kept
    return {precision: {phase: {"img_s": round(count / timing.wall, 1), "img_per_cpu_s": round(count / timing.cpu, 1)}
                        for phase, timing in phases.items()} for precision, phases in best.items()}


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(flag for flag in flags if flag.startswith(("avx512_bf16", "amx", "avx512_fp16", "avx2")))


def print_table(figures: dict, key: str, title: str, baseline: str = "float32") -> None:
    print(f"{title:<22} " + " ".join(f"{phase:>20}" for phase in PHASES))
    for precision, phases in figures.items():
        cells = []
        for phase in PHASES:
            rate = phases[phase][key]
            ratio = rate / figures[baseline][phase][key] if baseline in figures else 1.0
            cells.append(f"{rate:8.1f} ({ratio:4.2f}x f32)")
        print(f"{precision:<22} " + " ".join(f"{cell:>20}" for cell in cells))


def main() -> int:
    parser = argparse.ArgumentParser(description="Images/s per train.mixed_precision on this machine.")
    parser.add_argument("--precisions", nargs="+", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="64 images, one round: checks it works")
    args = parser.parse_args()
    gpus = visible_gpus()
    precisions = args.precisions or (["float32", "float16", "bfloat16"] if gpus else ["float32", "bfloat16"])
    count, repeats = (64, 1) if args.quick else (args.images, args.repeats)
    figures = measure(precisions, count, repeats)
    device = f"{gpus} GPU(s): {tf.config.experimental.get_device_details(tf.config.list_physical_devices('GPU')[0])}" \
        if gpus else f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print(f"{BACKBONE} at {SIZE} px, batch {BATCH}, {count} images, best of {repeats}; {device}")
    print_table(figures, "img_s", "images/s (wall)")
    print_table(figures, "img_per_cpu_s", "images/CPU-s")  # steadier where other jobs share the CPU
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps({
        "backbone": BACKBONE, "image_size": SIZE, "batch_size": BATCH, "images": count, "repeats": repeats,
        "device": device, "cpu_flags": cpu_flags(), "tensorflow": tf.__version__, "keras": keras.__version__,
        "figures": figures}, indent=1) + "\n")
    print(f"written: {RESULT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
