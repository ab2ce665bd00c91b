"""The artifact graph as a picture (lineage/draw.py): `lineage --format svg|html` and the report's figure.

The store has branches: one raw-data version, two splits, three models (two on the first split, one
on the second), predictions from each, and an evaluation comparing two of them. Ingest and split are
the real stages; train, infer and evaluate are small stand-ins run through the real runner (the
picture needs their run records and versions, not a trained network), so every record, vN and alias
is what the store really holds.
"""

from __future__ import annotations

import json
import re
import sys
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from conftest import make_class_folders, run_cli, run_cli_traced, tensorflow_imports
from lineage import draw, runner
from lineage.contract import REF, Output
from lineage.graph import Graph, Version
from lineage.records import Manifest, RunSummary
from lineage.store import Store
from stages import ingest, split

SVG = "{http://www.w3.org/2000/svg}"
CODE = ("tests/test_graph_picture.py",)


@dataclass
class TrainParams:
    input: str = field(default="split:latest", metadata=REF)
    seed: int = 0


@dataclass
class InferParams:
    model: str = field(default="model:latest", metadata=REF)
    input: str = field(default="split:latest", metadata=REF)


@dataclass
class EvaluateParams:
    input: str = field(default="predictions:latest", metadata=REF)
    compare_with: str = field(default="predictions:v1", metadata=REF)


def _train_run(inputs, params, ctx):
    made = ctx.write_object(f"weights of seed {params.seed} on {inputs['split'].digest}".encode())
    table = ctx.write_object(f"predictions of seed {params.seed}".encode())
    return [Output(Manifest("model", source=inputs["split"].version.key, files={"model.keras": made},
                            meta={"seed": params.seed})),
            Output(Manifest("predictions", source=inputs["split"].version.key, files={"predictions.parquet": table},
                            meta={"rows": 4, "model_seed": params.seed}))]


def _infer_run(inputs, params, ctx):
    table = ctx.write_object(f"inferred by {inputs['model'].digest}".encode())
    return [Output(Manifest("predictions", source=inputs["model"].version.key,
                            files={"predictions.parquet": table}, meta={"rows": 2}))]


def _evaluate_run(inputs, params, ctx):
    report = ctx.write_object(b"<html>report</html>")
    return [Output(Manifest("eval", source=inputs["predictions"].version.key, files={"report.html": report},
                            meta={"metrics": {"accuracy": 0.75}}))]


def _stage(name, output, params, refs, run):
    return SimpleNamespace(NAME=name, OUTPUT=output, CODE=CODE, Params=params, input_refs=refs,
                           fingerprint=lambda p: None, run=run)


TRAIN = _stage("train", "model", TrainParams, lambda p: {"split": p.input}, _train_run)
INFER = _stage("infer", "predictions", InferParams, lambda p: {"model": p.model, "split": p.input}, _infer_run)
EVALUATE = _stage("evaluate", "eval", EvaluateParams,
                  lambda p: {"predictions": p.input, "predictions#compare": p.compare_with}, _evaluate_run)


def _execute(store, stage, params, aliases=()):
    return runner.execute(store, stage, params, aliases=list(aliases), log=lambda m: None, progress=False)


@pytest.fixture(scope="module")
def branched(tmp_path_factory):
    """raw-data:v1 → split:v1, split:v2 → model:v1, v2 (split:v1) and v3 (split:v2) → predictions:v1..v4 →
    eval:v1 (predictions:v4 against predictions:v1). model:v2 is also `best`."""
    root = tmp_path_factory.mktemp("branched")
    source = make_class_folders(root / "photos", {"Aves": 6, "Fungi": 6, "Insecta": 6})
    store = Store.open(root / "store", create=True)
    _execute(store, ingest, ingest.Params(source=str(source)))
    for seed in (1, 2):
        _execute(store, split, split.Params(input="raw-data:v1", per_class={"train": 3, "val": 2, "test": 1},
                                            seed=seed))
    _execute(store, TRAIN, TrainParams(input="split:v1", seed=1))
    _execute(store, TRAIN, TrainParams(input="split:v1", seed=2), aliases=["best"])
    _execute(store, TRAIN, TrainParams(input="split:v2", seed=3))
    _execute(store, INFER, InferParams(model="model:v3", input="split:v1"))
    _execute(store, EVALUATE, EvaluateParams(input="predictions:v4", compare_with="predictions:v1"))
    return root, store


def _laid_out(store, ref=None):
    graph = Graph.load(store)
    versions = draw.around(graph, graph.resolve(ref)) if ref else graph.all_versions()
    return draw.lay_out(draw.picture(draw.describe(store, graph, versions)))


def _node(picture, key):
    return next(node for node in picture.nodes if node.key == key)


