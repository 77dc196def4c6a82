"""The ``threshold`` regime: small-cell suppression on distinct people, then rounding.

A cell is judged on the number of distinct people behind it, as counted by the engine (the
hidden measures of the rewrite), never on the number the user's aggregate returns: a count of
40 admissions can rest on 3 people. Suppression happens before rounding, and only counts are
rounded, to the nearest multiple of the base (half up), as NHS small-number rules and
OpenSAFELY do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gateway.errors import SqlRejected


@dataclass(frozen=True)
class SuppressedCell:
    row: int
    column: str
    rule: str


@dataclass(frozen=True)
class Controlled:
    rows: list[list[Any]]
    suppressed: tuple[SuppressedCell, ...]
    rounded_columns: tuple[str, ...]
    #: why the output needs a person to look at it before release, if it does
    hold: str | None = None


#: Above this share of suppressed aggregate cells, the output is held for review: a table that
#: is mostly holes says little and invites working around the suppression.
HOLD_SUPPRESSED_SHARE = 0.5


def check_outputs(outputs) -> None:
    """The regime releases counts and sums or averages of measures, nothing computed from them.

    A ratio or any arithmetic over aggregates, computed from unrounded values, would undo the
    rounding (an exact count can be solved for), so it is refused before anything runs.
    """
    for out in outputs:
        if out.kind == "aggregate" and out.shape == "composite":
            raise SqlRejected(
                f"output column {out.name!r} is not a count or a plain sum or average of a "
                "measure (a ratio, arithmetic on aggregates, a SUM/AVG of an expression or with "
                "FILTER); under the threshold regime that could undo rounding or dominance",
                hint="use COUNT, SUM(CASE WHEN ... THEN 1 ELSE 0 END), or SUM/AVG of a measure "
                "column with the condition in WHERE or GROUP BY; compute ratios from released "
                "values", code="output_not_allowed",
            )


def small_cell(min_people: int) -> str:
    """The rule of a cell resting on fewer than k people, none included: one wording, so that
    the rule does not tell an empty group from a small one."""
    return f"small_cell: fewer than {min_people} people"


def round_to_base(value: int | float, base: int) -> int:
    """Nearest multiple of ``base``, halves rounded up (Python's round() would go to even)."""
    return int(base * math.floor(value / base + 0.5))


#: per cell of a SUM/AVG of a measure: the largest per-person totals, the total, and the
#: smallest per-person total (dominance is not defined when it is negative)
Contribution = tuple[list[float], float, float]


@dataclass(frozen=True)
class Dominance:
    """ACRO's defaults: NK with n=2, k=90%; p% with p=10%."""

    nk_n: int = 2
    nk_k: float = 0.9
    p_ratio: float = 0.1

    def rules(self, contribution: Contribution) -> set[str]:
        """Which of the two rules a cell breaks ("NK", "p%"), each as ACRO defines it."""
        top = sorted((float(v) for v in contribution[0] if v is not None), reverse=True)
        total = float(contribution[1]) if contribution[1] is not None else 0.0
        if not top or not math.isfinite(total) or total <= 0:
            return set()
        broken = set()
        if sum(top[: self.nk_n]) >= self.nk_k * total:
            broken.add("NK")
        if top[0] > 0 and (total - sum(top[:2])) / top[0] < self.p_ratio:
            broken.add("p%")
        return broken

    def verdict(self, contribution: Contribution | None) -> str | None:
        """Why a cell is dominated, or None if it is not."""
        if contribution is None:
            return "dominance: the contributions behind the cell are unknown"
        broken = self.rules(contribution)
        if "NK" in broken:
            return (f"dominance (NK): the largest {self.nk_n} contributors hold {self.nk_k:.0%}"
                    " or more of the total")
        if "p%" in broken:
            return (f"dominance (p%): the rest of the total is under {self.p_ratio:.0%} of the "
                    "largest contribution")
        return None


def apply_threshold(
    rows: list[list[Any]],
    columns: list[str],
    kinds: list[str],
    is_count: list[bool],
    people: list[list[int | None]],
    *,
    min_people: int,
    rounding_base: int,
    contributions: list[dict[int, Contribution | None]] | None = None,
    dominance: Dominance | None = None,
    column_bases: dict[int, int] | None = None,
) -> Controlled:
    """``people[r][c]`` is the number of distinct people behind cell (r, c), None for keys.

    A cell behind which 0 to ``min_people - 1`` people lie is suppressed (None), a zero as a
    small count is: which of the two a cell is would otherwise show. ``contributions[r][c]``, for SUM/AVG-of-measure cells,
    holds the largest per-person totals and the total: a dominated cell is suppressed.
    ``column_bases`` rounds some count columns to a larger base (counts of rows where one
    person adds several).
    """
    dominance = dominance or Dominance()
    hold: str | None = None
    out: list[list[Any]] = []
    suppressed: list[SuppressedCell] = []
    for r, row in enumerate(rows):
        new = list(row)
        for c, kind in enumerate(kinds):
            if kind != "aggregate":
                continue
            n = people[r][c]
            if n is None:
                continue
            if n < min_people:
                # Zeros too, and under the same words: a zero beside a suppressed small count
                # tells which of the two a group is, and a FILTER on one person and one bit of
                # her date made each column one bit (review round 33). ACRO's default
                # (zeros_are_disclosive) agrees. A value with no one behind it (rows the
                # gateway could not tie to a person, round 18) goes the same way.
                new[c] = None
                suppressed.append(SuppressedCell(r, columns[c], small_cell(min_people)))
                continue
            if isinstance(new[c], float) and not math.isfinite(new[c]):
                new[c] = None
                suppressed.append(SuppressedCell(r, columns[c], "not a finite number"))
                continue
            if contributions is not None and c in contributions[r] and n > 0:
                if _has_negative(contributions[r][c]):
                    hold = hold or ("dominance is not defined for negative contributions "
                                    f"(column {columns[c]!r})")
                why = dominance.verdict(contributions[r][c])
                if why:
                    new[c] = None
                    suppressed.append(SuppressedCell(r, columns[c], why))
                    continue
            if is_count[c] and new[c] is not None:
                new[c] = round_to_base(new[c], (column_bases or {}).get(c, rounding_base))
        out.append(new)
    rounded = tuple(col for col, k, cnt in zip(columns, kinds, is_count, strict=True)
                    if k == "aggregate" and cnt)
    controlled = Controlled(out, tuple(suppressed), rounded, hold)
    return Controlled(out, tuple(suppressed), rounded, hold_reason(controlled, kinds))


def hold_reason(controlled: Controlled, kinds: list[str]) -> str | None:
    """Why the output needs a reviewer: mostly holes among the cells it would release (or a
    reason found earlier, such as negative contributions)."""
    if controlled.hold and not controlled.hold.startswith(HOLD_PREFIX):
        return controlled.hold
    cells = sum(1 for k in kinds if k == "aggregate") * len(controlled.rows)
    n = len(controlled.suppressed)
    if cells >= 4 and n > HOLD_SUPPRESSED_SHARE * cells:
        return (f"{HOLD_PREFIX}{n} of {cells} cells are suppressed: more than "
                f"{HOLD_SUPPRESSED_SHARE:.0%}")
    return None


HOLD_PREFIX = "too many holes: "


def _has_negative(contribution: Contribution | None) -> bool:
    return bool(contribution) and contribution[2] is not None and contribution[2] < 0

