"""The artifact graph as a picture: `lineage --format svg|html` and the report's lineage figure.

What is drawn is a list of version entries (`describe`): each names its digest, the run that made
it, that run's inputs and params, and its counts. The CLI describes the whole store or the part
around one version (`around`); the evaluation report describes the ancestry of the predictions it
shows (stages/evaluate.py). Both draw the entries the same way (`picture`, `figure_html`), so the
two can never disagree about what a node says.

The layout is grandalf's Sugiyama (the layered layout `dvc dag` uses, pure Python): it orders
nodes within layers to cut crossings and places them (Brandes-Köpf). grandalf stacks layers top
to bottom; lineage reads left to right, so its axes are swapped here, node sizes included. Edges
follow grandalf's route (through its dummy points for edges that skip layers), drawn as curves
with horizontal tangents. Every name comes from the store and is escaped where it is written.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

from lineage.display import human_size
from lineage.errors import UserError
from lineage.graph import Graph, Version
from lineage.store import Store

SCRIPT = Path(__file__).with_suffix(".js")  # click a node, read its summary: the page and the report share it
FONT = "12px ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace"
CHAR_WIDTH = 7.4  # a monospace 12px character, rounded up: a box is never narrower than its text
SMALL_CHAR_WIDTH = 6.2  # the same at 10px (digests, run ids, alias badges)
BOX_HEIGHT = 38
BADGE_HEIGHT = 15
BADGE_GAP = 4
NODE_GAP = 18  # between nodes of one layer (vertical)
LAYER_GAP = 56  # between layers (horizontal): room for the curves
COMPONENT_GAP = 36
MARGIN = 12
ORDERING_ROUNDS = 4  # grandalf's crossing-reduction sweeps; more moves little on these graphs
VALUE_LIMIT = 400  # characters of one summary value: a hostile record cannot bloat the page
ARTIFACT_COLOURS = {"raw-data": ("#f1f8ff", "#4a7ab8"), "split": ("#f3f0ff", "#7b61c9"),
                    "model": ("#eefbf1", "#2f8f4e"), "predictions": ("#fff8ec", "#c07a1a"),
                    "eval": ("#fff0f3", "#c2406a")}
OTHER_COLOURS = ("#f6f8fa", "#57606a")
EMPTY_MESSAGE = "no artifact versions yet: run `pipeline.py ingest FOLDER` or `make demo`"


@dataclass
class Node:
    key: str  # a version's ref, or "run:<id>"
    kind: str  # "version" or "run"
    label: str
    detail: str
    aliases: list[str]
    summary: list[tuple[str, str]]  # what a click (or a hover, in a plain .svg) shows
    colours: tuple[str, str] = OTHER_COLOURS
    x: float = 0.0  # the centre, once laid out
    y: float = 0.0

    @property
    def box_width(self) -> float:
        text = max(len(self.label) * CHAR_WIDTH, len(self.detail) * SMALL_CHAR_WIDTH) + 22
        return max(text * (1.3 if self.kind == "run" else 1.0), 86.0)  # an ellipse needs room at its ends

    @property
    def width(self) -> float:
        badges = sum(_badge_width(alias) + BADGE_GAP for alias in self.aliases) - BADGE_GAP
        return max(self.box_width, badges)

    @property
    def height(self) -> float:
        return BOX_HEIGHT + (BADGE_HEIGHT + BADGE_GAP if self.aliases else 0)


@dataclass
class Picture:
    nodes: list[Node]
    edges: list[tuple[int, int]]  # node indexes, from producer to product
    paths: list[list[tuple[float, float]]] = field(default_factory=list)  # one per edge, once laid out
    width: float = 0.0
    height: float = 0.0


# -- what is drawn --------------------------------------------------------------------------


def around(graph: Graph, version: Version) -> list[Version]:
    """The version, its ancestors and descendants, and every other input and output of the runs that
    link them (so each drawn run is drawn whole), in the graph's order."""
    chosen = {version.key}
    runs: set[str] = set()
    for upward in (True, False):
        todo = [version]
        while todo:
            current = todo.pop()
            links = ([(current.run, graph.producer(current))] if graph.producer(current)
                     else []) if upward else graph.consumers(current)
            for run_id, run in links:
                if run_id in runs:
                    continue
                runs.add(run_id)
                for item in (run.inputs if upward else run.outputs):
                    found = graph.find(item.name, item.digest)
                    if found is not None and found.key not in chosen:
                        chosen.add(found.key)
                        todo.append(found)
    for run_id in runs:
        run = graph.runs[run_id]
        chosen.update(item for item in run.inputs + run.outputs)
    return [v for v in graph.all_versions() if v.key in chosen]


