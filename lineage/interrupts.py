"""What a Ctrl-C may land on, and the one truthful line the CLI prints for it.

The commit point of a run is its record in runs/ (objects → manifests → run record → lineage.json).
A SIGINT can arrive anywhere, including between that record reaching the disk and the code that
would say so, or after the command's last line while Python tears down. So the account is kept
where the commit happens, not inferred afterwards:

- `record_run` writes the record and notes it in this process's ledger inside `deferred()`,
  which holds a Ctrl-C back until both are done, then raises it;
- `describe_interrupt()` reads the ledger, wherever the KeyboardInterrupt surfaced.

The ledger is per process because that is what the message speaks for: what this command
committed. It is stdlib-only, so the CLI can use it even while its own imports are interrupted.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class Committed:
    ref: str  # "raw-data:v3", or "raw-data@<digest12>" when lineage.json was not rewritten
    graph_behind: bool  # the run record is written but lineage.json lags: the next command rebuilds it


LEDGER: list[Committed] = []  # what this process committed, in order


def note_committed(refs: list[str], graph_behind: bool = False) -> None:
    LEDGER.extend(Committed(ref, graph_behind) for ref in refs)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT back for the block, then deliver it. Only the main thread can set a handler; in
    any other thread the signal lands in the main thread anyway, so there is nothing to hold."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: arrived.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if arrived:
            if callable(previous):
                previous(signal.SIGINT, None)  # Python's default handler raises KeyboardInterrupt
            elif previous == signal.SIG_DFL:
                os.kill(os.getpid(), signal.SIGINT)


def describe_interrupt() -> str:
    """What a Ctrl-C left behind: nothing, or the versions this command committed before it."""
    if not LEDGER:
        return "interrupted: nothing was committed; the store is as it was"
    refs = ", ".join(c.ref for c in LEDGER)
    verb, pronoun = ("is", "it") if len(LEDGER) == 1 else ("are", "them")
    line = f"interrupted: {refs} {verb} committed; nothing after {pronoun} was"
    if any(c.graph_behind for c in LEDGER):
        line += " (lineage.json catches up on the next command)"
    return line


def committed_so_far() -> str | None:
    """For a disk fault's message: the versions this command committed before it, or None."""
    if not LEDGER:
        return None
    refs = ", ".join(c.ref for c in LEDGER)
    behind = " and lineage.json is rebuilt on the next command" if any(c.graph_behind for c in LEDGER) else ""
    return f"{refs} {'was' if len(LEDGER) == 1 else 'were'} committed (run record written){behind}"
