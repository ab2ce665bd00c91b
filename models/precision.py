"""Which floating-point precision training computes in: `train.mixed_precision`.

Mixed precision (Keras' `mixed_float16` / `mixed_bfloat16` policies) computes activations in 16 bits while every
variable stays float32: on a GPU with tensor cores that is the faster path and halves activation memory (Keras'
mixed-precision guide; not yet measured for this project, which had no GPU to hand). `auto` picks float16 where
TensorFlow sees a GPU and float32 on a CPU: measured with bench/bench_precision.py on this project's 2-core AMD
EPYC (Zen 4, which has avx512_bf16), bfloat16 fine-tuned at 0.34-0.48x float32's images/s (0.66x per
CPU-second), and was no faster for the head phase or inference (0.71-0.89x per CPU-second). float16 without a
GPU is refused: it ran at 0.26-0.49x float32 here (oneDNN has no float16 kernels for this CPU, so Eigen emulates
them), and a model saved that way would claim a choice that bought nothing.

The policy is global in Keras, so it is set only around a training run (`training_precision`) and the
previous one is restored afterwards: a later stage in the same process, or a test, starts from float32.
A saved model carries each layer's own policy, so inference needs no setting: it computes as it trained.
This module imports no TensorFlow until a function needs it, so the config check stays fast.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Literal

Precision = Literal["auto", "float32", "float16", "bfloat16"]
# What `auto` means without a GPU: float32, as bench/bench_precision.py measured bfloat16 slower on a CPU.
CPU_AUTO = "float32"
GPU_AUTO = "float16"
_KERAS_POLICY = {"float32": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


def resolve_precision(choice: str, gpus: int) -> str:
    """`choice` (a Precision) for a machine where TensorFlow sees `gpus` GPUs: float32, float16 or bfloat16.

    Pure, so the choice is tested without a GPU; `visible_gpus` supplies the count.
    """
    from lineage.errors import UserError

    if choice == "auto":
        return GPU_AUTO if gpus else CPU_AUTO
    if choice not in _KERAS_POLICY:
        raise UserError(f"train.mixed_precision is {choice!r}: use one of auto, {', '.join(_KERAS_POLICY)}")
    if choice == "float16" and not gpus:
        raise UserError("train.mixed_precision is float16, but TensorFlow sees no GPU, and a CPU computes float16 "
                        "far slower than float32: use auto (float32 here) or bfloat16, or install the GPU build "
                        "(make setup GPU=1) on a machine with one")
    return choice


def keras_policy(precision: str) -> str:
    """The Keras dtype policy name for a resolved precision."""
    return _KERAS_POLICY[precision]


def visible_gpus() -> int:
    """How many GPUs TensorFlow can use (0 with the tensorflow-cpu build, or without a CUDA driver)."""
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


@contextmanager
def training_precision(choice: str, log: Callable[[str], None] = print, gpus: int | None = None) -> Iterator[str]:
    """Keras' global dtype policy set for `choice` while the block runs (models built inside use it), and the
    previous policy restored afterwards, even on an error. Yields the resolved precision."""
    import keras

    precision = resolve_precision(choice, visible_gpus() if gpus is None else gpus)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(keras_policy(precision))
    if precision != "float32" or choice != "auto":
        log(f"train: {keras_policy(precision)} precision" + (" (auto)" if choice == "auto" else ""))
    try:
        yield precision
    finally:
        keras.mixed_precision.set_global_policy(previous)
