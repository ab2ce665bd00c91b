#!/usr/bin/env python3
"""The command line: one subcommand per stage, plus the commands that look at the store.

    python pipeline.py ingest data/inaturalist_12K/train
    python pipeline.py run --config configs/demo.yaml
    python pipeline.py ls | show REF | alias REF NAME | lineage REF | why STAGE | verify | gc
    python pipeline.py table REF --filter 'x["truth"] != x["guess"]' | compare A B | report REF

Only `train` and `infer` (and `run` when it reaches them) import TensorFlow; every other
command starts in a fraction of a second. A user error prints one line and exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys

from lineage.errors import UserError

STAGE_COMMANDS = ("ingest", "split", "train", "infer", "evaluate")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the store is as it was before this run", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


# -- the stages ----------------------------------------------------------------------------

def cmd_stage(args) -> int:
    from lineage import runner
    from stages.config import stage_module

    config = _config(args)
    if args.command == "ingest" and args.source:
        config.sections["ingest"]["source"] = args.source
    store = _store(config, create=args.command == "ingest")
    result = runner.execute(store, stage_module(args.command), config.params(args.command), force=args.force,
                            aliases=args.alias, log=_logger(args), progress=_progress(args))
    _say_result(result)
    return 0


def cmd_run(args) -> int:
    """Run the configured stages in order, each only if something it depends on changed."""
    from lineage import runner
    from stages.config import stage_module

    config = _config(args)
    store = _store(config, create="ingest" in config.stages)
    for name in config.stages:
        result = runner.execute(store, stage_module(name), config.params(name), force=args.force,
                                log=_logger(args), progress=_progress(args))
        _say_result(result)
    return 0


def cmd_why(args) -> int:
    from lineage import runner
    from lineage.graph import Graph
    from stages.config import stage_module

    config = _config(args)
    store = _store(config)
    graph = Graph.load(store)
    stage = stage_module(args.stage)
    params = config.params(args.stage)
    the_plan = runner.plan(store, graph, stage, params)
    reuse = graph.finished_run_with_key(the_plan.cache_key)
    if reuse:
        outputs = ", ".join(graph.find(o["name"], o["digest"]).ref for o in reuse[1]["outputs"])
        print(f"{args.stage}: up to date ({outputs}, run {reuse[0]})")
        return 0
    print(f"{args.stage} would run:")
    for reason in runner.explain(store, graph, stage, params):
        print(f"  {reason}")
    return 0


def _say_result(result) -> None:
    refs = ", ".join(v.ref for v in result.outputs)
    print(f"{result.stage}: up to date, {refs}" if result.reused else f"{result.stage}: wrote {refs}")


# -- looking at the store ------------------------------------------------------------------

def cmd_ls(args) -> int:
    from lineage.graph import Graph
    from lineage.views import format_ls, list_versions

    rows = list_versions(Graph.load(_store(_config(args))), args.name)
    print(json.dumps(rows, indent=1) if args.json else format_ls(rows))
    return 0


def cmd_show(args) -> int:
    from lineage.graph import Graph
    from lineage.views import describe_version, format_show

    store = _store(_config(args))
    graph = Graph.load(store)
    summary = describe_version(store, graph, graph.resolve(args.ref))
    print(json.dumps(summary, indent=1) if args.json else format_show(summary))
    return 0


def cmd_alias(args) -> int:
    from lineage.graph import Graph
    from lineage.runner import set_alias

    store = _store(_config(args))
    version = Graph.load(store).resolve(args.ref)
    set_alias(store, version, args.alias)
    print(f"{version.name}:{args.alias} → {version.ref}")
    return 0


def cmd_lineage(args) -> int:
    from lineage.graph import Graph
    from lineage.views import export_graph, lineage_tree

    store = _store(_config(args))
    if args.rebuild:
        with store.locked():
            graph = Graph.rebuild(store)
            graph.save(store)
        print(f"lineage.json rebuilt from runs/ and manifests/: {len(graph.all_versions())} versions, "
              f"{len(graph.runs)} runs")
        return 0
    graph = Graph.load(store)
    if args.format != "tree":
        print(export_graph(graph, args.format))
    elif args.ref:
        print(lineage_tree(graph, graph.resolve(args.ref)))
    else:
        for version in graph.all_versions():
            print(lineage_tree(graph, version))
    return 0


def cmd_verify(args) -> int:
    from lineage.verify import verify

    report = verify(_store(_config(args)))
    for problem in report.problems:
        print(f"problem: {problem}")
    print(f"verify: {report.checked_objects:,} objects, {report.checked_manifests} manifests, "
          f"{report.checked_runs} runs checked; {len(report.problems)} problem(s)")
    garbage = report.garbage_objects + report.garbage_manifests + report.staging_leftovers
    if garbage:
        print(f"  {report.garbage_objects} unreferenced object(s), {report.garbage_manifests} orphan manifest(s), "
              f"{report.staging_leftovers} staging leftover(s) from interrupted runs: `pipeline.py gc` lists them")
    return 1 if report.problems else 0


def cmd_gc(args) -> int:
    from lineage.display import human_size
    from lineage.verify import collect_garbage

    result = collect_garbage(_store(_config(args)), delete=args.yes, grace_seconds=args.grace_minutes * 60)
    for kind in ("objects", "manifests", "staging"):
        for path in result[kind]:
            print(f"{'removed' if args.yes else 'would remove'} {kind[:-1] if kind != 'staging' else kind} {path}")
    total = sum(len(result[k]) for k in ("objects", "manifests", "staging"))
    verb = "removed" if args.yes else "unreferenced"
    print(f"gc: {total} item(s) {verb}, {human_size(result['bytes'])}"
          + ("" if args.yes or not total else "; run `pipeline.py gc --yes` to remove them"))
    return 0


# -- prediction tables and reports ----------------------------------------------------------

def cmd_table(args) -> int:
    from report.table import format_table, query_table

    frame = _predictions(args, args.ref)
    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    result = query_table(frame, filter=args.filter, sort=args.sort, descending=args.desc, group_by=args.group_by,
                         columns=columns, limit=args.limit)
    print(format_table(result, args.format), end="")
    return 0


def cmd_compare(args) -> int:
    from report.compare import compare_predictions, format_comparison

    comparison = compare_predictions(_predictions(args, args.ref_a), _predictions(args, args.ref_b),
                                     args.ref_a, args.ref_b, filter=args.filter)
    print(format_comparison(comparison, args.format, limit=args.limit), end="")
    return 0


def cmd_report(args) -> int:
    """Evaluate the first predictions version (through the cache) and write its report.html."""
    from pathlib import Path

    from lineage import runner
    from stages import evaluate

    config = _config(args)
    store = _store(config)
    config.sections["evaluate"].update(input=args.refs[0], across=args.refs[1:])
    if args.compare:
        config.sections["evaluate"].update(compare_with=args.compare)
    result = runner.execute(store, evaluate, config.params("evaluate"), force=args.force, log=_logger(args),
                            progress=_progress(args))
    version = result.outputs[0]
    manifest = store.read_manifest(version.name, version.digest)
    out = Path(args.out or f"reports/{version.name}-v{version.v}.html")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(store.read_object(manifest["files"]["report.html"]["digest"]))
    _say_result(result)
    print(f"report: {out.resolve()}")
    return 0


def cmd_demo_data(args) -> int:
    from pathlib import Path

    from demo import data

    out = Path(args.out)
    if args.source == "synthetic":
        counts = data.synthetic(out, args.per_class)
    else:
        counts = data.fashion_mnist(out, args.per_class, args.source)
    print(f"demo-data: {sum(counts.values()):,} images in {len(counts)} class folders under {out}")
    return 0


def _predictions(args, ref: str):
    from lineage.graph import Graph
    from lineage.runner import Artifact
    from stages.predictions import read_predictions

    store = _store(_config(args))
    graph = Graph.load(store)
    version = graph.resolve(ref, expected_name="predictions")
    return read_predictions(Artifact.open(store, graph, version))


# -- plumbing --------------------------------------------------------------------------------

def _config(args):
    from stages.config import load_config

    return load_config(args.config, args.set, args.store)


def _store(config, create: bool = False):
    from lineage.store import Store

    return Store.open(config.store, create=create)


def _progress(args) -> bool:
    """Progress bars only for a person watching a terminal, never in CI logs."""
    return not args.quiet and sys.stderr.isatty()


def _logger(args):
    return (lambda message: None) if args.quiet else print


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", help="YAML config file (configs/*.yaml)")
    common.add_argument("--set", action="append", default=[], metavar="STAGE.KEY=VALUE",
                        help="override a config key, e.g. --set split.seed=3 (repeatable)")
    common.add_argument("--store", help="artifact store folder (default: the config's store, else artifacts/)")
    common.add_argument("--quiet", "-q", action="store_true", help="print only the result line")

    parser = argparse.ArgumentParser(prog="pipeline.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name in STAGE_COMMANDS:
        sub = commands.add_parser(name, parents=[common], help=f"run the {name} stage")
        if name == "ingest":
            sub.add_argument("source", nargs="?", help="folder with one subfolder per class (else ingest.source)")
        sub.add_argument("--force", action="store_true", help="run even if an identical run is cached")
        sub.add_argument("--alias", action="append", default=[], help="also name the output version ALIAS")
        sub.set_defaults(handler=cmd_stage)

    sub = commands.add_parser("run", parents=[common], help="run the config's stages, skipping what is up to date")
    sub.add_argument("--force", action="store_true", help="rerun every stage")
    sub.set_defaults(handler=cmd_run)

    sub = commands.add_parser("why", parents=[common], help="say what changed since a stage's last run")
    sub.add_argument("stage", choices=STAGE_COMMANDS)
    sub.set_defaults(handler=cmd_why)

    sub = commands.add_parser("ls", parents=[common], help="list artifacts and their versions")
    sub.add_argument("name", nargs="?", help="only this artifact (raw-data, split, model, …)")
    sub.add_argument("--json", action="store_true")
    sub.set_defaults(handler=cmd_ls)

    sub = commands.add_parser("show", parents=[common], help="summarise one version")
    sub.add_argument("ref", help="name:vN, name:latest, name:ALIAS or a digest prefix")
    sub.add_argument("--json", action="store_true")
    sub.set_defaults(handler=cmd_show)

    sub = commands.add_parser("alias", parents=[common], help="give a version a name, e.g. best")
    sub.add_argument("ref", help="the version, e.g. model:v3")
    sub.add_argument("alias", help="the name; it moves off any other version that had it")
    sub.set_defaults(handler=cmd_alias)

    sub = commands.add_parser("lineage", parents=[common], help="ancestors and descendants; export the graph")
    sub.add_argument("ref", nargs="?")
    sub.add_argument("--format", choices=("tree", "dot", "mermaid", "json"), default="tree")
    sub.add_argument("--rebuild", action="store_true", help="rebuild lineage.json from runs/ and manifests/")
    sub.set_defaults(handler=cmd_lineage)

    sub = commands.add_parser("verify", parents=[common], help="re-hash objects, check manifests and the graph")
    sub.set_defaults(handler=cmd_verify)

    sub = commands.add_parser("gc", parents=[common], help="list (and with --yes remove) unreferenced objects")
    sub.add_argument("--yes", action="store_true", help="remove them")
    sub.add_argument("--grace-minutes", type=float, default=60.0,
                     help="keep anything younger than this, as a running stage may be staging it (default 60)")
    sub.set_defaults(handler=cmd_gc)

    sub = commands.add_parser("table", parents=[common], help="filter, sort and group a predictions table")
    sub.add_argument("ref", help="a predictions version, e.g. predictions:latest")
    sub.add_argument("--filter", help='W&B-style expression, e.g. \'x["truth"] = "Aves" and x["guess"] != "Aves"\'')
    sub.add_argument("--sort", help="column to sort by, e.g. score_Aves")
    sub.add_argument("--desc", action="store_true", help="sort descending")
    sub.add_argument("--group-by", help="truth (guesses per true class), guess, or any column")
    sub.add_argument("--columns", help="comma-separated columns to show")
    sub.add_argument("--limit", type=int, help="show at most N rows")
    sub.add_argument("--format", choices=("text", "csv", "json", "markdown"), default="text")
    sub.set_defaults(handler=cmd_table)

    sub = commands.add_parser("compare", parents=[common], help="compare two predictions versions image by image")
    sub.add_argument("ref_a")
    sub.add_argument("ref_b")
    sub.add_argument("--filter", help="expression over the joined rows (guess_a, guess_b, truth, …)")
    sub.add_argument("--limit", type=int, default=20, help="images listed per section (default 20)")
    sub.add_argument("--format", choices=("text", "json", "markdown", "csv"), default="text")
    sub.set_defaults(handler=cmd_compare)

    sub = commands.add_parser("report", parents=[common], help="evaluate predictions and write report.html")
    sub.add_argument("refs", nargs="+", metavar="REF",
                     help="predictions to report on; any more are points on the AP-across-runs plot")
    sub.add_argument("--compare", metavar="REF", help="predictions of another model on the same images, side by side")
    sub.add_argument("--out", help="where to write the HTML (default reports/eval-vN.html)")
    sub.add_argument("--force", action="store_true")
    sub.set_defaults(handler=cmd_report)

    sub = commands.add_parser("demo-data", help="write demo images as class folders")
    sub.add_argument("--out", default="data/fashion-mnist", help="folder to write (default data/fashion-mnist)")
    sub.add_argument("--per-class", type=int, default=300, help="images per class (default 300)")
    sub.add_argument("--source", choices=("auto", "debian", "keras", "synthetic"), default="auto",
                     help="Fashion-MNIST from Debian's package or Keras, or tiny synthetic images (smoke runs)")
    sub.set_defaults(handler=cmd_demo_data)
    return parser


if __name__ == "__main__":
    sys.exit(main())
