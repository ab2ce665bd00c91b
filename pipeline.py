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
import os
import sys

from lineage.errors import UserError
from stages import STAGES

OPENED_STORES: list = []  # the stores this command opened, for naming one in an error that names no file


def main(argv: list[str] | None = None) -> int:
    from lineage.environment import describe_os_error
    from lineage.interrupts import describe_interrupt

    args = build_parser().parse_args(argv)
    _quiet_tensorflow(getattr(args, "verbose", False))
    try:
        return args.handler(args) or 0
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(describe_interrupt(), file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as error:  # a read-only or full disk, a folder where a file should be: one line
        message = describe_os_error(error, OPENED_STORES)
        if message is None or getattr(args, "verbose", False):
            raise
        print(f"error: {message}", file=sys.stderr)
        return 1


def _quiet_tensorflow(verbose: bool) -> None:
    """TensorFlow's C++ start-up lines (oneDNN, CPU features, absl) only with --verbose. Set before
    TensorFlow is imported, and never over a level the user chose; models/quiet.py hides the rest."""
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


# -- the stages ----------------------------------------------------------------------------

def cmd_stage(args) -> int:
    from lineage import runner
    from stages import load_stage

    config = _config(args)
    if args.command == "ingest" and args.source:
        config.sections["ingest"]["source"] = args.source
    params = config.check([args.command])[args.command]
    store = _store(config, create=args.command == "ingest")
    result = runner.execute(store, load_stage(args.command), params, force=args.force,
                            aliases=args.alias, log=_logger(args), progress=_progress(args))
    _say_result(result)
    return 0


def cmd_run(args) -> int:
    """Run the configured stages in order, each only if something it depends on changed.

    Every stage's params are checked before the first starts, and the class names later stages
    use as soon as the data's classes are known: a config that cannot succeed fails in seconds."""
    from lineage import runner
    from lineage.graph import Graph
    from stages import load_stage

    config = _config(args)
    params = config.check(config.stages)
    store = _store(config, create="ingest" in config.stages)
    first = load_stage(config.stages[0])
    if config.stages[0] != "ingest":  # its inputs exist already: their classes are known now
        graph = Graph.load(store)
        inputs = [graph.resolve(ref) for ref in first.input_refs(params[config.stages[0]]).values()]
        _check_known_classes(store, config, config.stages, inputs)
    for position, name in enumerate(config.stages):
        result = runner.execute(store, load_stage(name), params[name], force=args.force,
                                log=_logger(args), progress=_progress(args))
        _say_result(result)
        _check_known_classes(store, config, config.stages[position + 1:], result.outputs)
    return 0


def _check_known_classes(store, config, stages: list[str], versions) -> None:
    """Check the later stages' class names against the first of these versions that has classes."""
    if not config.class_checkers(stages):
        return  # nothing later names classes: no manifest to read
    for version in versions:
        classes = store.read_manifest(version.key).meta.get("classes")
        if classes:
            config.check_classes(stages, classes, version.ref)
            return


def cmd_why(args) -> int:
    from lineage.graph import Graph
    from lineage.plan import plan
    from lineage.why import explain
    from stages import load_stage

    config = _config(args)
    store = _store(config)
    graph = Graph.load(store)
    stage = load_stage(args.stage)
    params = config.check([args.stage])[args.stage]
    the_plan = plan(graph, stage, params)
    reuse = graph.finished_run_with_key(the_plan.cache_key)
    if reuse:
        outputs = ", ".join(graph.find(o.name, o.digest).ref for o in reuse[1].outputs)
        print(f"{args.stage}: up to date ({outputs}, run {reuse[0]})")
        return 0
    print(f"{args.stage} would run:")
    for reason in explain(store, graph, stage, params):
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
        from lineage.repair import rebuild_lineage

        for line in rebuild_lineage(store):
            print(line)
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

    store = _store(_config(args))
    report = verify(store)
    for problem in report.problems:
        print(f"problem: {problem}")
    print(f"verify: {report.checked_objects:,} objects, {report.checked_manifests} manifests, "
          f"{report.checked_runs} runs checked; {len(report.problems)} problem(s)")
    garbage = report.garbage_objects + report.garbage_manifests + report.staging_leftovers
    if garbage:
        print(f"  {report.garbage_objects} unreferenced object(s), {report.garbage_manifests} orphan manifest(s), "
              f"{report.staging_leftovers} staging leftover(s) from interrupted runs: `pipeline.py gc` lists them")
    if args.repair and (report.damaged or report.graph_damaged):
        from lineage.repair import repair

        lines = repair(store, report)
        for line in lines:
            print(f"repair: {line}")
        return 1 if any(line.startswith("next:") for line in lines) else 0
    if report.problems and not args.repair and report.damaged:
        print("  `pipeline.py verify --repair` moves the damaged files to quarantine/ (nothing is deleted)")
    return 1 if report.problems else 0


def cmd_gc(args) -> int:
    import math

    from lineage.display import human_size
    from lineage.gc import collect_garbage

    if not math.isfinite(args.grace_minutes) or args.grace_minutes < 0:
        raise UserError(f"--grace-minutes is {args.grace_minutes}: give 0 or more minutes")
    garbage = collect_garbage(_store(_config(args)), delete=args.yes, grace_seconds=args.grace_minutes * 60,
                              wait=args.wait, log=lambda message: print(message, file=sys.stderr))
    verb = "removed" if args.yes else "would remove"
    for kind, paths in (("object", garbage.objects), ("manifest", garbage.manifests), ("staging", garbage.staging)):
        for path in paths:
            print(f"{verb} {kind} {path}")
    for record in garbage.stale_records:
        print(f"{verb} stale in-progress record {record.path} (a run of {record.describe()} that was killed)")
    for item in garbage.foreign:
        print(f"left alone: {item}")
    for item in garbage.failed:
        print(f"could not remove {item}")
    if garbage.in_progress:
        print(f"note: {len(garbage.in_progress)} run(s) in progress: "
              + "; ".join(r.describe() for r in garbage.in_progress)
              + ": what they are staging may be listed; `gc --yes` waits for them with --wait")
    print(f"gc: {garbage.count} item(s) {'removed' if args.yes else 'unreferenced'}, {human_size(garbage.bytes)}"
          + ("" if args.yes or not garbage.count else "; run `pipeline.py gc --yes` to remove them"))
    if garbage.failed:
        raise UserError(f"{len(garbage.failed)} item(s) could not be removed, first {garbage.failed[0]}: "
                        "check the store's permissions and run gc again")
    return 0


# -- prediction tables and reports ----------------------------------------------------------

def cmd_table(args) -> int:
    from tables.table import format_table, query_table

    frame = _predictions(args, args.ref)
    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    result = query_table(frame, filter=args.filter, sort=args.sort, descending=args.desc, group_by=args.group_by,
                         columns=columns, limit=args.limit)
    print(format_table(result, args.format), end="")
    return 0


def cmd_compare(args) -> int:
    from tables.compare import compare_predictions, format_comparison

    comparison = compare_predictions(_predictions(args, args.ref_a), _predictions(args, args.ref_b),
                                     args.ref_a, args.ref_b, filter=args.filter)
    print(format_comparison(comparison, args.format, limit=args.limit), end="")
    return 0


def cmd_report(args) -> int:
    """Evaluate the first predictions version (through the cache) and write its report.html."""
    from pathlib import Path

    from lineage import runner
    from stages import evaluate

    if args.out:  # before evaluating: a bad --out should not cost an evaluation first
        _check_report_path(Path(args.out))
    config = _config(args)
    store = _store(config)
    config.sections["evaluate"].update(input=args.refs[0], across=args.refs[1:])
    if args.compare:
        config.sections["evaluate"].update(compare_with=args.compare)
    result = runner.execute(store, evaluate, config.params("evaluate"), force=args.force, log=_logger(args),
                            progress=_progress(args))
    version = result.outputs[0]
    report = store.read_manifest(version.key).file("report.html")
    out = Path(args.out or f"reports/{version.name}-v{version.v}.html")
    _check_report_path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(store.read_object(report.digest))
    except OSError as error:
        raise UserError(f"cannot write the report to {out} ({error.strerror}): {version.ref} is in the store; "
                        "pass --out with a writable file path") from None
    _say_result(result)
    print(f"report: {out.resolve()}")
    return 0


def _check_report_path(out) -> None:
    if out.is_dir():
        raise UserError(f"--out {out} is a folder: name the HTML file to write, e.g. {out / 'report.html'}")
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise UserError(f"--out {out} cannot be written: {blocking} is a file, not a folder; pass another path")


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
    from lineage.contract import Artifact
    from tables.predictions import read_predictions

    store = _store(_config(args))
    graph = Graph.load(store)
    version = graph.resolve(ref, expected_name="predictions")
    return read_predictions(Artifact.open(store, graph, version))


# -- plumbing --------------------------------------------------------------------------------

def _config(args):
    from workflow.config import load_config

    return load_config(args.config, args.set, args.store)


def _store(config, create: bool = False):
    from lineage.store import Store

    store = Store.open(config.store, create=create)
    OPENED_STORES.append(store.root)
    return store


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
    common.add_argument("--verbose", action="store_true",
                        help="also show TensorFlow's start-up lines, and the traceback behind a disk error")

    parser = argparse.ArgumentParser(prog="pipeline.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name in STAGES:
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
    sub.add_argument("stage", choices=STAGES)
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
    sub.add_argument("--repair", action="store_true",
                     help="move damaged files to quarantine/ (nothing is deleted), rebuild lineage.json, "
                          "and say which stage to re-run")
    sub.set_defaults(handler=cmd_verify)

    sub = commands.add_parser("gc", parents=[common], help="list (and with --yes remove) unreferenced objects")
    sub.add_argument("--yes", action="store_true", help="remove them")
    sub.add_argument("--grace-minutes", type=float, default=60.0,
                     help="also keep anything written, linked or renamed within this many minutes, a second line "
                          "of defence: runs in progress are protected by a lock, not by this (default 60)")
    sub.add_argument("--wait", action="store_true",
                     help="with runs in progress, wait for them to finish instead of failing at once")
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
    import signal

    try:
        code = main()
        # The command's work is done and said. A Ctrl-C from here on changes nothing, and Python's
        # teardown puts SIGINT back to the default, which would turn this exit status into a kill.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except KeyboardInterrupt:  # while Python was still importing, or just as main() returned
        from lineage.interrupts import describe_interrupt

        print(describe_interrupt(), file=sys.stderr)
        code = 130
    sys.exit(code)