def ancestors(graph: Graph, version: Version) -> list[Version]:
    """The version and every version it was made from, nearest first: what a report's figures rest on."""
    found, todo, seen = [], [version], set()
    while todo:
        current = todo.pop(0)
        if current.key in seen:
            continue
        seen.add(current.key)
        found.append(current)
        run = graph.producer(current)
        todo += [p for p in (graph.find(i.name, i.digest) for i in (run.inputs if run else [])) if p]
    return found


def describe(store: Store, graph: Graph, versions: list[Version]) -> list[dict]:
    """One entry per version: what its node says. A missing or damaged manifest or run record does not
    stop the picture: its entry says so, with the fix the store gives."""
    records: dict[str, object] = {}
    entries = []
    for version in versions:
        run = graph.producer(version)
        entry = {"ref": version.ref, "digest": version.digest, "made_by": run.stage if run else None,
                 "run": version.run, "inputs": [_ref(graph, i) for i in run.inputs] if run else [],
                 "created": version.created, "aliases": list(version.aliases), "entries": version.count,
                 "size": version.size}
        problems = []
        if version.run and version.run not in records:
            try:
                records[version.run] = store.read_run(version.run)
            except UserError as error:
                records[version.run] = None
                problems.append(str(error))
        record = records.get(version.run) if version.run else None
        if record is not None:
            entry["params"] = record.all_params if record.all_params is not None else record.params
        try:
            meta = store.read_manifest(version.key).meta
            counts = meta.get("counts", meta.get("class_counts"))
            if isinstance(counts, dict):
                entry["counts"] = counts
            if isinstance(meta.get("metrics"), dict):
                entry["metrics"] = meta["metrics"]
        except UserError as error:
            problems.append(str(error))
        if problems:
            entry["problem"] = " ".join(problems)
        entries.append(entry)
    return entries


def picture(entries: list[dict]) -> Picture:
    """Version nodes from the entries, a run node for each run that made one, and the edges between them.
    An input no entry describes (a hand-made list) still gets a node, saying it is not described here."""
    nodes: list[Node] = []
    index: dict[str, int] = {}

    def add(node: Node) -> int:
        if node.key not in index:
            index[node.key] = len(nodes)
            nodes.append(node)
        return index[node.key]

    for entry in entries:
        add(_version_node(entry))
    runs: dict[str, list[dict]] = {}
    for entry in entries:
        if entry.get("run"):
            runs.setdefault(str(entry["run"]), []).append(entry)
    edges = []
    for run_id, outputs in sorted(runs.items()):
        made = add(_run_node(run_id, outputs))
        for ref in outputs[0].get("inputs") or []:
            ref = str(ref)
            if ref not in index:
                add(Node(ref, "version", ref, "", [], [("note", "not described in this view")],
                         _colours(ref.partition(":")[0])))
            edges.append((index[ref], made))
        edges += [(made, index[str(entry.get("ref", ""))]) for entry in outputs]
    return Picture(nodes, sorted(set(edges)))


def _version_node(entry: dict) -> Node:
    ref, digest = str(entry.get("ref", "")), str(entry.get("digest", ""))
    made = entry.get("made_by")
    lines = [("digest", digest), ("aliases", ", ".join(map(str, entry.get("aliases") or [])) or "none"),
             ("made by", f"{made} run {entry.get('run')}" if made else "not recorded"),
             ("inputs", ", ".join(map(str, entry.get("inputs") or [])) or "none")]
    if entry.get("params") is not None:
        lines.append(("params", _params(entry["params"])))
    if entry.get("entries") is not None:
        lines.append(("entries", f"{entry['entries']:,}" if isinstance(entry["entries"], int) else
                      str(entry["entries"])))
    if isinstance(entry.get("size"), int):
        lines.append(("size", human_size(entry["size"])))
    if entry.get("counts") is not None:
        lines.append(("counts", _counts(entry["counts"])))
    if entry.get("metrics") is not None:
        lines.append(("metrics", _params(entry["metrics"])))
    if entry.get("created"):
        lines.append(("created", str(entry["created"])))
    if entry.get("problem"):
        lines.append(("problem", str(entry["problem"])))
    aliases = [str(alias) for alias in entry.get("aliases") or []]
    return Node(ref, "version", ref, digest[:12], aliases, _bounded(lines), _colours(ref.partition(":")[0]))


