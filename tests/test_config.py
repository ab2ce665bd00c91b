"""Configs are checked in full before work starts: YAML 1.2, every key, type, range and choice,
the settings of one stage against another's, and class names as soon as the data is known."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from conftest import PROJECT, make_class_folders, run_cli, run_cli_traced, tensorflow_imports
from demo.data import FASHION_CLASSES
from lineage.errors import UserError
from stages import STAGES, load_stage
from workflow.config import load_config, parse_yaml

CONFIGS = sorted((PROJECT / "configs").glob("*.yaml"))
INATURALIST_TAXA = ["Amphibia", "Animalia", "Arachnida", "Aves", "Fungi", "Insecta", "Mammalia", "Mollusca",
                    "Plantae", "Reptilia"]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_is_fully_valid(path):
    config = load_config(str(path))
    built = config.check(config.stages)
    assert list(built) == config.stages
    for stage, params in built.items():
        section = config.sections[stage]
        for key, value in section.items():  # nothing in the file was dropped or renamed on the way
            assert getattr(params, key) == value, f"{path.name}: {stage}.{key}"


def test_yaml_is_read_with_1_2_semantics():
    data = parse_yaml("on: 1\nyes: 2\nno: 3\noff: 4\nrate: 1e-3\nsize: 010\ntime: 1:30\nreal: true\n", "test")
    assert data == {"on": 1, "yes": 2, "no": 3, "off": 4, "rate": 0.001, "size": 10, "time": "1:30", "real": True}
    assert parse_yaml("infer: {on: test}", "test") == {"infer": {"on": "test"}}


def test_the_infer_on_key_of_the_default_config_is_read_as_on(tmp_path):
    config = load_config(str(PROJECT / "configs" / "default.yaml"))
    assert config.params("infer").on == "test"


def _check(tmp_path, text: str, *overrides: str, stages=None):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    config = load_config(str(path), list(overrides))
    return config.check(stages or config.stages)


@pytest.mark.parametrize("overrides, message", [
    (["train.image_size=-5"], "train.image_size is -5: it must be from 32 to 2048"),
    (["train.image_size=40", "train.backbone=inception_v3"], "train.image_size is 40: inception_v3 needs at least 75"),
    (["train.resize=squash"], "train.resize is 'squash': use one of resize, crop, pad"),
    (["train.backbone=vgg16"], "train.backbone is 'vgg16': use one of efficientnet_lite0"),
    (["train.batch_size=0"], "train.batch_size is 0: it must be from 1"),
    (["train.epochs_head=-1"], "train.epochs_head is -1: it must be at least 0"),
    (["train.epochs_head=0", "train.epochs_finetune=0"], "train: nothing to train"),
    (["train.lr_head=0"], "train.lr_head is 0.0: it must be above 0"),
    (["train.dropout=1"], "train.dropout is 1.0: it must be at least 0 and below 1"),
    (["train.unfreeze=-3"], "train.unfreeze is -3: it must be at least 0"),
    (["train.unfreeze=true"], "train.unfreeze is True (true/false): it must be a whole number at least 0 or text"),
    (["train.verbose=3"], "train.verbose is 3: use one of 0, 1, 2"),
    (["train.weights=/no/such/file.h5"], "train.weights: /no/such/file.h5 is not a file"),
    (["train.augmentation.flip=diagonal"], "train.augmentation.flip is 'diagonal': use one of horizontal"),
    (["train.augmentation.rotate=0.1"], "train.augmentation.rotate is not a key of train.augmentation"),
    (["train.augmentation.zoom=1.5"], "train.augmentation.zoom is 1.5: it must be at least 0 and below 1"),
    (["train.augmentation=[flip]"], "train.augmentation is ['flip'] (a list): it must be a mapping"),
    (["split.per_class={tain: 800}"], "split.per_class.tain is not a key of split.per_class: use one of train"),
    (["split.per_class={train: -1, val: 1}"], "split.per_class.train is -1: it must be at least 0"),
    (["split.per_class={train: 0.5, val: 2}"], "give whole counts per class (800) or fractions (0.8), not a mix"),
    (["split.per_class={train: 0.8, val: 0.4}"], "fractions add up to 1.2"),
    (["split.per_class={val: 1}"], "split.per_class has no train images"),
    (["split.per_class={train: 8, test: 2}"], "which leaves no val images, but train needs them"),
    (["split.per_class={train: 8, val: 2}"], "infer.on is test, but split.per_class"),
    (["split.seed=1:30"], "split.seed is '1:30' (text): it must be a whole number"),
    (["infer.on=tests"], "infer.on is 'tests': use one of train, val, test"),
    (["infer.batch_size=0"], "infer.batch_size is 0"),
    (["ingest.link=symlink"], "ingest.link is 'symlink': use one of copy, hardlink"),
    (["ingest.on_label_conflict=ignore"], "ingest.on_label_conflict is 'ignore': use one of error, drop"),
    (["ingest.workers=0"], "ingest.workers is 0: it must be from 1 to 256"),
    (["ingest.max_pixels=0"], "ingest.max_pixels is 0: it must be at least 1"),
    (["evaluate.thumbnail_px=0"], "evaluate.thumbnail_px is 0: it must be from 8 to 512"),
    (["evaluate.workers=0"], "evaluate.workers is 0: it must be from 1 to 256"),
    (["evaluate.bins=0"], "evaluate.bins is 0: it must be from 1 to 1000"),
    (["evaluate.top_k=0"], "evaluate.top_k is 0: it must be at least 1"),
    (["evaluate.across_x=loss"], "evaluate.across_x is 'loss': use one of version, train_images, epochs"),
    (["evaluate.scatter=[Aves]"], "evaluate.scatter is ['Aves']: name two different classes"),
    (["evaluate.histogram=[Aves, Aves]"], "evaluate.histogram is ['Aves', 'Aves']: name two different classes"),
    (["evaluate.scatter=[Aves, 3]"], "evaluate.scatter[1] is 3 (a whole number): it must be text"),
    (["stages=[train, ingest]"], "must name each stage once, in pipeline order"),
    (["stages=[ingest, ingest]"], "must name each stage once, in pipeline order"),
    (["stages=[]"], "stages must be a list drawn from"),
    (["store=[a]"], "store must be a folder path"),
])
def test_bad_values_are_refused_before_anything_runs(tmp_path, overrides, message):
    with pytest.raises(UserError) as error:
        _check(tmp_path, (PROJECT / "configs" / "default.yaml").read_text(), *overrides)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_values_are_widened_only_where_a_number_is_asked_for(tmp_path):
    built = _check(tmp_path, "train: {lr_head: 1, unfreeze: block_6a}\nsplit: {per_class: {train: 8, val: 2}}\n",
                   "stages=[ingest, split, train]")
    assert built["train"].lr_head == 1.0 and isinstance(built["train"].lr_head, float)
    assert built["train"].unfreeze == "block_6a"
    assert built["split"].per_class == {"train": 8, "val": 2} and built["split"].uses_counts


@pytest.mark.parametrize("content, message", [
    (b"split: [unclosed\n", "is not valid YAML at line 2, column 1"),
    (b"split: {seed: 1}\nsplit: {seed: 2}\n", "found duplicate key \"split\""),
    (b"seed: \xff\xfe\n", "is not UTF-8 text (byte 0xff at line 1): save it as UTF-8"),
    (b"- ingest\n- split\n", "must hold a mapping of keys"),
    (b"!!python/object/apply:os.system [echo hacked]\n", "could not determine a constructor"),
    (b"split: 3\n", "split must be a mapping of that stage's keys, not a number"),
    (b"infer: {True: test}\n", "unknown config key infer.True"),
])
def test_bad_config_files_are_one_line(tmp_path, content, message):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    result = run_cli("ls", "--config", str(path), "--store", str(tmp_path / "store"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr


def test_a_folder_or_a_bad_set_is_one_line(tmp_path):
    folder = run_cli("ls", "--config", str(tmp_path))
    assert folder.returncode == 1 and "is a folder: pass a YAML file" in folder.stderr
    bad = run_cli("split", "--set", "split.per_class={train: 8", "--store", str(tmp_path / "store"))
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "--set split.per_class: the value '{train: 8' is not valid YAML" in bad.stderr


def test_backbone_choices_match_the_models_registry():
    from models.backbones import _REGISTRY, known_backbones
    from stages import train

    assert list(typing.get_args(train.Backbone)) == known_backbones()
    for name, recipe in _REGISTRY.items():
        assert train.MIN_IMAGE_SIZE.get(name, train.SMALLEST_IMAGE_SIZE) == recipe.min_size, name


def test_every_params_field_has_a_type_the_checker_knows():
    from lineage.params import check_value, param_hints

    for name in STAGES:
        params_class = load_stage(name).Params
        hints = param_hints(params_class)
        for field in dataclasses.fields(params_class):
            default = params_class().__dict__[field.name] if name != "ingest" else getattr(
                params_class(source="x"), field.name)
            check_value(f"{name}.{field.name}", default, hints[field.name])  # every default passes its own check


def test_class_names_are_checked_as_soon_as_the_data_is_known(tmp_path):
    """A scatter class the data lacks stops `run` right after ingest, before anything trains."""
    source = make_class_folders(tmp_path / "photos", {"cats": 6, "dogs": 6})
    result = run_cli_traced("run", "--config", str(PROJECT / "configs" / "smoke.yaml"),
                            "--store", str(tmp_path / "store"), "--set", f"ingest.source={source}",
                            "--set", "split.per_class={train: 3, val: 2, test: 1}",
                            "--set", "evaluate.scatter=[Amphibia, Reptilia]")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert [line for line in result.stdout.splitlines() if ": wrote " in line or ": up to date" in line] == [
        "ingest: wrote raw-data:v1"]
    assert ("evaluate.scatter names 'Amphibia', 'Reptilia', but raw-data:v1 has classes cats, dogs: set "
            "evaluate.scatter to two of them") in result.stderr
    assert tensorflow_imports(result) == []
    # Pinned to another version, evaluate may see other classes: then the check waits for evaluate itself.
    pinned = run_cli("run", "--config", str(PROJECT / "configs" / "smoke.yaml"), "--store", str(tmp_path / "store"),
                     "--set", f"ingest.source={source}", "--set", "split.per_class={train: 3, val: 2, test: 1}",
                     "--set", "evaluate.scatter=[Amphibia, Reptilia]", "--set", "evaluate.input=predictions:v7",
                     "--set", "stages=[ingest, split, evaluate]")
    assert "split: wrote split:v1" in pinned.stdout and "predictions" in pinned.stderr


SHIPPED_RUNS = [("default.yaml", "data/inaturalist_12K/train", INATURALIST_TAXA),
                ("demo.yaml", "data/fashion-mnist", list(FASHION_CLASSES))]


@pytest.mark.slow
@pytest.mark.parametrize("name, source, classes", SHIPPED_RUNS, ids=[run[0] for run in SHIPPED_RUNS])
def test_a_shipped_config_runs_end_to_end_on_tiny_data(tmp_path, name, source, classes):
    """A config as shipped, from a folder laid out as it expects (its source folder with its classes),
    with overrides for sizes and epochs only. (smoke.yaml runs in tests/test_end_to_end.py.)"""
    make_class_folders(tmp_path / source, {label: 8 for label in classes})
    result = run_cli("run", "--config", str(PROJECT / "configs" / name),
                     "--set", "split.per_class={train: 4, val: 2, test: 2}", "--set", "train.image_size=32",
                     "--set", "train.batch_size=8", "--set", "train.epochs_head=1", "--set", "train.epochs_finetune=1",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    wrote = [line for line in result.stdout.splitlines() if ": wrote" in line]
    assert wrote == ["ingest: wrote raw-data:v1", "split: wrote split:v1", "train: wrote model:v1, predictions:v1",
                     "infer: wrote predictions:v2", "evaluate: wrote eval:v1"]
    assert (Path(tmp_path) / "artifacts" / "lineage.json").exists()