def test_the_branched_store_is_laid_out_left_to_right_in_layers_without_overlaps(branched):
    root, store = branched
    picture = _laid_out(store)
    versions = sorted(n.key for n in picture.nodes if n.kind == "version")
    assert versions == ["eval:v1", "model:v1", "model:v2", "model:v3", "predictions:v1", "predictions:v2",
                        "predictions:v3", "predictions:v4", "raw-data:v1", "split:v1", "split:v2"]
    assert sorted(n.label for n in picture.nodes if n.kind == "run") == \
        ["evaluate", "infer", "ingest", "split", "split", "train", "train", "train"]
    assert len(picture.edges) == 20  # 8 runs: their 11 outputs and 9 inputs
    for start, end in picture.edges:  # every edge goes left to right: producer before product
        assert picture.nodes[start].x + picture.nodes[start].width / 2 < picture.nodes[end].x - \
            picture.nodes[end].width / 2, (picture.nodes[start].key, picture.nodes[end].key)
    # Layers: the chain raw-data → split → train → model → infer → predictions → evaluate → eval.
    order = ["raw-data:v1", "split:v1", "model:v3", "predictions:v4", "eval:v1"]
    xs = [_node(picture, key).x for key in order]
    assert xs == sorted(xs) and len(set(xs)) == len(xs)
    # Branches sit side by side in one layer: both splits share an x, and so do the three models.
    assert _node(picture, "split:v1").x == _node(picture, "split:v2").x
    assert len({_node(picture, f"model:v{n}").x for n in (1, 2, 3)}) == 1
    boxes = [(n.x - n.width / 2, n.y - n.height / 2, n.x + n.width / 2, n.y + n.height / 2) for n in picture.nodes]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
        assert 0 <= a[0] and a[2] <= picture.width and 0 <= a[1] and a[3] <= picture.height


def test_the_svg_draws_versions_and_runs_differently_with_edges_and_alias_badges(branched):
    root, store = branched
    picture = _laid_out(store)
    document = ElementTree.fromstring(draw.svg(picture))  # well-formed XML, or this raises
    nodes = document.findall(f"{SVG}g")
    versions = [g for g in nodes if g.get("class") == "node version"]
    runs = [g for g in nodes if g.get("class") == "node run"]
    assert len(versions) == 11 and len(runs) == 8
    assert all(g.find(f"{SVG}rect") is not None and g.find(f"{SVG}ellipse") is None for g in versions)
    assert all(g.find(f"{SVG}ellipse") is not None and g.find(f"{SVG}rect") is None for g in runs)
    edges = document.findall(f"{SVG}path")
    assert len(edges) == 20 and all(e.get("marker-end") == "url(#lineage-arrow)" for e in edges)
    assert all(re.fullmatch(r"M[-\d.,]+( C[-\d., ]+)+", e.get("d")) for e in edges)  # curves, not lines
    badges = {g.get("data-key"): [b.get("data-alias") for b in g.findall(f"{SVG}g")] for g in versions}
    assert badges["model:v2"] == ["best"]
    assert badges["model:v3"] == ["latest"] and badges["model:v1"] == []
    assert badges["eval:v1"] == ["latest"]


def test_a_node_summary_holds_digest_maker_params_and_counts(branched):
    root, store = branched
    graph = Graph.load(store)
    picture = _laid_out(store)
    split_two = dict(_node(picture, "split:v2").summary)
    assert split_two["digest"] == graph.resolve("split:v2").digest
    assert split_two["made by"].startswith("split run ")
    assert split_two["inputs"] == "raw-data:v1"
    assert "seed: 2" in split_two["params"].splitlines()
    assert split_two["counts"].splitlines()[0] == "test: Aves 1, Fungi 1, Insecta 1"
    raw = dict(_node(picture, "raw-data:v1").summary)
    assert raw["counts"] == "Aves 6, Fungi 6, Insecta 6" and raw["entries"] == "18"
    evaluation = dict(_node(picture, "eval:v1").summary)
    assert evaluation["inputs"] == "predictions:v4, predictions:v1"
    infer = dict(_node(picture, "run:" + graph.resolve("predictions:v4").run).summary)
    assert infer["stage"] == "infer" and infer["outputs"] == "predictions:v4"
    assert infer["inputs"] == "model:v3, split:v1"


def test_the_part_around_a_ref_is_its_ancestors_descendants_and_their_runs_whole(branched):
    root, store = branched
    keys = {node.key for node in _laid_out(store, "model:v3").nodes if node.kind == "version"}
    # up: split:v2, raw-data:v1; down: predictions:v4, eval:v1; the runs drawn whole add train's other
    # output (predictions:v3), infer's split:v1 and evaluate's predictions:v1. model:v1, v2 are other branches.
    assert keys == {"model:v3", "split:v2", "raw-data:v1", "predictions:v3", "predictions:v4", "split:v1",
                    "eval:v1", "predictions:v1"}
    # Nothing consumed model:v1: its sibling predictions:v1 is drawn (train drawn whole), not what used that.
    assert {node.key for node in _laid_out(store, "model:v1").nodes if node.kind == "version"} == \
        {"model:v1", "split:v1", "raw-data:v1", "predictions:v1"}


