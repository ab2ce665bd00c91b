"""Which rows of a large table one report page embeds: a bounded, useful selection.

A page that embeds every row stops opening somewhere past 100,000 rows (229 MB of HTML at
1,000,000). Up to `EMBED_LIMIT` rows the page embeds them all, exactly as before. Above it,
the page holds at most `limit` rows, chosen so that what a reader looks for is there:

1. the mistakes (for a comparison: the images whose correctness changed between A and B), every
   one up to a cap, the most confident first when there are more;
2. the least confident right answers (for a comparison: the images both models got wrong);
3. a stratified sample of the rest: an equal share per true class (unlabelled rows are one
   stratum), seeded, so a rare class is not drowned by a common one.

Everything is deterministic (the same table gives the same rows), and each chosen row says
why in the `chosen` column, which the page's filter can use. Aggregates never come from this
selection: metrics, curves, confusion and the group counts are computed over every row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tables.predictions import missing_label

EMBED_LIMIT = 10_000  # rows one page embeds; a table this size or smaller is embedded whole
NOTABLE_SHARE = 0.5  # of the limit: mistakes (or changed answers)
DOUBTFUL_SHARE = 0.2  # of the limit: least confident right answers (or wrong in both)
SEED = 0
REASON_COLUMN = "chosen"
UNLABELLED_STRATUM = "(unlabelled)"
ORDERS = {"mistake": "the most confident first", "least confident right": "the least confident first",
          "changed between A and B": "the largest change of the true class's score first",
          "wrong in both": "B's most confident first"}


@dataclass
class Selection:
    """Positions (ascending) of the embedded rows, why each was chosen, and what was available."""

    positions: np.ndarray
    reasons: np.ndarray
    total: int
    limit: int
    counts: dict[str, int] = field(default_factory=dict)  # reason -> rows embedded for it
    available: dict[str, int] = field(default_factory=dict)  # reason -> rows that qualified
    strata: int = 0

    @property
    def capped(self) -> bool:
        return len(self.positions) < self.total

    def apply(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The embedded rows in table order; with a `chosen` column when the table was cut."""
        if not self.capped:
            return frame
        chosen = frame.iloc[self.positions].copy()
        chosen[REASON_COLUMN] = self.reasons
        return chosen


def select_rows(frame: pd.DataFrame, limit: int = EMBED_LIMIT, seed: int = SEED) -> Selection:
    """The rows a page embeds from a prediction table or a comparison (tables/compare.py's join)."""
    total = len(frame)
    if total <= limit:
        return Selection(np.arange(total), np.full(total, "", dtype=object), total, limit)
    truth = frame["truth"] if "truth" in frame.columns else pd.Series([None] * total, index=frame.index)
    labelled = ~missing_label(truth)
    if "correct_a" in frame.columns and "correct_b" in frame.columns:
        right_a = frame["correct_a"].fillna(True).to_numpy(dtype=bool)
        right_b = frame["correct_b"].fillna(True).to_numpy(dtype=bool)
        notable = ("changed between A and B", labelled & (right_a != right_b),
                   -np.abs(_numbers(frame, "shift")))  # the largest shifts of the true class's score first
        doubtful = ("wrong in both", labelled & ~right_a & ~right_b, -_numbers(frame, "confidence_b"))
    else:
        guess = frame["guess"] if "guess" in frame.columns else truth
        wrong = labelled & (missing_label(guess) | (guess.astype(str) != truth.astype(str)).to_numpy())
        confidence = _numbers(frame, "confidence")
        notable = ("mistake", wrong, -confidence)  # the most confident mistakes first
        doubtful = ("least confident right", labelled & ~wrong, confidence)

    taken = np.zeros(total, dtype=bool)
    reasons = np.full(total, "", dtype=object)
    counts, available = {}, {}
    for (reason, mask, order), share in ((notable, NOTABLE_SHARE), (doubtful, DOUBTFUL_SHARE)):
        candidates = np.flatnonzero(mask)
        available[reason] = len(candidates)
        cap = int(limit * share)
        if len(candidates) > cap:  # a stable sort keeps table order among equal keys: deterministic
            candidates = candidates[np.argsort(order[candidates], kind="stable")[:cap]]
        taken[candidates] = True
        reasons[candidates] = reason
        counts[reason] = len(candidates)

    strata = np.where(labelled, truth.astype(str).to_numpy(dtype=object), UNLABELLED_STRATUM)
    sampled = _stratified(np.flatnonzero(~taken), strata, limit - int(taken.sum()), seed)
    taken[sampled] = True
    reasons[sampled] = "sample"
    counts["sample"] = len(sampled)
    available["sample"] = total - counts[notable[0]] - counts[doubtful[0]]
    positions = np.flatnonzero(taken)
    return Selection(positions, reasons[positions], total, limit, counts, available,
                     strata=len(np.unique(strata.astype(str))))


def _stratified(candidates: np.ndarray, strata: np.ndarray, budget: int, seed: int) -> np.ndarray:
    """Up to `budget` of `candidates`, an equal share per stratum (a small stratum's unused share
    goes to the others), each share a seeded random draw."""
    if budget <= 0 or not len(candidates):
        return np.zeros(0, dtype=np.int64)
    keys, inverse = np.unique(strata[candidates].astype(str), return_inverse=True)
    sizes = np.bincount(inverse, minlength=len(keys))
    quota = _water_fill(sizes, budget)
    rng = np.random.default_rng(seed)
    chosen = []
    for index in range(len(keys)):
        members = candidates[inverse == index]
        if quota[index]:
            chosen.append(np.sort(rng.choice(members, size=int(quota[index]), replace=False)))
    return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)


def _water_fill(sizes: np.ndarray, budget: int) -> np.ndarray:
    """Equal shares of `budget` over strata of `sizes` rows, none given more than it has."""
    quota = np.zeros(len(sizes), dtype=np.int64)
    left = min(int(budget), int(sizes.sum()))
    while left > 0:
        open_strata = np.flatnonzero(quota < sizes)
        share = max(1, left // len(open_strata))
        for index in open_strata:
            add = min(share, int(sizes[index] - quota[index]), left)
            quota[index] += add
            left -= add
            if left == 0:
                break
    return quota


def _numbers(frame: pd.DataFrame, column: str) -> np.ndarray:
    if column not in frame.columns:
        return np.zeros(len(frame))
    return np.nan_to_num(frame[column].to_numpy(dtype=np.float64, na_value=np.nan), nan=0.0)


def describe(selection: Selection) -> str:
    """How the embedded rows were chosen, in words, for the page."""
    parts = []
    for reason, count in selection.counts.items():
        if reason == "sample":
            parts.append(f"a random sample of {count:,} of the other rows, an equal share per true class "
                         f"({selection.strata} classes)")
        elif count < selection.available[reason]:
            parts.append(f"{count:,} of the {selection.available[reason]:,} rows {reason!r} ({ORDERS[reason]})")
        elif count:
            parts.append(f"all {count:,} rows {reason!r}")
    return "; ".join(parts)
