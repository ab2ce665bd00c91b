"""Plain-text tables for the terminal, shared by the stages and the CLI."""

from __future__ import annotations


def format_counts(columns: dict[str, dict[str, int]], classes: list[str]) -> str:
    """A class × column count table with a total row (ingest, split and `show` print these)."""
    width = max([len("class"), len("total")] + [len(c) for c in classes])
    names = list(columns)
    header = "  " + "class".ljust(width) + "".join(f"{n:>9}" for n in names)
    lines = [header]
    for label in classes:
        lines.append("  " + label.ljust(width) + "".join(f"{columns[n].get(label, 0):>9,}" for n in names))
    lines.append("  " + "total".ljust(width) + "".join(f"{sum(columns[n].values()):>9,}" for n in names))
    return "\n".join(lines)


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def printable_name(name: str) -> str:
    """A file name as JSON and a terminal can hold it: bytes that are not UTF-8 (which Python keeps as
    surrogate escapes) shown as \\xNN. Equal to the name itself exactly when the name is valid UTF-8."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