def test_names_from_the_store_are_escaped(branched):
    entries = [{"ref": 'x"><script>alert(1)</script>:v1', "digest": "ab" * 32, "made_by": "s<b>",
                "run": "r&1", "inputs": ["<img src=x onerror=alert(1)>"], "aliases": ["</svg><b>"],
                "params": {"p": "</script><script>alert(2)</script>"}}]
    picture = draw.lay_out(draw.picture(entries))
    page = draw.html_page(picture, "t <i>")
    assert "<script>alert" not in page and "<img" not in page and "</svg><b>" not in page
    ElementTree.fromstring(draw.svg(picture))
    summaries = re.search(r'class="graph-summaries">(.*?)</script>', page, re.S).group(1)
    assert json.loads(summaries)[0]["label"] == 'x"><script>alert(1)</script>:v1'


def test_lineage_svg_and_html_from_the_cli_without_tensorflow(branched, tmp_path):
    root, store = branched
    out = tmp_path / "graph.svg"
    result = run_cli_traced("lineage", "--format", "svg", "--out", str(out), "--store", str(store.root))
    assert result.returncode == 0, result.stderr
    assert tensorflow_imports(result) == [] and result.stdout == ""
    document = ElementTree.fromstring(out.read_text(encoding="utf-8"))
    assert len(document.findall(f"{SVG}g[@class='node version']")) == 11
    around = run_cli("lineage", "split:v2", "--format", "html", "--store", str(store.root))
    assert around.returncode == 0, around.stderr
    assert around.stdout.startswith("<!DOCTYPE html>") and 'data-key="split:v2"' in around.stdout
    assert 'data-key="model:v1"' not in around.stdout  # a branch of split:v1 only
    missing = run_cli("lineage", "model:v9", "--format", "svg", "--store", str(store.root))
    assert missing.returncode == 1 and missing.stderr.startswith("error: model:v9 does not exist")
    assert "Traceback" not in missing.stderr
    nowhere = run_cli("lineage", "--format", "svg", "--out", str(tmp_path / "no" / "g.svg"), "--store", str(store.root))
    assert nowhere.returncode == 1 and nowhere.stderr.count("\n") == 1
    assert nowhere.stderr.startswith(f"error: cannot write {tmp_path / 'no' / 'g.svg'}: its folder")


def test_an_empty_store_draws_a_picture_that_says_so(tmp_path):
    Store.open(tmp_path / "store", create=True)
    result = run_cli("lineage", "--format", "svg", "--store", str(tmp_path / "store"))
    assert result.returncode == 0, result.stderr
    assert draw.EMPTY_MESSAGE in ElementTree.fromstring(result.stdout).find(f"{SVG}text").text


def test_a_damaged_run_record_is_named_in_the_picture_not_a_crash(branched, tmp_path):
    import shutil

    root, store = branched
    copy = Store.open(shutil.copytree(store.root, tmp_path / "store"))
    graph = Graph.load(copy)
    victim = graph.resolve("model:v2").run
    copy.run_path(victim).write_text('{"id": ')
    entries = draw.describe(copy, graph, graph.all_versions())
    model = next(entry for entry in entries if entry["ref"] == "model:v2")
    assert str(copy.run_path(victim)) in model["problem"] and "params" not in model
    assert all("problem" not in entry for entry in entries if entry["run"] != victim)


def test_five_hundred_versions_lay_out_in_reasonable_time():
    """A graph the size of a busy store: 125 splits of one raw-data version, a model and predictions from
    each, an evaluation of each predictions version (501 versions, 376 runs)."""
    graph = Graph({}, {}, 0)

    def version(name, run):
        chain = graph.versions.setdefault(name, [])
        made = Version(name, len(chain) + 1, f"{len(chain) + 1:064x}", run, None, 1, 1)
        chain.append(made)
        return made

    def run(run_id, stage, inputs, outputs):
        graph.runs[run_id] = RunSummary(stage, "finished", None, None, None, [i.key for i in inputs],
                                        [o.key for o in outputs])
    raw = version("raw-data", "r0")
    run("r0", "ingest", [], [raw])
    for n in range(125):
        cut = version("split", f"s{n}")
        run(f"s{n}", "split", [raw], [cut])
        model, predictions = version("model", f"t{n}"), version("predictions", f"t{n}")
        run(f"t{n}", "train", [cut], [model, predictions])
        evaluation = version("eval", f"e{n}")
        run(f"e{n}", "evaluate", [predictions], [evaluation])
    entries = [{"ref": v.ref, "digest": v.digest, "made_by": graph.producer(v).stage, "run": v.run,
                "inputs": [graph.find(i.name, i.digest).ref for i in graph.producer(v).inputs]}
               for v in graph.all_versions()]
    assert len(entries) == 501
    started = time.perf_counter()
    picture = draw.lay_out(draw.picture(entries))
    seconds = time.perf_counter() - started
    print(f"\n501 versions, 376 runs laid out in {seconds:.2f} s", file=sys.stderr)
    assert len(picture.nodes) == 877 and seconds < 20
