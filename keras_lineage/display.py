"""How the API's objects show themselves in Jupyter (`_repr_html_`) and in a plain console (`__repr__`).

A table shows its first rows, with a thumbnail of each row's image where the row's `id` is an image
in the store (the same cached JPEGs the evaluation report embeds); a lineage graph is the SVG that
`pipeline.py lineage --format svg` writes; a comparison is `pipeline.py compare`'s summary with its
tables. Every value comes from the store or the user, and is escaped where it is written.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Callable

import pandas as pd

from lineage import draw
from lineage.errors import UserError
from lineage.graph import Graph, Version as GraphVersion
from lineage.store import Store
from tables.table import display_cells, format_table, is_number_column

HTML_ROWS = 20  # rows a table shows inline; `.frame` holds them all
Thumbnails = Callable[[list[str]], dict[str, bytes]]  # image ids -> JPEG bytes (those that have an image)


class Table:
    """Rows of a version (its images, predictions or metrics) after an optional filter, group-by and sort.

    `frame` is the whole pandas DataFrame; in Jupyter the first rows render as HTML, each with a
    thumbnail of its image."""

    def __init__(self, frame: pd.DataFrame, title: str = "", thumbnails: Thumbnails | None = None,
                 thumbnail_px: int = 48):
        self.frame = frame
        self.title = title
        self._thumbnails = thumbnails
        self._thumbnail_px = thumbnail_px

    def to_pandas(self) -> pd.DataFrame:
        """The rows as a DataFrame (the same object as `.frame`)."""
        return self.frame

    def __len__(self) -> int:
        return len(self.frame)

    def __repr__(self) -> str:
        shown = format_table(self.frame.head(HTML_ROWS), "text")
        return f"{self.title}\n{shown}{self._footer(HTML_ROWS)}".strip()

    def _footer(self, shown: int) -> str:
        rows, columns = self.frame.shape
        more = f", the first {shown} shown" if rows > shown else ""
        return f"{rows:,} row{'s' if rows != 1 else ''} × {columns} column{'s' if columns != 1 else ''}{more}"

    def _repr_html_(self) -> str:
        return self.html(HTML_ROWS)

    def html(self, rows: int = HTML_ROWS) -> str:
        """The first `rows` rows as an HTML table, a thumbnail first in each row whose id is a stored image."""
        head = self.frame.head(rows)
        images: dict[str, bytes] = {}
        if self._thumbnails is not None and "id" in head.columns and len(head):
            images = self._thumbnails([str(i) for i in head["id"] if isinstance(i, str)])
        cells = {str(name): display_cells(head[name], str(name)) for name in head.columns}
        numeric = {str(name): is_number_column(head[name]) for name in head.columns}
        header = ("<th>image</th>" if images else "") + "".join(f"<th>{_e(name)}</th>" for name in cells)
        lines = []
        for position in range(len(head)):
            row = ""
            if images:
                picture = images.get(str(head["id"].iloc[position]))
                row += f"<td>{_img(picture, cells['id'][position], self._thumbnail_px) if picture else ''}</td>"
            row += "".join(f'<td style="text-align:{"right" if numeric[name] else "left"}">{_e(values[position])}</td>'
                           for name, values in cells.items())
            lines.append(f"<tr>{row}</tr>")
        title = f"<p><b>{_e(self.title)}</b></p>" if self.title else ""
        return (f'<div class="keras-lineage-table">{title}<table><thead><tr>{header}</tr></thead>'
                f"<tbody>{''.join(lines)}</tbody></table><p>{_e(self._footer(rows))}</p></div>")


class LineageGraph:
    """Versions and the runs that link them, drawn as lineage/draw.py draws them for the CLI and the report."""

    def __init__(self, store: Store, graph: Graph, versions: list[GraphVersion], title: str):
        self.refs = [version.ref for version in versions]
        self.title = title
        self._picture = draw.lay_out(draw.picture(draw.describe(store, graph, versions)))

    def svg(self) -> str:
        """The picture as one standalone SVG document (what `lineage --format svg` writes)."""
        return draw.svg(self._picture)

    def html(self) -> str:
        """A self-contained page with click-to-summary (what `lineage --format html` writes)."""
        return draw.html_page(self._picture, self.title)

    def save(self, path: str | Path) -> Path:
        """Write the picture: an .svg path gets the SVG, any other the HTML page."""
        path = Path(path)
        text = self.svg() if path.suffix.lower() == ".svg" else self.html()
        try:
            path.write_text(text + "\n", encoding="utf-8")
        except OSError as error:
            raise UserError(f"cannot write the lineage picture to {path} ({error.strerror}): "
                            "give a writable file path") from None
        return path

    def __repr__(self) -> str:
        return f"<LineageGraph {self.title}: {len(self.refs)} version(s): {', '.join(self.refs[:8])}" \
               f"{', …' if len(self.refs) > 8 else ''}>"

    def _repr_html_(self) -> str:
        return f'<div class="keras-lineage-graph" style="overflow:auto">{self.svg()}</div>'


class ComparisonView:
    """Two predictions versions image by image (tables/compare.py): `.result` holds every table."""

    def __init__(self, result, thumbnails: Thumbnails | None, thumbnail_px: int):
        from tables.compare import summary_lines

        self.result = result
        self.summary = "\n".join(summary_lines(result))
        self._thumbnails, self._thumbnail_px = thumbnails, thumbnail_px

    def text(self, limit: int | None = 20) -> str:
        """What `pipeline.py compare A B` prints."""
        from tables.compare import format_comparison

        return format_comparison(self.result, "text", limit=limit)

    def __repr__(self) -> str:
        return self.text(limit=10)

    def _repr_html_(self) -> str:
        parts = [f"<pre>{_e(self.summary)}</pre>",
                 Table(self.result.per_class, "accuracy per true class").html(),
                 Table(self.result.images, "images, largest true-class score shift first", self._thumbnails,
                       self._thumbnail_px).html(10)]
        return f'<div class="keras-lineage-comparison">{"".join(parts)}</div>'


def version_html(title: str, show_text: str) -> str:
    """A version's summary as `pipeline.py show` prints it, under its ref."""
    return (f'<div class="keras-lineage-version"><p><b>{_e(title)}</b></p>'
            f"<pre>{_e(show_text)}</pre></div>")


def _img(jpeg: bytes, label: str, size: int) -> str:
    data = base64.b64encode(jpeg).decode("ascii")
    return (f'<img src="data:image/jpeg;base64,{data}" alt="{_e(label)}" title="{_e(label)}" '
            f'style="max-width:{size}px;max-height:{size}px">')


def _e(value) -> str:
    return html.escape(str(value), quote=True)
