"""The ``cell_key`` regime: consistent perturbation, after the ONS and ABS cell key method.

Each person has a secret record key: 64 bits of a keyed MD5 of the person key, computed inside
the rewritten query from a secret held in the state directory and passed as a query parameter
(so it is never in the SQL text, the audit trail, the data or the response). A cell's key is the
XOR of the record keys of the distinct people behind it: uniform, and the same for the same
people whatever the query that gathered them. The perturbation of a cell is drawn from the
perturbation table by a uniform number derived from (cell key, cell value, and for a count the
width of the table it is read through), so the same cell always gets the same answer, in any
query and any session: repeating a query, or asking it another way, gives nothing new to
average away. A differencing pair (a cell with and without
one person) has two unrelated keys, so the difference of the answers is the true difference
plus two independent perturbations.

The perturbation table is a discrete Gaussian truncated to [-D, D] whose variance is V (the
largest-entropy distribution on that support with that variance): D = 2 and V = 1 by default,
so a released count is within 2 of the truth, and zero on average. Cells of fewer than
``min_people`` people, none included, are suppressed before any perturbation, and since
``min_people`` > D no released count can be negative.

Sums and averages of a measure pass the dominance rules of the threshold regime, then move by
a share of the largest single contribution, drawn from the cell key the same way: the one
contribution that differencing could isolate is blurred by noise of its own size.
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from gateway.disclosure.threshold import (
    Contribution,
    Controlled,
    Dominance,
    SuppressedCell,
    small_cell,
)

#: the record-key expression's parameter name in the rewritten SQL
SECRET_PARAM = "sde_cell_key_secret"  # noqa: S105 (a parameter name, not a secret)
SECRET_FILE = "cell-key-secret.key"  # noqa: S105 (a file name)


def load_secret(keys_dir: Path) -> str:
    """The secret, created on first use with owner-only permissions."""
    path = Path(keys_dir) / SECRET_FILE
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w", encoding="ascii") as fh:
            fh.write(secrets.token_hex(32))
        tmp.replace(path)
    return path.read_text(encoding="ascii").strip()


@dataclass(frozen=True)
class PerturbationTable:
    """P(d) for d in [-D, D]: p(d) proportional to exp(-lam * d^2), lam set so the variance is V."""

    max_perturbation: int = 2
    variance: float = 1.0

    def __post_init__(self) -> None:
        d = self.max_perturbation
        if d < 1 or not 0 < self.variance < d * d * 0.999:
            raise ValueError("the perturbation table needs D >= 1 and 0 < V < D^2")

    @property
    def probabilities(self) -> dict[int, float]:
        return _table(self.max_perturbation, self.variance)

    def perturbation(self, u: float) -> int:
        """The perturbation at uniform position ``u`` in [0, 1) (inverse CDF)."""
        cumulative = 0.0
        items = sorted(self.probabilities.items())
        for d, p in items:
            cumulative += p
            if u < cumulative:
                return d
        return items[-1][0]


@lru_cache(maxsize=64)  # built once per (D, V), not once per cell (review round 19)
def _table(d: int, variance: float) -> dict[int, float]:
    support = range(-d, d + 1)

    def dist(lam: float) -> dict[int, float]:
        w = {k: math.exp(-lam * k * k) for k in support}
        total = sum(w.values())
        return {k: v / total for k, v in w.items()}

    def var(lam: float) -> float:
        return sum(k * k * p for k, p in dist(lam).items())

    lo, hi = -50.0, 50.0  # var is decreasing in lam
    for _ in range(200):
        mid = (lo + hi) / 2
        if var(mid) > variance:
            lo = mid
        else:
            hi = mid
    return dist((lo + hi) / 2)


def uniform(cell_key: int, value: Any, salt: str) -> float:
    """A uniform number in [0, 1) fixed by the cell key and the cell value."""
    digest = hashlib.blake2b(f"{salt}|{int(cell_key)}|{value!r}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") / 2.0**64


def _salt(wide: PerturbationTable, base: PerturbationTable) -> str:
    """What a count's perturbation is drawn for, beside its cell key and value: the table it
    is read through. The base table keeps the salt it always had, so that answers stay the
    same; each wider one (1, 2, 5, ... 100 times, ``count_scales``) draws its own position.
    A cell then has one answer per width, at most seven, and the wider ones, with s^2 times
    the variance, add little: all seven together tell as much as 1.3 answers of the base
    table (the sum of 1/s^2)."""
    if wide == base:
        return "n"
    return f"n|{wide.max_perturbation}|{wide.variance!r}"


def apply_cell_key(
    rows: list[list[Any]],
    columns: list[str],
    kinds: list[str],
    shapes: list[str],
    people: list[list[int | None]],
    keys: list[list[int | None]],
    *,
    min_people: int,
    table: PerturbationTable,
    magnitude_share: float = 0.5,
    contributions: list[dict[int, Contribution | None]] | None = None,
    dominance: Dominance | None = None,
    column_tables: dict[int, PerturbationTable] | None = None,
) -> Controlled:
    """Suppress small cells, then perturb each released cell from its cell key.

    ``keys[r][c]`` is the XOR of the record keys of the people behind cell (r, c).
    ``column_tables`` gives some count columns a wider table (counts of rows where one person
    adds several: a perturbation of 2 would divide away).
    """
    dominance = dominance or Dominance()
    out: list[list[Any]] = []
    suppressed: list[SuppressedCell] = []
    for r, row in enumerate(rows):
        new = list(row)
        for c, kind in enumerate(kinds):
            if kind != "aggregate" or people[r][c] is None:
                continue
            n = people[r][c]
            value = new[c]
            if n < min_people:
                # zeros too, as the threshold regime does (review round 33)
                new[c] = None
                suppressed.append(SuppressedCell(r, columns[c], small_cell(min_people)))
                continue
            if value is None:
                continue  # a sum of no values
            if isinstance(value, float) and not math.isfinite(value):
                new[c] = None
                suppressed.append(SuppressedCell(r, columns[c], "not a finite number"))
                continue
            key = keys[r][c] or 0
            if shapes[c] == "count":
                wide = (column_tables or {}).get(c, table)
                # the position is drawn for the table it is read through: read through two
                # widths at one position, a count of people and a count of their rows (one
                # each) fitted one value only, the exact count (review round 38)
                at = uniform(key, int(value), _salt(wide, table))
                new[c] = max(0, int(value) + wide.perturbation(at))
                continue
            contribution = contributions[r].get(c) if contributions is not None else None
            why = dominance.verdict(contribution)
            if why:
                new[c] = None
                suppressed.append(SuppressedCell(r, columns[c], why))
                continue
            top = max((abs(float(v)) for v in contribution[0] if v is not None), default=0.0)
            share = (2 * uniform(key, round(float(value), 6), "m") - 1) * magnitude_share
            moved = share * top
            # an average moves by the same amount per contributor's worth of the total
            total = float(contribution[1] or 0.0)
            if total and shapes[c] == "average":
                moved = moved * float(value) / total
            # to the cent: the engine's summation order moves the last bits of a float sum,
            # and a repeat must give the very same answer
            new[c] = round(float(value) + moved, 2)
        out.append(new)
    return Controlled(out, tuple(suppressed), ())
