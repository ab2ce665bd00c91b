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

import _signal  # the C module under `signal`, loaded with Python; `signal` would first import enum, slowly
import os
import sys


def _interrupted_while_starting(signum, frame) -> None:
    """Ctrl-C while Python imports this command's code: nothing can have been written yet, so the one line
    lineage/interrupts.py says in that case, and exit at once (a KeyboardInterrupt here would be a traceback)."""
    sys.stderr.write("interrupted: nothing was committed; the store is as it was\n")
    sys.stderr.flush()
    os._exit(130)


if __name__ == "__main__":  # until main() runs; then Ctrl-C is a KeyboardInterrupt again (see the end)
    _signal.signal(_signal.SIGINT, _interrupted_while_starting)

import argparse  # noqa: E402
import json  # noqa: E402

from lineage.errors import UserError  # noqa: E402
from stages import STAGES  # noqa: E402

OPENED_STORES: list = []  # the stores this command opened, for naming one in an error that names no file


def main(argv: list[str] | None = None) -> int:
    from lineage.contract import WorkerDone
    from lineage.environment import describe_os_error
    from lineage.interrupts import describe_interrupt

    args = build_parser().parse_args(argv)
    _quiet_tensorflow(getattr(args, "verbose", False))
    try:
        return args.handler(args) or 0
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except WorkerDone as done:  # a distributed run's other worker: its part is done, the chief commits
        print(done)
        return 0
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
    from workflow.execute import run_one_stage

    config = _config(args)
    if args.command == "ingest" and args.source:
        config.sections["ingest"]["source"] = args.source
    result = run_one_stage(config, args.command, lambda create: _store(config, create=create), force=args.force,
                           aliases=args.alias, log=_logger(args), progress=_progress(args))
    _say_result(result)
    return 0


def cmd_run(args) -> int:
    """Run the configured stages in order, each only if something it depends on changed
    (workflow/execute.py: every stage's params are checked before the first starts)."""
    from workflow.execute import run_configured_stages

    config = _config(args)
    run_configured_stages(config, lambda create: _store(config, create=create), force=args.force,
                          log=_logger(args), progress=_progress(args), each=_say_result)
    return 0


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
    if args.out and args.format == "tree":
        raise UserError("--out writes an export: add --format svg, html, dot, mermaid or json")
    graph = Graph.load(store)
    if args.format in ("svg", "html"):
        _write_or_print(_graph_picture(store, graph, args.ref, args.format), args.out)
    elif args.format != "tree":
        _write_or_print(export_graph(graph, args.format), args.out)
    elif args.ref:
        print(lineage_tree(graph, graph.resolve(args.ref)))
    else:
        for version in graph.all_versions():
            print(lineage_tree(graph, version))
    return 0


def _graph_picture(store, graph, ref: str | None, fmt: str) -> str:
    """The whole store's graph, or the part around REF, as SVG or a self-contained HTML page."""
    from lineage import draw

    versions = draw.around(graph, graph.resolve(ref)) if ref else graph.all_versions()
    picture = draw.lay_out(draw.picture(draw.describe(store, graph, versions)))
    if fmt == "svg":
        return draw.svg(picture)
    return draw.html_page(picture, f"Lineage around {ref}" if ref else f"Lineage of {store.root}")


