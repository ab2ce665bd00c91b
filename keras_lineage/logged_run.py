"""Log a run from your own training code: the versions it makes join the store like a built-in stage's.

    with start_run("my-train", inputs={"split": "split:v3"}, params={"lr": 1e-3}) as run:
        train, val = run.split_images("train", 64), run.split_images("val", 64)
        model.fit(train.images, train.labels, epochs=5,
                  callbacks=[run.keras_callback(validation_data=(val.images, val.labels))])
        run.log_model(model, run.classes)
        run.log_table(predict_table(model, val.images, val.ids, val.paths, ["val"] * len(val.ids),
                                    val.truths, run.classes), split="val")

Nothing is visible until the block ends without an exception: then the versions commit through the
runner's one commit path (lineage/runner.py `commit_run`: manifests, the run record, the graph, under
the lock, in the Ctrl-C ledger), so `ls`, `lineage`, `compare`, `report` and `infer` read them as they
read train's. From entry to commit the run holds its place in the store (`run_in_progress`), so gc
cannot sweep what it stages; if the block raises, the run is recorded as failed and what it staged is
garbage for gc, as with a built-in stage that fails or is killed.

The stage name is the user's (W&B's job_type), but not a built-in stage's (ingest … evaluate) or the
runner's own (alias, pull): those names mean a config section, a cache key and what `why` explains.
The code digest is the sha256 of the calling script's file, or of the text a notebook registered for
the calling cell; None when neither exists (`python -c`, a REPL).
TensorFlow is imported only by the methods that need Keras (log_model, keras_callback).
"""

from __future__ import annotations

import inspect
import json
import linecache
import os
import shutil
import sys
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Callable, Iterable

from lineage import interrupts
from lineage.contract import Artifact, Output, StageContext
from lineage.errors import UserError
from lineage.graph import Graph, Version
from lineage.records import InputRef, Manifest, RunRecord, is_digest, is_name
from lineage.store import Store, canonical_json, sha256_bytes, sha256_file

RESERVED_STAGES = ("ingest", "split", "train", "infer", "evaluate", "alias", "pull")  # stages.STAGES + the runner's
# Kinds the pipeline reads by a schema of their own: log_model and log_table write two of them; the others are
# made by their stages only.
SCHEMA_KINDS = {"model": "run.log_model", "predictions": "run.log_table", "raw-data": "`pipeline.py ingest`",
                "split": "`pipeline.py split`", "eval": "`pipeline.py evaluate`"}
RESIZE_MODES = ("resize", "crop", "pad")


def start_run(stage: str, inputs: dict[str, str] | None = None, params: dict | None = None, *,
              store: str | os.PathLike = "artifacts", aliases: Iterable[str] = (),
              log: Callable[[str], None] = print) -> "LoggedRun":
    """Open a run named `stage` reading `inputs` ({artifact name (or `name#role`): REF such as `split:v3`}),
    with `params` (a JSON-able dict, recorded as the run's params). Everything is checked here, before any
    work: the store, the name, each REF (one line naming a bad one), the params. Use it as a context manager:
    the versions logged inside commit when the block ends without an exception, each also under `aliases`."""
    from lineage.runner import check_alias

    where = Path(store)
    opened = Store.open(where, create=not inputs)  # a run that reads nothing may start a store
    _check_stage_name(stage)
    aliases = list(aliases)
    for alias in aliases:
        check_alias(alias)
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise UserError(f"params of run {stage!r} is a {type(params).__name__}: pass a dict of JSON values")
    try:
        canonical_json(params)
    except (TypeError, ValueError) as error:
        raise UserError(f"params of run {stage!r} cannot be recorded as JSON ({error}): pass numbers, strings, "
                        "booleans, None, lists and dicts") from None
    graph = Graph.load(opened)
    resolved = {key: _resolve_input(graph, key, ref) for key, ref in (inputs or {}).items()}
    return LoggedRun(opened, graph, stage, resolved, {key: ref for key, ref in (inputs or {}).items()},
                     json.loads(canonical_json(params)), aliases, _caller_code_digest(inspect.currentframe()), log)