def _run_node(run_id: str, outputs: list[dict]) -> Node:
    first = outputs[0]
    stage = str(first.get("made_by") or "run")
    lines = [("run", run_id), ("stage", stage),
             ("inputs", ", ".join(map(str, first.get("inputs") or [])) or "none"),
             ("outputs", ", ".join(str(entry.get("ref", "")) for entry in outputs))]
    if first.get("params") is not None:
        lines.append(("params", _params(first["params"])))
    # A run id is its start time and a random suffix (lineage/provenance.py): the suffix tells runs apart.
    return Node(f"run:{run_id}", "run", stage, run_id.rpartition("-")[2][:12], [], _bounded(lines))


def _params(params) -> str:
    if not isinstance(params, dict):
        return json.dumps(params, default=str)
    return "\n".join(f"{key}: {json.dumps(value, default=str, ensure_ascii=False)}"
                     for key, value in sorted(params.items(), key=lambda item: str(item[0])))


def _counts(counts) -> str:
    if not isinstance(counts, dict):
        return json.dumps(counts, default=str)
    if all(isinstance(value, dict) for value in counts.values()):  # a split: {split: {class: n}}
        return "\n".join(f"{name}: {_counts(inner)}" for name, inner in counts.items())
    return ", ".join(f"{name} {value:,}" if isinstance(value, int) else f"{name} {value}"
                     for name, value in counts.items())


def _bounded(lines: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(label, text if len(text) <= VALUE_LIMIT else text[:VALUE_LIMIT] + " …") for label, text in lines]


def _colours(artifact: str) -> tuple[str, str]:
    return ARTIFACT_COLOURS.get(artifact, OTHER_COLOURS)


def _ref(graph: Graph, item) -> str:
    version = graph.find(item.name, item.digest)
    return version.ref if version else item.short


# -- layout ---------------------------------------------------------------------------------


class _View:
    """What grandalf reads and writes on a vertex: its size and, once laid out, its centre."""

    def __init__(self, w: float, h: float):
        self.w, self.h, self.xy = w, h, (0.0, 0.0)


class _Route:
    """What grandalf writes on an edge: the points it passes through (the ends' centres, then dummies)."""

    points: list = []

    def setpath(self, points) -> None:
        self.points = list(points)


def lay_out(drawing: Picture) -> Picture:
    """Place every node and route every edge, left to right; disconnected parts stacked top to bottom."""
    from grandalf.graphs import Edge, Graph as LayoutGraph, Vertex
    from grandalf.layouts import SugiyamaLayout

    vertices = [Vertex(i) for i in range(len(drawing.nodes))]
    for vertex, node in zip(vertices, drawing.nodes):
        vertex.view = _View(w=node.height, h=node.width)  # grandalf's layers run down its y: ours run along x
    links = [Edge(vertices[a], vertices[b]) for a, b in drawing.edges]
    for link in links:
        link.view = _Route()
    top, width = float(MARGIN), 0.0
    for component in LayoutGraph(vertices, links).C:
        layout = SugiyamaLayout(component)
        layout.xspace, layout.yspace = NODE_GAP, LAYER_GAP
        layout.init_all(roots=[v for v in component.sV if not v.e_in()] or None)
        layout.draw(ORDERING_ROUNDS)
        placed = list(component.sV)
        left = min(v.view.xy[1] - v.view.h / 2 for v in placed)
        upper = min(v.view.xy[0] - v.view.w / 2 for v in placed)
        for vertex in placed:
            node = drawing.nodes[vertex.data]
            node.x = vertex.view.xy[1] - left + MARGIN
            node.y = vertex.view.xy[0] - upper + top
        for link in component.sE:
            link.view.points = [(y - left + MARGIN, x - upper + top) for x, y in link.view.points]
        top = max(n.y + n.height / 2 for n in (drawing.nodes[v.data] for v in placed)) + COMPONENT_GAP
        width = max([width] + [drawing.nodes[v.data].x + drawing.nodes[v.data].width / 2 for v in placed])
    drawing.paths = [link.view.points for link in links]
    drawing.width = width + MARGIN
    drawing.height = top - COMPONENT_GAP + MARGIN if drawing.nodes else 0.0
    return drawing