def _write_or_print(text: str, out: str | None) -> None:
    if out is None:
        print(text)
        return
    try:
        with open(out, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    except FileNotFoundError:
        raise UserError(f"cannot write {out}: its folder {os.path.dirname(os.path.abspath(out))} does not exist; "
                        "create it or give --out another path") from None


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
    for line in garbage.pack_lines():
        print(line)
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


# -- remotes: push and pull -----------------------------------------------------------------

def cmd_remote(args) -> int:
    from lineage import remote

    store = _store(_config(args), create=args.action == "add")  # a new store can be filled by a pull
    if args.action == "add":
        if not args.name or not args.url:
            raise UserError("remote add needs a NAME and a URL: `pipeline.py remote add NAME s3://BUCKET/PREFIX` "
                            "or a folder path")
        added = remote.add_remote(store.root, args.name, args.url, args.endpoint_url, args.default)
        print(f"remote {added.name}: {added.url}" + (f" (endpoint {added.endpoint_url})" if added.endpoint_url else ""))
    elif args.action == "remove":
        if not args.name:
            raise UserError("remote remove needs the NAME of a remote: see `pipeline.py remote list`")
        remote.remove_remote(store.root, args.name)
        print(f"remote {args.name} removed (nothing on it was touched)")
    else:
        remotes, default = remote.load_config(store.root)
        for name, item in sorted(remotes.items()):
            endpoint = f"  endpoint {item.endpoint_url}" if item.endpoint_url else ""
            print(f"{name}{' (default)' if name == default else ''}  {item.url}{endpoint}")
        if not remotes:
            print("no remotes: add one with `pipeline.py remote add NAME URL --default`")
    return 0


def cmd_sync(args) -> int:
    """push or pull: what the other side lacks, in commit order (lineage/sync.py)."""
    from lineage import sync
    from lineage.remote import open_remote

    if args.jobs < 1:
        raise UserError(f"--jobs is {args.jobs}: give 1 or more")
    store = _store(_config(args))
    target = open_remote(store.root, args.remote, workers=args.jobs)
    if args.command == "push":
        transfer = sync.push(store, target, args.refs, workers=args.jobs, progress=_progress(args))
    else:
        transfer = sync.pull(store, target, args.refs, with_ancestors=args.with_ancestors, workers=args.jobs,
                             progress=_progress(args))
    print(transfer.summary())
    return 0


# -- prediction tables and reports ----------------------------------------------------------

def cmd_table(args) -> int:
    from tables.table import format_table, query_table

    frame, grouping = _table_frame(args, args.ref)
    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    result = query_table(frame, filter=args.filter, sort=args.sort, descending=args.desc, group_by=args.group_by,
                         columns=columns, limit=args.limit, **grouping)
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
    if _dataset_version(store, args.refs[0]) is not None:
        return _report_dataset(args, config, store)
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


def _dataset_version(store, ref: str):
    """The raw-data or split version `ref` names, or None for any other (a predictions version's report)."""
    from lineage.graph import Graph
    from tables.datasets import DATASET_NAMES

    version = Graph.load(store).resolve(ref)
    return version if version.name in DATASET_NAMES else None


def _report_dataset(args, config, store) -> int:
    """A raw-data or split version's page (report/dataset.py), written to --out; nothing goes into the store
    but thumbnails in its cache, which are evaluate's (same size setting, same files)."""
    from pathlib import Path

    from lineage.atomic import write_atomic
    from lineage.contract import Artifact, ViewContext
    from lineage.graph import Graph
    from report.dataset import render_dataset_page
    from stages import evaluate
    from tables import datasets

    graph = Graph.load(store)
    version = graph.resolve(args.refs[0])
    if len(args.refs) > 1 or args.compare:
        raise UserError(f"{args.refs[0]} is a {version.name} version: a dataset page shows one version; "
                        f"drop the other versions and --compare (they are for predictions)")
    out = Path(args.out or f"reports/{version.name}-v{version.v}.html")
    _check_report_path(out)
    artifact = Artifact.open(store, graph, version)
    params = config.params("evaluate")

    context = ViewContext(store, "report", log=_logger(args), progress=False)
    page = render_dataset_page(title=f"Dataset {version.ref}", ref=version.ref,
                               frame=datasets.dataset_frame(artifact),
                               classes=datasets.dataset_grouping(artifact)["classes"],
                               thumbnails=lambda ids: evaluate.thumbnails(artifact, ids, params, context))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, page.encode("utf-8"), durable=False)
    except OSError as error:
        raise UserError(f"cannot write the dataset page to {out} ({error.strerror}): pass --out with a writable "
                        "file path") from None
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