class LoggedRun:
    """One run of the user's code: what it reads (`inputs`, as Artifacts) and the versions it logs."""

    def __init__(self, store: Store, graph: Graph, stage: str, inputs: dict[str, Version], asked: dict[str, str],
                 params: dict, aliases: list[str], code_digest: str | None, log: Callable[[str], None]):
        self.store, self.stage, self.params, self.log = store, stage, params, log
        self._graph, self._versions, self._asked, self._aliases = graph, inputs, asked, aliases
        self.code_digest = code_digest
        self.inputs: dict[str, Artifact] = {}
        self.history: list[dict[str, Any]] = []  # one row per epoch, written by keras_callback
        self.best: dict[str, Any] | None = None  # the epoch whose weights keras_callback kept
        self.versions: list[Version] = []  # after a clean exit: what the run committed (model:v4, …)
        self.run_id: str | None = None
        self._outputs: list[Output] = []
        self._hold = None
        self._t0 = 0.0
        self._record: RunRecord | None = None
        self._context: StageContext | None = None

    # -- the block -------------------------------------------------------------------------

    def __enter__(self) -> "LoggedRun":
        from lineage.inprogress import run_in_progress
        from lineage.plan import run_key
        from lineage.provenance import environment, new_run_id, now
        from lineage.sync import fetch_missing_inputs

        if self.run_id is not None:
            raise UserError(f"run {self.stage!r} was already entered: a LoggedRun is used once; call start_run again")
        fetch_missing_inputs(self.store, self._versions.values(), self.log)
        self.run_id = new_run_id()
        self._t0 = time.perf_counter()
        # Held from before anything is staged until the record commits: gc cannot sweep what this run stages.
        hold = run_in_progress(self.store, self.run_id, self.stage, self.log)
        hold.__enter__()
        self._hold = hold
        try:
            self.inputs = {key: Artifact.open(self.store, self._graph, v) for key, v in self._versions.items()}
            self._context = StageContext(self.store, self.stage, self.log, progress=False)
            self._record = RunRecord(
                id=self.run_id, stage=self.stage, status="running", params=self.params, all_params=self.params,
                cache_key=run_key(self.stage, self.code_digest, self.params, self._versions, None),
                code_digest=self.code_digest,
                inputs=[InputRef(v.name, v.digest, self._asked[key]) for key, v in self._versions.items()],
                started=now(), **environment())
        except BaseException:
            self._release(*sys.exc_info())
            raise
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, trace: TracebackType | None) -> bool:
        from lineage.runner import commit_run, record_failed_run

        try:
            if error is None:
                try:
                    self.versions = commit_run(self.store, self._record, self._outputs, self._t0, self._aliases,
                                               log=self.log)
                except KeyboardInterrupt:
                    self.log(interrupts.describe_interrupt())  # what the CLI says: committed or not, truly
                    raise
                wrote = ", ".join(v.ref for v in self.versions) or "no version (nothing was logged)"
                self.log(f"{self.stage}: wrote {wrote}")
            elif isinstance(error, (Exception, KeyboardInterrupt)):
                why = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
                try:
                    record_failed_run(self.store, self._record, why, self._t0)
                except Exception as failure:  # the block's own error is what the user must see first
                    self.log(f"{self.stage}: could not record the failed run ({failure}); nothing was committed")
                if isinstance(error, KeyboardInterrupt):
                    self.log(interrupts.describe_interrupt())
        finally:
            self._release(kind, error, trace)
        return False

    def _release(self, kind, error, trace) -> None:
        for folder in self._context.temp_dirs if self._context else []:
            shutil.rmtree(folder, ignore_errors=True)
        hold, self._hold = self._hold, None
        if hold is not None:
            hold.__exit__(kind, error, trace)

    def _ctx(self) -> StageContext:
        if self._context is None or self._hold is None:
            raise UserError(f"run {self.stage!r} is not open: log inside `with start_run(...) as run:`")
        return self._context

    # -- reading the inputs ----------------------------------------------------------------

    @property
    def split(self) -> Artifact:
        """The run's one split input (the split its model learns from)."""
        splits = [a for a in self.inputs.values() if a.version.name == "split"]
        if len(splits) != 1:
            raise UserError(f"run {self.stage!r} reads {len(splits)} split versions: name one in inputs, "
                            "e.g. inputs={'split': 'split:latest'}")
        return splits[0]

    @property
    def classes(self) -> list[str]:
        """The split input's classes, in the order a model's outputs follow."""
        return list(self.split.manifest.meta["classes"])

    def split_images(self, part: str, size: int, resize: str = "crop"):
        """One part (train, val, test) of the split input decoded to (N, size, size, 3) uint8 pixels, with
        integer labels, ids, paths and truths (models/split_images.py SplitImages), cached as train's are."""
        from models.split_images import load_split_images

        split = self.split
        if part not in split.split_names():
            raise UserError(f"{split.ref} has no {part} split (it has {', '.join(split.split_names())})")
        _check_resize(resize)
        return load_split_images(split, part, self.classes, int(size), resize, self._ctx())

    # -- logging versions ------------------------------------------------------------------

    def log_model(self, model, class_names: list[str], *, preprocessing: str | None = None,
                  input_size: int | None = None, resize: str = "crop", train_images: int | None = None,
                  backbone: str | None = None) -> None:
        """Stage `model` as a `model` version infer can use: model.keras (checked to load back with
        safe_mode=True, so preprocessing must be layers inside the model, fed 0-255 RGB pixels), class_index.json
        and history.json, with the meta train writes. `class_names` follow the model's outputs; the input size
        is read off model.input_shape unless given; `resize` is how infer fits images to it; `history` and
        `best` come from this run's keras_callback."""
        from stages.train import model_output

        ctx = self._ctx()
        classes = _checked_classes(class_names)
        outputs = model.output_shape[-1] if isinstance(model.output_shape, tuple) else None
        if outputs != len(classes):
            raise UserError(f"the model has {outputs} outputs but {len(classes)} class names were given: "
                            "pass one name per output, in output order")
        size = _input_size(model, input_size)
        _check_resize(resize)
        work = ctx.temp_dir()
        path = work / "model.keras"
        model.save(path)
        _check_loads_back(path)
        split = next((a for a in self.inputs.values() if a.version.name == "split"), None)
        self._stage_output(model_output(
            ctx, path, classes, self.history, split.version.key if split else None, input_size=size, resize=resize,
            backbone=backbone, weights=None, preprocessing=preprocessing, params=self.params, best=self.best,
            logged_by=self.stage, **({"train_images": int(train_images)} if train_images is not None else {})))

    def log_table(self, frame, name: str = "predictions", split: str = "val") -> None:
        """Stage a prediction table (pandas, tables/predictions.py's schema, checked; ids must be images in
        the store) as a `predictions` version, as train and infer write it. Other frames are not a kind the
        pipeline reads: write them to a file and use log_files."""
        from tables.predictions import checked_table, prediction_output

        ctx = self._ctx()
        if name != "predictions":
            raise UserError(f"log_table logs prediction tables (name='predictions'), not {name!r}: save other "
                            f"frames to a file (frame.to_parquet(path)) and log it with run.log_files({name!r}, path)")
        table, classes = checked_table(frame, f"the table logged by run {self.stage!r}")
        if set(table["split"]) != {split}:
            raise UserError(f"the table's split column holds {sorted(set(table['split']))[:5]}, not only {split!r}: "
                            "pass split= the part it predicts, and log one table per part")
        ids = table["id"].tolist()
        strangers = [i for i in ids if not is_digest(i)] or self.store.missing_objects(ids)
        if strangers:
            raise UserError(f"the table's id {strangers[0][:40]!r} is not an image in {self.store.root}: ids are "
                            "the images' object digests (SplitImages.ids), which the report and compare join on")
        made_with = {key.split("#")[0]: self._versions[key].ref for key in self._versions}
        self._stage_output(prediction_output(ctx, table, classes, split=split, made_with=made_with))

    def log_files(self, name: str, paths: str | os.PathLike | Iterable[str | os.PathLike]) -> None:
        """Stage files as a version of artifact `name`: one path, a list of paths (stored by file name) or a
        folder (every file under it, by its path inside the folder)."""
        ctx = self._ctx()
        if not is_name(name):
            raise UserError(f"artifact name {name!r} is not a plain name: use letters, digits, '_', '.' and '-' "
                            "(starting with a letter or digit, at most 128 characters)")
        if name in SCHEMA_KINDS:
            raise UserError(f"{name} versions have a schema the pipeline reads: make them with {SCHEMA_KINDS[name]}, "
                            "or log these files under another name")
        named = _named_files(paths)
        files = {relative: ctx.copy_object(path) for relative, path in sorted(named.items())}
        made_with = {key.split("#")[0]: self._versions[key].ref for key in self._versions}
        self._stage_output(Output(Manifest(name, files=files, meta={"logged_by": self.stage, **made_with})))

    def _stage_output(self, output: Output) -> None:
        self._outputs.append(output)

    # -- Keras -----------------------------------------------------------------------------

    def keras_callback(self, validation_data: tuple | None = None, monitor: str = "val_loss", mode: str = "auto",
                       class_names: list[str] | None = None, batch_size: int = 64, phase: str = "fit",
                       restore_best: bool = True):
        """A keras.callbacks.Callback that records each epoch's logs into this run (the model's `history`: the
        report's AP-per-epoch chart draws it as it draws train's), and keeps the best epoch's weights by
        `monitor` (restored when training ends, so log_model stores them). With `validation_data` (images and
        integer or one-hot labels), it predicts them once per epoch and adds val_accuracy and the validation
        micro, macro and per-class AP (models/training.py validation_ap) to the logs before later callbacks
        read them; put it first in the callbacks list. `phase` "finetune" marks a second fit in the chart."""
        return _callback_class()(self, validation_data, monitor, mode, class_names, batch_size, phase, restore_best)