# -- SVG and HTML -----------------------------------------------------------------------------


def svg(drawing: Picture) -> str:
    """The laid-out picture as one standalone SVG document (a node's <title> holds its summary)."""
    if not drawing.nodes:
        width = len(EMPTY_MESSAGE) * CHAR_WIDTH + 2 * MARGIN
        return (f'<svg xmlns="http://www.w3.org/2000/svg" class="lineage-svg" width="{width:.0f}" height="40" '
                f'viewBox="0 0 {width:.0f} 40"><text x="{MARGIN}" y="24" font-family="monospace" '
                f'font-size="12">{_e(EMPTY_MESSAGE)}</text></svg>')
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="lineage-svg" width="{drawing.width:.0f}" '
             f'height="{drawing.height:.0f}" viewBox="0 0 {drawing.width:.0f} {drawing.height:.0f}" '
             f'role="img" aria-label="artifact lineage graph">',
             "<style>"
             f".lineage-svg text {{ font: {FONT}; fill: #1f2328; }} "
             ".lineage-svg .detail, .lineage-svg .badge text { font-size: 10px; fill: #57606a; } "
             ".lineage-svg .edge { fill: none; stroke: #8c959f; stroke-width: 1.4; } "
             ".lineage-svg .node { cursor: pointer; } "
             ".lineage-svg .node:focus { outline: none; } "
             ".lineage-svg .node.selected > rect, .lineage-svg .node.selected > ellipse, "
             ".lineage-svg .node:focus > rect, .lineage-svg .node:focus > ellipse { stroke-width: 3; } "
             ".lineage-svg .run ellipse { fill: #fff8c5; stroke: #9a6700; stroke-dasharray: 4 2; } "
             ".lineage-svg .badge rect { fill: #ddf4ff; stroke: #54aeff; }"
             "</style>",
             '<defs><marker id="lineage-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
             'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#8c959f"/>'
             "</marker></defs>"]
    for (start, end), points in zip(drawing.edges, drawing.paths):
        parts.append(f'<path class="edge" data-from="{start}" data-to="{end}" d="'
                     f'{_curve(points, drawing.nodes[start], drawing.nodes[end])}" marker-end="url(#lineage-arrow)"/>')
    for number, node in enumerate(drawing.nodes):
        parts.append(_node_svg(number, node))
    parts.append("</svg>")
    return "\n".join(parts)


def _curve(points: list[tuple[float, float]], start: Node, end: Node) -> str:
    """Through grandalf's points, leaving the right side of the producer and entering the left side of the
    product (the other way round for an edge grandalf had to turn back to break a cycle)."""
    if len(points) < 2:
        points = [(start.x, start.y), (end.x, end.y)]
    forward = points[1][0] >= points[0][0]
    first = (start.x + (start.box_width / 2 if forward else -start.box_width / 2), start.y)
    forward = points[-1][0] >= points[-2][0]
    last = (end.x - (end.box_width / 2 if forward else -end.box_width / 2), end.y)
    points = [first] + list(points[1:-1]) + [last]
    path = [f"M{points[0][0]:.1f},{points[0][1]:.1f}"]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        bend = (x1 - x0) / 2
        path.append(f"C{x0 + bend:.1f},{y0:.1f} {x1 - bend:.1f},{y1:.1f} {x1:.1f},{y1:.1f}")
    return " ".join(path)