def _table_frame(args, ref: str):
    """What `table` reads: a predictions table, or a raw-data or split version's images (tables/datasets.py)
    with the group-by and class order of a dataset."""
    from lineage.contract import Artifact
    from lineage.graph import Graph
    from tables import datasets
    from tables.predictions import read_predictions

    store = _store(_config(args))
    graph = Graph.load(store)
    version = graph.resolve(ref)
    if version.name not in ("predictions",) + datasets.DATASET_NAMES:
        raise UserError(f"{ref} is a {version.name} version: `table` reads predictions, raw-data and split versions, "
                        "e.g. `pipeline.py table split:latest --group-by split`")
    artifact = Artifact.open(store, graph, version)
    if datasets.is_dataset(artifact):
        return datasets.dataset_frame(artifact), datasets.dataset_grouping(artifact)
    return read_predictions(artifact), {}


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
    sub.add_argument("ref", nargs="?", help="only the part around this version (tree, svg, html)")
    sub.add_argument("--format", choices=("tree", "dot", "mermaid", "json", "svg", "html"), default="tree",
                     help="svg: the graph as a picture; html: the picture with click-to-summary, one file")
    sub.add_argument("--out", metavar="FILE", help="write the export here instead of printing it")
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

    sub = commands.add_parser("remote", parents=[common], help="add, list or remove remotes (S3 or a shared folder)")
    sub.add_argument("action", choices=("add", "list", "remove"))
    sub.add_argument("name", nargs="?", help="the remote's name, e.g. team")
    sub.add_argument("url", nargs="?", help="s3://BUCKET/PREFIX, or a folder (/mnt/team-store, file:///…)")
    sub.add_argument("--default", action="store_true", help="push and pull use it without --remote")
    sub.add_argument("--endpoint-url", help="an S3-compatible server (MinIO, Ceph, R2): http(s)://HOST[:PORT]")
    sub.set_defaults(handler=cmd_remote)

    for name, verb in (("push", "upload what the remote lacks: objects, then manifests, then run records"),
                       ("pull", "download versions from the remote, checking every object's hash")):
        sub = commands.add_parser(name, parents=[common], help=verb)
        sub.add_argument("refs", nargs="*", metavar="REF",
                         help="versions (default: all), with their ancestors' run records and manifests"
                              + (" (objects too with --with-ancestors)" if name == "pull" else " and objects"))
        sub.add_argument("--remote", "-r", help="the remote's name (default: the store's default remote)")
        sub.add_argument("--jobs", "-j", type=int, default=16, help="parallel transfers (default 16)")
        if name == "pull":
            sub.add_argument("--with-ancestors", action="store_true",
                             help="also fetch the objects of the versions they were made from")
        sub.set_defaults(handler=cmd_sync)

    sub = commands.add_parser("table", parents=[common],
                              help="filter, sort and group a predictions table or a dataset version's images")
    sub.add_argument("ref", help="a predictions, raw-data or split version, e.g. predictions:latest, split:v2")
    sub.add_argument("--filter", help='W&B-style expression, e.g. \'x["truth"] = "Aves" and x["guess"] != "Aves"\'')
    sub.add_argument("--sort", help="column to sort by, e.g. score_Aves")
    sub.add_argument("--desc", action="store_true", help="sort descending")
    sub.add_argument("--group-by", help="truth (guesses per true class), guess, split or label (a dataset's "
                     "split x class counts), or any column")
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

    sub = commands.add_parser("report", parents=[common],
                              help="evaluate predictions and write report.html, or a raw-data or split version's page")
    sub.add_argument("refs", nargs="+", metavar="REF",
                     help="predictions to report on (any more are points on the AP-across-runs plot), or one "
                     "raw-data or split version: its split x class counts and image previews")
    sub.add_argument("--compare", metavar="REF", help="predictions of another model on the same images, side by side")
    sub.add_argument("--out", help="where to write the HTML (default reports/eval-vN.html, reports/split-vN.html)")
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

    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = main()
        # The command's work is done and said. A Ctrl-C from here on changes nothing, and Python's
        # teardown puts SIGINT back to the default, which would turn this exit status into a kill.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except KeyboardInterrupt:  # just as main() started or returned
        from lineage.interrupts import describe_interrupt

        print(describe_interrupt(), file=sys.stderr)
        code = 130
    sys.exit(code)