def _callback_class():
    """The callback class, built on first use so that importing this module imports no TensorFlow."""
    global _CALLBACK
    if _CALLBACK is not None:
        return _CALLBACK
    import keras
    import numpy as np

    from models.training import validation_ap

    class RunCallback(keras.callbacks.Callback):
        """Per-epoch metrics (and validation AP) into a LoggedRun; the best epoch's weights kept."""

        def __init__(self, run: LoggedRun, validation_data, monitor, mode, class_names, batch_size, phase,
                     restore_best):
            super().__init__()
            self.run, self.monitor, self.phase, self.restore_best = run, monitor, phase, restore_best
            self.batch_size = batch_size
            if mode not in ("auto", "min", "max"):
                raise UserError(f"keras_callback mode is {mode!r}: use auto, min or max")
            self.maximise = mode == "max" or mode == "auto" and ("acc" in monitor or "_ap" in monitor)
            self.validation = None
            if validation_data is not None:
                images, targets = validation_data
                targets = np.asarray(targets)  # as the compiled loss takes them: integer labels or one-hot
                labels = targets.argmax(axis=1) if targets.ndim == 2 else targets.astype(np.int64)
                if len(labels) != len(images) or not len(labels):
                    raise UserError(f"validation_data has {len(images)} images and {len(labels)} labels: "
                                    "pass (images, labels), one label per image")
                self.validation = (images, targets, labels)
            self.class_names = class_names
            self.best_value: float | None = None
            self.best_weights = None

        def on_epoch_end(self, epoch, logs=None):
            logs = {} if logs is None else logs
            class_ap = None
            if self.validation is not None:
                images, targets, labels = self.validation
                probabilities = np.asarray(self.model.predict(images, batch_size=self.batch_size, verbose=0))
                if "val_loss" not in logs:  # fit had no validation_data of its own: the compiled loss, on this pass
                    logs["val_loss"] = _compiled_loss(self.model, targets, probabilities)
                names = self.class_names or (self.run.classes if "split" in _input_names(self.run)
                                             else [str(i) for i in range(probabilities.shape[1])])
                logs["val_accuracy"] = float(np.mean(probabilities.argmax(axis=1) == labels))
                micro, macro, class_ap = validation_ap(labels, probabilities, list(names))
                logs["val_micro_ap"] = np.nan if micro is None else micro
                logs["val_macro_ap"] = np.nan if macro is None else macro
            row: dict[str, Any] = {"phase": self.phase, "epoch": len(self.run.history) + 1}
            for key, value in logs.items():
                number = _number(value)
                if number is not ...:
                    row[key] = number
            if class_ap is not None:
                row["val_class_ap"] = class_ap
            learning_rate = getattr(getattr(self.model, "optimizer", None), "learning_rate", None)
            if _number(learning_rate) is not ...:
                row["lr"] = _number(learning_rate)
            self.run.history.append(row)
            value = row.get(self.monitor)
            if value is None:
                return
            if self.best_value is None or (value > self.best_value if self.maximise else value < self.best_value):
                self.best_value, self.best_weights = value, self.model.get_weights()
                self.run.best = {self.monitor: value, "epoch": row["epoch"], "phase": self.phase}

        def on_train_end(self, logs=None):
            if self.best_value is None:
                self.run.log(f"{self.run.stage}: no epoch logged {self.monitor!r}, so no best epoch was kept "
                             f"(logged: {', '.join(k for k in (self.run.history or [{}])[-1] if k != 'phase')})")
            elif self.restore_best:
                self.model.set_weights(self.best_weights)

    _CALLBACK = RunCallback
    return RunCallback


