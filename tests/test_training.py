"""models.data, models.training and models.predict on tiny generated data.

The extractor and head here are stand-ins with the shape of models.backbones' API, small
enough that a whole two-phase fine-tune takes seconds on two CPU cores.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

keras = pytest.importorskip("keras")

from lineage.errors import UserError  # noqa: E402
from models import data as data_module  # noqa: E402
from models.data import build_augmentation, decode_images, make_dataset  # noqa: E402
from models.predict import predict_table  # noqa: E402
from models.training import TrainConfig, train_two_phase, unfreeze_top  # noqa: E402
from tables.predictions import FIXED_COLUMNS  # noqa: E402

SIZE = 32
CLASSES = ["red", "green", "blue"]


# ---------------------------------------------------------------------------------------
# stand-ins for models.backbones


def tiny_extractor(size: int = SIZE) -> keras.Model:
    backbone = keras.Sequential(
        [
            keras.Input((size, size, 3)),
            keras.layers.Conv2D(8, 3, padding="same", name="conv1"),
            keras.layers.BatchNormalization(name="bn1"),
            keras.layers.ReLU(name="relu1"),
            keras.layers.Conv2D(16, 3, strides=2, padding="same", name="conv2"),
            keras.layers.BatchNormalization(name="bn2"),
            keras.layers.ReLU(name="relu2"),
        ],
        name="backbone",
    )
    return wrap_backbone(backbone, size, keras.layers.Rescaling(1 / 255.0))


def wrap_backbone(backbone, size, rescale) -> keras.Model:
    inputs = keras.Input((size, size, 3))
    features = keras.layers.GlobalAveragePooling2D()(backbone(rescale(inputs)))
    return keras.Model(inputs, features, name="extractor")


def tiny_head(feature_dim: int, num_classes: int = len(CLASSES), dropout: float = 0.0) -> keras.Model:
    inputs = keras.Input((feature_dim,))
    outputs = keras.layers.Dense(num_classes, activation="softmax")(keras.layers.Dropout(dropout)(inputs))
    return keras.Model(inputs, outputs, name="head")


def compose(extractor, head) -> keras.Model:
    inputs = keras.Input(extractor.input_shape[1:])
    return keras.Model(inputs, head(extractor(inputs, training=False)), name="classifier")


def colour_task(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images whose dominant channel is the class: separable, but not trivially."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % len(CLASSES)
    images = rng.integers(0, 80, size=(count, SIZE, SIZE, 3))
    images[np.arange(count), :, :, labels] += 150
    return images.astype(np.uint8), labels


def quiet_config(**overrides) -> TrainConfig:
    params = dict(
        epochs_head=2, epochs_finetune=0, batch_size=16, lr_head=1e-2, early_stopping_patience=None,
        reduce_lr_patience=None, seed=3, verbose=0,
    )
    return TrainConfig(**{**params, **overrides})


def train(extractor, head, cfg, tmp_path, **kwargs):
    train_x, train_y = colour_task(96, seed=1)
    val_x, val_y = colour_task(48, seed=2)
    return train_two_phase(
        extractor, head, train_x, train_y, val_x, val_y, cfg, str(tmp_path / "best.keras"),
        log=lambda line: None, build_classifier=compose, **kwargs,
    )


# ---------------------------------------------------------------------------------------
# decoding


RED = (200, 30, 30)


def solid(mode: str, colour=RED, size=(24, 16)) -> Image.Image:
    return Image.new("RGB", size, colour).convert(mode)


def animated_gif(path):
    frames = [solid("P", RED), solid("P", (30, 30, 200))]
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:])


def sixteen_bit(path, fmt):
    Image.fromarray(np.full((16, 24), 50000, dtype=np.uint16)).save(path, format=fmt)


def png_with_palette_transparency(path):
    img = solid("P")
    img.info["transparency"] = 0
    img.save(path, format="PNG", transparency=0)


GREY_OF_RED = round(RED[0] * 0.299 + RED[1] * 0.587 + RED[2] * 0.114)
# name -> (writer(path), expected centre pixel); file names carry no extension, as in the store
FORMATS = {
    "jpeg_rgb": (lambda p: solid("RGB").save(p, format="JPEG", quality=95), RED),
    "jpeg_grey": (lambda p: solid("L").save(p, format="JPEG", quality=95), (GREY_OF_RED,) * 3),
    "jpeg_cmyk": (lambda p: solid("CMYK").save(p, format="JPEG", quality=95), RED),
    "png_rgba": (lambda p: solid("RGBA").save(p, format="PNG"), RED),
    "png_la": (lambda p: solid("LA").save(p, format="PNG"), (GREY_OF_RED,) * 3),
    "png_palette": (lambda p: solid("P").save(p, format="PNG"), RED),
    "png_palette_transparent": (png_with_palette_transparency, RED),
    "png_bilevel": (lambda p: solid("1", (255, 255, 255)).save(p, format="PNG"), (255, 255, 255)),
    "png_16bit": (lambda p: sixteen_bit(p, "PNG"), (194, 194, 194)),
    "gif_first_frame": (animated_gif, RED),
    "bmp": (lambda p: solid("RGB").save(p, format="BMP"), RED),
    "webp": (lambda p: solid("RGB").save(p, format="WEBP", lossless=True), RED),
    "webp_rgba": (lambda p: solid("RGBA").save(p, format="WEBP", lossless=True), RED),
    "tiff": (lambda p: solid("RGB").save(p, format="TIFF"), RED),
    "tiff_16bit": (lambda p: sixteen_bit(p, "TIFF"), (194, 194, 194)),
}


def write_corrupt_files(folder) -> list[str]:
    solid("RGB").save(folder / "whole", format="JPEG")
    (folder / "truncated").write_bytes((folder / "whole").read_bytes()[:120])
    (folder / "junk").write_bytes(b"this is not an image")
    (folder / "empty").write_bytes(b"")
    return [str(folder / name) for name in ("truncated", "junk", "empty", "missing")]


def test_decode_reads_every_format_and_mode_and_skips_bad_files(tmp_path):
    paths = []
    for name, (write, _) in FORMATS.items():
        write(tmp_path / name)
        paths.append(str(tmp_path / name))
    bad = write_corrupt_files(tmp_path)
    decoded = decode_images(paths + bad, 8, "resize", cache_file=None, workers=2)

    assert decoded.images.shape == (len(FORMATS), 8, 8, 3) and decoded.images.dtype == np.uint8
    assert decoded.kept.tolist() == list(range(len(FORMATS)))
    assert [(index, path) for index, path, _ in decoded.failures] == list(enumerate(bad, start=len(FORMATS)))
    assert all(reason for _, _, reason in decoded.failures)
    for (name, (_, expected)), pixels in zip(FORMATS.items(), decoded.images):
        np.testing.assert_allclose(pixels[4, 4], expected, atol=8, err_msg=name)


def test_resize_modes_stretch_crop_and_letterbox(tmp_path):
    wide = np.zeros((32, 64, 3), np.uint8)  # 64 wide, 32 tall; white only in the central 32 columns
    wide[:, 16:48] = 255
    Image.fromarray(wide).save(tmp_path / "wide", format="PNG")
    path = [str(tmp_path / "wide")]

    def one(mode):
        return decode_images(path, 16, mode).images[0]

    stretched, cropped, padded = one("resize"), one("crop"), one("pad")
    assert stretched.shape == cropped.shape == padded.shape == (16, 16, 3)
    assert stretched[:, :3].max() == 0 and stretched[:, 5:11].min() == 255  # the black sides stay in
    assert cropped[:, 1:-1].min() == 255 and cropped.min() > 200  # the centre square (edges filter a little black in)
    assert padded[:4].max() == 0 and padded[12:].max() == 0  # 2:1 kept: content is 8 rows tall
    assert padded[5:11, 5:11].min() == 255 and padded[5:11, :3].max() == 0
    with pytest.raises(UserError, match="resize mode"):
        one("squash")


def test_decode_cache_is_reused_without_decoding(tmp_path, monkeypatch):
    images, _ = colour_task(5, seed=0)
    paths = []
    for i, pixels in enumerate(images):
        Image.fromarray(pixels).save(tmp_path / f"img{i}", format="PNG")
        paths.append(str(tmp_path / f"img{i}"))
    paths.insert(2, str(tmp_path / "missing"))
    cache = str(tmp_path / "cache" / "split-32.npy")
    first = decode_images(paths, SIZE, "resize", cache_file=cache)

    def broken(*args):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(data_module, "decode_one", broken)
    second = decode_images(paths, SIZE, "resize", cache_file=cache)
    assert isinstance(second.images, np.memmap)
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.images, images)  # PNG is lossless and 32 px is 32 px
    assert second.kept.tolist() == [0, 1, 3, 4, 5] and second.failures == first.failures
    assert sorted(os.listdir(tmp_path / "cache")) == ["split-32.npy", "split-32.npy.json"]  # no temp files left
    other_mode = decode_images(paths, SIZE, "pad", cache_file=cache)  # the sidecar says crop != pad
    assert len(other_mode.failures) == len(paths)


def test_a_splits_packed_images_decode_as_their_files_do(tmp_path):
    """Ingest packs small images, which then have no path of their own: train and infer decode them through
    the store (models/split_images.py), to the same pixels as the files they came from. One that no longer
    hashes to its name is skipped and named by its path, as an unreadable file is."""
    from conftest import make_class_folders
    from lineage import runner
    from lineage.contract import Artifact, ViewContext
    from lineage.graph import Graph
    from lineage.store import Store
    from models.split_images import decode, load_split_images
    from stages import ingest, split

    photos = make_class_folders(tmp_path / "photos", {"red": 4, "green": 4})
    store = Store.open(tmp_path / "store", create=True)
    for stage, params in ((ingest, ingest.Params(source=str(photos))),
                          (split, split.Params(per_class={"train": 3, "val": 1, "test": 0}))):
        runner.execute(store, stage, params, log=lambda message: None, progress=False)
    graph = Graph.load(store)
    chosen = Artifact.open(store, graph, graph.resolve("split:latest"))
    digests = [d for names in chosen.split_digests("train").values() for d in names]
    assert list((store.root / "objects" / "packs").glob("*.idx"))  # packed, not loose:
    assert not any(store.object_path(d).exists() for d in digests) and all(store.has_object(d) for d in digests)
    context = ViewContext(store, "test", log=lambda message: None, progress=False)

    loaded = load_split_images(chosen, "train", ["red", "green"], 16, "crop", context)
    assert loaded.failures == [] and sorted(loaded.ids) == sorted(digests)
    from_files = decode_images([str(photos / path) for path in loaded.paths], 16, "crop", workers=1)
    np.testing.assert_array_equal(loaded.images, from_files.images)

    pack = store.packs.packs[0]
    position = pack.position(bytes.fromhex(loaded.ids[0]))
    offset, size = pack.location(position)
    with open(pack.pack_path, "r+b") as handle:  # same size: only its hash can tell
        handle.seek(offset)
        handle.write(b"\0" * size)
    again = decode(chosen, loaded.ids, loaded.paths, loaded.truths, ["red", "green"], 16, "crop", None, context)
    assert [(f["id"], f["path"]) for f in again.failures] == [(loaded.ids[0], loaded.paths[0])]
    assert "corrupt" in again.failures[0]["reason"]
    assert again.ids == loaded.ids[1:]
    np.testing.assert_array_equal(again.images, loaded.images[1:])


def test_make_dataset_batches_casts_and_shuffles_by_seed():
    rows = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1).repeat(3, axis=-1)
    labels = np.arange(10) % 3

    def epoch(dataset):
        batches = list(dataset.as_numpy_iterator())
        return np.concatenate([x[:, 0, 0, 0] for x, _ in batches]), np.concatenate([y for _, y in batches]), batches

    values, ys, batches = epoch(make_dataset(rows, labels, batch_size=4, shuffle=True, seed=7))
    assert [len(x) for x, _ in batches] == [4, 4, 2] and batches[0][0].dtype == np.float32
    assert sorted(values.tolist()) == list(range(10)) and values.tolist() != list(range(10))
    np.testing.assert_array_equal(ys, labels[values.astype(int)])  # labels follow their rows
    again, _, _ = epoch(make_dataset(rows, labels, batch_size=4, shuffle=True, seed=7))
    np.testing.assert_array_equal(values, again)
    plain = np.concatenate(list(make_dataset(rows, None, batch_size=4).as_numpy_iterator()))
    assert plain[:, 0, 0, 0].tolist() == list(range(10))


def test_build_augmentation_from_config():
    augment = build_augmentation({"flip": "horizontal", "rotation": 0.1, "zoom": 0.1, "contrast": 0.1})
    names = [type(layer).__name__ for layer in augment.layers]
    assert names == ["RandomFlip", "RandomRotation", "RandomZoom", "RandomContrast"]
    assert build_augmentation({}) is None
    assert build_augmentation({"flip": None, "rotation": 0, "zoom": None, "contrast": 0}) is None
    with pytest.raises(UserError, match="blur"):
        build_augmentation({"blur": 1})
    with pytest.raises(UserError, match="flip"):
        build_augmentation({"flip": "diagonal"})
    images, labels = colour_task(4, seed=0)
    x, _ = next(iter(make_dataset(images, labels, 4, augment=augment)))
    assert x.shape == (4, SIZE, SIZE, 3)


# ---------------------------------------------------------------------------------------
# training


def test_cached_features_match_fitting_the_composed_model(tmp_path, monkeypatch):
    extractor = tiny_extractor()
    head = tiny_head(extractor.output_shape[-1])
    initial = head.get_weights()
    cache_dir = str(tmp_path / "features")

    cached = train(extractor, head, quiet_config(), tmp_path, feature_cache_dir=cache_dir)
    cached_weights = head.get_weights()
    head.set_weights(initial)
    plain = train(extractor, head, quiet_config(use_feature_cache=False), tmp_path / "plain")

    assert sorted(os.listdir(cache_dir)) == ["train.npy", "val.npy"]
    for a, b in zip(cached_weights, head.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    for key in ("loss", "val_loss", "val_accuracy"):
        np.testing.assert_allclose([r[key] for r in cached.history], [r[key] for r in plain.history], rtol=1e-4)

    monkeypatch.setattr(extractor, "predict", lambda *a, **k: pytest.fail("features recomputed"))
    head.set_weights(initial)
    again = train(extractor, head, quiet_config(), tmp_path / "again", feature_cache_dir=cache_dir)
    assert [r["loss"] for r in again.history] == [r["loss"] for r in cached.history]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("trained")
    extractor = tiny_extractor()
    head = tiny_head(extractor.output_shape[-1], dropout=0.1)
    cfg = quiet_config(epochs_head=6, epochs_finetune=2, unfreeze=4, lr_head=5e-2, lr_finetune=1e-4,
                       augmentation={"flip": "horizontal"})
    return extractor, train(extractor, head, cfg, tmp_path, feature_cache_dir=str(tmp_path / "features")), tmp_path


def test_two_phase_fine_tune_learns_a_separable_task(trained):
    extractor, result, tmp_path = trained
    assert result.best["val_accuracy"] > 0.8
    phases = [(r["phase"], r["epoch"]) for r in result.history]
    assert phases == [("head", e) for e in range(1, 7)] + [("finetune", 7), ("finetune", 8)]
    assert result.history[0]["lr"] == pytest.approx(5e-2) and result.history[-1]["lr"] == pytest.approx(1e-4)
    first_best = max(result.history, key=lambda r: r["val_accuracy"])
    assert result.best == {k: first_best[k] for k in ("val_accuracy", "val_loss", "epoch", "phase")}
    assert os.path.exists(tmp_path / "best.keras")
    assert not os.path.exists(tmp_path / "features")  # augmentation on: features never cached
    backbone = extractor.get_layer("backbone")
    trainable = {layer.name: layer.trainable for layer in backbone.layers}
    assert trainable == {"conv1": False, "bn1": False, "relu1": True, "conv2": True, "bn2": False, "relu2": True}


def test_best_weights_are_restored(trained):
    _, result, _ = trained
    val_x, val_y = colour_task(48, seed=2)
    accuracy = np.mean(result.model.predict(val_x, verbose=0).argmax(axis=1) == val_y)
    assert accuracy == pytest.approx(result.best["val_accuracy"], abs=1e-6)


def test_saved_model_reloads_in_safe_mode_and_predicts_the_same(trained):
    _, result, tmp_path = trained
    path = str(tmp_path / "model.keras")
    result.model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    images, _ = colour_task(9, seed=5)
    assert_same_predictions(reloaded, result.model, images)


def assert_same_predictions(model_a, model_b, images):
    actual, expected = model_a.predict(images, verbose=0), model_b.predict(images, verbose=0)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


def test_unfreeze_by_layer_name_count_and_unknown_name():
    extractor = tiny_extractor()
    unfreeze_top(extractor, "relu1")
    backbone = extractor.get_layer("backbone")
    assert [layer.trainable for layer in backbone.layers] == [False, False, True, True, False, True]
    unfreeze_top(extractor, 100)
    assert [layer.name for layer in backbone.layers if not layer.trainable] == ["bn1", "bn2"]
    with pytest.raises(UserError, match="conv2"):  # a close match is suggested
        unfreeze_top(extractor, "conv_2")


def test_a_misspelt_unfreeze_layer_fails_before_any_training(tmp_path):
    extractor = tiny_extractor()
    cfg = quiet_config(epochs_finetune=1, unfreeze="conv_2")
    with pytest.raises(UserError, match="no layer 'conv_2'"):
        train(extractor, tiny_head(16), cfg, tmp_path)
    assert not (tmp_path / "best.keras").exists()


def test_empty_or_missing_validation_set_is_a_user_error(tmp_path):
    extractor = tiny_extractor()
    images, labels = colour_task(6, seed=0)
    for val_x, val_y in ((images[:0], labels[:0]), (None, None)):
        with pytest.raises(UserError, match="validation split is empty"):
            train_two_phase(extractor, tiny_head(16), images, labels, val_x, val_y, quiet_config(),
                            str(tmp_path / "m.keras"), build_classifier=compose)


@pytest.mark.slow
def test_real_backbone_trains_both_phases_and_reloads(tmp_path):
    from models.backbones import build_feature_extractor, build_head

    extractor = build_feature_extractor("efficientnet_lite0", SIZE, None)
    head = build_head(extractor.output_shape[-1], len(CLASSES), 0.2)
    cfg = quiet_config(epochs_head=1, epochs_finetune=1, unfreeze="blocks_15_expand_conv")
    train_x, train_y = colour_task(48, seed=1)
    val_x, val_y = colour_task(24, seed=2)
    result = train_two_phase(extractor, head, train_x, train_y, val_x, val_y, cfg, str(tmp_path / "best.weights.h5"),
                             feature_cache_dir=str(tmp_path / "features"), log=lambda line: None)
    assert [r["phase"] for r in result.history] == ["head", "finetune"]
    layers = extractor.get_layer("backbone").layers
    assert not any(layer.trainable for layer in layers if isinstance(layer, keras.layers.BatchNormalization))
    assert layers[-1].trainable and not layers[0].trainable
    result.model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    assert_same_predictions(reloaded, result.model, colour_task(4, seed=5)[0])


# ---------------------------------------------------------------------------------------
# prediction tables


def channel_mean_model() -> keras.Model:
    """Scores are the softmax of the mean of each channel: output i is channel i."""
    inputs = keras.Input((8, 8, 3))
    return keras.Model(inputs, keras.layers.Softmax()(keras.layers.GlobalAveragePooling2D()(inputs / 20.0)))


def test_predict_table_follows_the_models_class_order():
    class_names = ["zebra", "apple", "mango"]  # the model's map, deliberately not alphabetical
    images = np.zeros((5, 8, 8, 3), np.uint8)
    dominant = [0, 1, 2, 0, 2]
    images[np.arange(5), :, :, dominant] = 100
    table = predict_table(
        channel_mean_model(), images, [f"sha{i}" for i in range(5)], [f"p/{i}.jpg" for i in range(5)],
        ["test"] * 3 + ["unlabelled"] * 2, ["zebra", "apple", "apple", None, ""], class_names,
        batch_size=2, progress=False,
    )
    assert list(table.columns) == list(FIXED_COLUMNS) + ["score_zebra", "score_apple", "score_mango"]
    assert table["guess"].tolist() == [class_names[i] for i in dominant]
    assert table["truth"].tolist()[:3] == ["zebra", "apple", "apple"]
    assert table["truth"].isna().tolist() == [False, False, False, True, True]
    assert all(table[f"score_{c}"].dtype == np.float32 for c in class_names)
    scores = table[["score_zebra", "score_apple", "score_mango"]].to_numpy()
    np.testing.assert_allclose(scores.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_array_equal(table["confidence"].to_numpy(), scores.max(axis=1))
    assert table.loc[0, "score_zebra"] > 0.98
    with pytest.raises(UserError, match="3 outputs"):
        predict_table(channel_mean_model(), images, *[["x"] * 5] * 4, ["a", "b"], batch_size=2, progress=False)