def _node_svg(number: int, node: Node) -> str:
    title = "\n".join([node.label] + [f"{label}: {text}" for label, text in node.summary])
    box_top = node.y - node.height / 2
    centre = box_top + BOX_HEIGHT / 2
    if node.kind == "run":
        shape = (f'<ellipse cx="{node.x:.1f}" cy="{centre:.1f}" rx="{node.box_width / 2:.1f}" '
                 f'ry="{BOX_HEIGHT / 2:.1f}"/>')
    else:
        fill, stroke = node.colours
        shape = (f'<rect x="{node.x - node.box_width / 2:.1f}" y="{box_top:.1f}" width="{node.box_width:.1f}" '
                 f'height="{BOX_HEIGHT}" rx="7" fill="{fill}" stroke="{stroke}" stroke-width="1.4"/>')
    texts = (f'<text x="{node.x:.1f}" y="{centre - 3:.1f}" text-anchor="middle" font-weight="600">'
             f"{_e(node.label)}</text>"
             f'<text class="detail" x="{node.x:.1f}" y="{centre + 11:.1f}" text-anchor="middle">'
             f"{_e(node.detail)}</text>")
    badges, left = [], node.x - (sum(_badge_width(a) + BADGE_GAP for a in node.aliases) - BADGE_GAP) / 2
    for alias in node.aliases:
        top = box_top + BOX_HEIGHT + BADGE_GAP
        badges.append(f'<g class="badge" data-alias="{_e(alias)}"><rect x="{left:.1f}" y="{top:.1f}" '
                      f'width="{_badge_width(alias):.1f}" height="{BADGE_HEIGHT}" rx="7"/>'
                      f'<text x="{left + _badge_width(alias) / 2:.1f}" y="{top + 11:.1f}" '
                      f'text-anchor="middle">{_e(alias)}</text></g>')
        left += _badge_width(alias) + BADGE_GAP
    return (f'<g class="node {node.kind}" data-node="{number}" data-key="{_e(node.key)}" tabindex="0" '
            f'role="button" aria-label="{_e(node.label)}"><title>{_e(title)}</title>'
            f"{shape}{texts}{''.join(badges)}</g>")


def _badge_width(alias: str) -> float:
    return len(alias) * SMALL_CHAR_WIDTH + 12


def figure_html(drawing: Picture, caption: str = "") -> str:
    """The SVG with a summary panel and the summaries as JSON: SCRIPT fills the panel when a node is clicked.
    The same markup serves the standalone page and the report."""
    summaries = [{"label": node.label, "kind": node.kind, "lines": node.summary} for node in drawing.nodes]
    data = json.dumps(summaries, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
    hint = "Click a node to see its summary." if drawing.nodes else ""
    return (f'<figure class="lineage-graph"><div class="graph-scroll">{svg(drawing)}</div>'
            f'<aside class="graph-summary" aria-live="polite"><p class="graph-hint">{_e(hint)}</p></aside>'
            f'<script type="application/json" class="graph-summaries">{data}</script>'
            + (f"<figcaption>{_e(caption)}</figcaption>" if caption else "") + "</figure>")


PAGE_CSS = """body { margin: 16px 24px; color: #1f2328; font: 14px/1.45 system-ui, sans-serif; }
h1 { font-size: 18px; }
.lineage-graph { margin: 0; display: flex; gap: 16px; align-items: flex-start; flex-wrap: wrap; }
.graph-scroll { overflow: auto; max-width: 100%; border: 1px solid #d0d7de; border-radius: 6px; }
.graph-summary { min-width: 280px; max-width: 520px; padding: 8px 12px; background: #f6f8fa;
  border: 1px solid #d0d7de; border-radius: 6px; }
.graph-summary dt { font-weight: 600; margin-top: 6px; }
.graph-summary dd { margin: 0 0 0 12px; white-space: pre-wrap; font-family: ui-monospace, monospace;
  font-size: 12px; overflow-wrap: anywhere; }"""
PAGE_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def html_page(drawing: Picture, title: str) -> str:
    """A self-contained page: the picture, its click-to-summary panel, and nothing it must fetch."""
    if not SCRIPT.exists():
        raise UserError(f"{SCRIPT} is missing: the lineage page inlines it; restore it from the project")
    script = SCRIPT.read_text(encoding="utf-8").replace("</script", "<\\/script")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{PAGE_POLICY}">
<link rel="icon" href="data:,">
<title>{_e(title)}</title>
<style>
{PAGE_CSS}
</style>
</head>
<body>
<h1>{_e(title)}</h1>
{figure_html(drawing)}
<script>
{script}
</script>
</body>
</html>
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)