_CALLBACK = None


def _compiled_loss(model, targets, probabilities) -> float:
    """The model's compiled loss (plus its regularisation) on one validation prediction, as fit's own validation
    would report it; NaN for a model compiled without a loss."""
    import keras

    try:
        loss = model.compute_loss(y=targets, y_pred=keras.ops.convert_to_tensor(probabilities), training=False)
    except ValueError:  # "No loss to compute": compiled without one
        return float("nan")
    return float(keras.ops.convert_to_numpy(loss))


def _number(value) -> float | None:
    """A log value as JSON holds it: a float, None for NaN or infinity (JSON has neither), ... if not a number."""
    import numpy as np

    try:
        number = float(np.asarray(value))
    except (TypeError, ValueError):
        return ...
    return number if np.isfinite(number) else None


def _input_names(run: LoggedRun) -> set[str]:
    return {a.version.name for a in run.inputs.values()}


# -- checks ----------------------------------------------------------------------------------


def _check_stage_name(stage: Any) -> None:
    if not is_name(stage):
        raise UserError(f"run name {stage!r} is not a plain name: use letters, digits, '_', '.' and '-' "
                        "(starting with a letter or digit, at most 128 characters), e.g. my-train")
    if stage in RESERVED_STAGES:
        raise UserError(f"run name {stage!r} is a built-in stage's: a logged run needs its own name "
                        f"(e.g. my-{stage}), so `why`, the config and the cache never take it for {stage}")


def _resolve_input(graph: Graph, key: Any, ref: Any) -> Version:
    if not isinstance(key, str) or not isinstance(ref, str):
        raise UserError(f"inputs maps an artifact name to a REF such as 'split:v3', not {key!r}: {ref!r}")
    version = graph.resolve(ref)
    if key.split("#")[0] != version.name:
        raise UserError(f"inputs[{key!r}] is {ref}, a {version.name} version: key each input by its artifact "
                        f"name ({version.name!r}, or '{version.name}#role' for several)")
    return version


def _check_resize(resize: str) -> None:
    if resize not in RESIZE_MODES:
        raise UserError(f"resize is {resize!r}: use {', '.join(RESIZE_MODES)} (how infer fits an image to the model)")


def _checked_classes(class_names: Any) -> list[str]:
    classes = list(class_names) if isinstance(class_names, (list, tuple)) else None
    if not classes or not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
        raise UserError(f"class names {class_names!r} must be a list of distinct non-empty strings, one per output")
    return classes


def _input_size(model, input_size: int | None) -> int:
    """The square side infer resizes images to: model.input_shape's, which must be (None, S, S, 3)."""
    shape = getattr(model, "input_shape", None)
    fixed = isinstance(shape, tuple) and len(shape) == 4 and shape[3] == 3
    side = shape[1] if fixed and shape[1] == shape[2] and isinstance(shape[1], int) else None
    if input_size is not None:
        if not isinstance(input_size, int) or input_size < 1 or side is not None and side != input_size:
            raise UserError(f"input_size {input_size!r} does not fit the model's input shape {shape}")
        return input_size
    if side is None:
        raise UserError(f"the model's input shape is {shape}: infer feeds (batch, size, size, 3) RGB pixels; "
                        "give log_model(..., input_size=N) for a model that takes any size")
    return side


def _check_loads_back(path: Path) -> None:
    """infer loads the file with safe_mode=True (no Lambda layers, no unknown custom objects): fail here, not there."""
    import keras

    import models.backbones  # noqa: F401  registers the custom layers a model of this project may use

    try:
        keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as error:  # Keras raises ValueError, TypeError, …: each one means infer could not load it
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise UserError(f"the model does not load back with safe_mode=True ({first}), so infer could not use it: "
                        "replace Lambda layers and unregistered custom objects with registered layers") from None


def _named_files(paths) -> dict[str, Path]:
    """{name in the version: file} for one path, a list of paths, or a folder."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    named: dict[str, Path] = {}
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = {p.relative_to(path).as_posix(): p for p in sorted(path.rglob("*")) if p.is_file()}
        elif path.is_file():
            found = {path.name: path}
        else:
            raise UserError(f"{path} is not a file or folder: log files that exist")
        clashes = sorted(set(found) & set(named))
        if clashes:
            raise UserError(f"two logged files are both named {clashes[0]!r}: log them from one folder, or rename one")
        named.update(found)
    if not named:
        raise UserError(f"no file to log in {paths!r}: give a file, a list of files or a folder that holds some")
    return named


def _caller_code_digest(frame: FrameType | None) -> str | None:
    """sha256 of the code that called start_run: its script file, else the text a notebook registered for the
    cell (linecache), else None (`python -c`, a REPL)."""
    caller = frame.f_back if frame is not None else None
    if caller is None:
        return None
    file = caller.f_globals.get("__file__")
    if isinstance(file, str) and Path(file).is_file():
        return sha256_file(file)
    lines = linecache.getlines(caller.f_code.co_filename)
    return sha256_bytes("".join(lines).encode()) if lines else None
