"""The ``dp`` regime: OpenDP measurements over the bounded aggregates of gateway.sql.dp_rewrite.

Every noisy value comes from an OpenDP measurement, and the privacy cost of a query is what
OpenDP's privacy maps say of those measurements for the sensitivities the rewrite enforces,
added up (sequential composition). The cost is known before anything runs, so the budget can
be checked and spent first.

1. Which cells are released. When every group key is a column with a public code list (the
   catalogue's ``values``), the cells are all combinations of those values, whether or not
   anyone is in them; nothing about the key set comes from the data. Otherwise the number of
   people behind each cell goes through OpenDP's Laplace threshold (propose-test-release):
   a cell is released only if its noisy count of people clears a threshold set so that a cell
   made by one person's data appears with probability at most delta.
2. Each released statistic, over the released cells: discrete Laplace for counts, Laplace for
   sums; an average is a noisy sum over a noisy count (post-processing).
3. Post-processing, which costs nothing: counts below zero shown as zero, averages kept within
   the measure's bounds; an average whose noisy count is not positive is suppressed.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as dt_time
from decimal import Decimal
from typing import Any

import opendp.prelude as dp

from gateway.errors import SqlRejected
from gateway.sql.dp_rewrite import DpPlan

dp.enable_features("contrib")

#: above this many combinations of public keys, the key set is treated as unknown
MAX_PUBLIC_CELLS = 10_000
ALPHA = 0.05  # accuracy figures are 95% interval half-widths


@dataclass
class Measurement:
    """One OpenDP measurement, its input distance, its cost and its 95% half-width."""

    name: str
    measurement: Any
    d_in: Any
    epsilon: float
    delta: float
    scale: float
    accuracy: float


@dataclass
class DpMechanisms:
    plan: DpPlan
    epsilon: float
    delta: float
    public_keys: bool
    threshold: Measurement | None
    per_statistic: dict[int, list[Measurement]] = field(default_factory=dict)
    #: the noisy threshold's number of people, when keys come from the data
    threshold_value: int = 0

    @property
    def epsilon_spent(self) -> float:
        parts = [m.epsilon for ms in self.per_statistic.values() for m in ms]
        if self.threshold is not None:
            parts.append(self.threshold.epsilon)
        return math.fsum(parts)

    @property
    def delta_spent(self) -> float:
        return self.threshold.delta if self.threshold is not None else 0.0

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "epsilon": self.epsilon_spent, "delta": self.delta_spent,
            "cells": "public keys: every combination released" if self.public_keys else
            "keys from the data: cells released above a noisy threshold of people",
            "cells_per_person": self.plan.cells_per_person,
        }
        if self.threshold is not None:
            out["threshold"] = {"people": int(self.threshold_value), "scale":
                                self.threshold.scale, "epsilon": self.threshold.epsilon,
                                "delta": self.threshold.delta}
        return out


def build(plan: DpPlan, epsilon: float, delta: float) -> DpMechanisms:
    """Split ``epsilon`` evenly over the measurements the query needs, and build them."""
    public = plan.public_domains is not None and math.prod(
        len(d) for d in plan.public_domains) <= MAX_PUBLIC_CELLS
    if not plan.keys:
        public = True  # one cell, which exists whatever the data
    shares = sum(2 if s.kind == "average" else 1 for s in plan.statistics
                 if not (s.all_people and not public))
    if not public:
        shares += 1  # the threshold measurement (which also releases COUNT(DISTINCT person))
    if shares == 0:
        raise SqlRejected("the query releases no statistic", code="output_not_allowed")
    share = epsilon / shares
    cells = plan.cells_per_person
    mech = DpMechanisms(plan, epsilon, delta, public, None)
    if not public:
        mech.threshold, mech.threshold_value = _threshold(share, cells, delta)
    for stat in plan.statistics:
        if stat.all_people and not public:
            continue  # released by the threshold measurement
        if stat.kind in ("rows", "people"):
            mech.per_statistic[stat.column] = [
                _vector("count", share, int(math.ceil(cells * stat.per_cell)), integer=True)]
        elif stat.kind == "sum":
            mech.per_statistic[stat.column] = [
                _vector("sum", share, cells * stat.per_cell, integer=False)]
        else:  # average: a sum and a count of the values
            rows = int(stat.per_cell / max(abs(stat.bounds[0]), abs(stat.bounds[1])))
            mech.per_statistic[stat.column] = [
                _vector("sum", share, cells * stat.per_cell, integer=False),
                _vector("count", share, cells * rows, integer=True)]
    return mech


def _vector(name: str, epsilon: float, d_in: int | float, *, integer: bool) -> Measurement:
    """Laplace noise on a vector of cells whose L1 sensitivity is ``d_in``."""
    if integer:
        space = dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64")
        d_in = int(d_in)
    else:
        space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l1_distance(T=float)
        d_in = float(d_in)
    scale = float(d_in) / epsilon
    while True:  # float arithmetic can overrun the nominal epsilon by a hair: never spend more
        m = dp.m.make_laplace(*space, scale=scale)
        eps = m.map(d_in)
        if eps <= epsilon:
            break
        scale *= 1 + 1e-9
    accuracy = (dp.discrete_laplacian_scale_to_accuracy(scale, ALPHA) if integer
                else dp.laplacian_scale_to_accuracy(scale, ALPHA))
    return Measurement(name, m, d_in, eps, 0.0, scale, accuracy)


def _threshold(epsilon: float, cells: int, delta: float) -> tuple[Measurement, int]:
    """OpenDP's Laplace threshold on the people per cell: (l0, l1, linf) = (L, L, 1)."""
    space = (dp.map_domain(dp.atom_domain(T=str), dp.atom_domain(T="i64")),
             dp.l01inf_distance(dp.absolute_distance(T="i64")))
    d_in = (cells, cells, 1)
    scale = cells / epsilon

    def make(threshold: int):
        return dp.m.make_laplace_threshold(*space, scale=scale, threshold=threshold)

    while make(1).map(d_in)[0] > epsilon:
        scale *= 1 + 1e-9
    lo, hi = 1, 1 << 40  # the smallest threshold whose delta is within budget
    while lo < hi:
        mid = (lo + hi) // 2
        if make(mid).map(d_in)[1] <= delta:
            hi = mid
        else:
            lo = mid + 1
    m = make(lo)
    eps, dlt = m.map(d_in)
    accuracy = dp.discrete_laplacian_scale_to_accuracy(scale, ALPHA)
    return Measurement("threshold", m, d_in, eps, dlt, scale, accuracy), lo


@dataclass
class Released:
    rows: list[list[Any]]
    suppressed: list[dict[str, Any]]
    accuracy: dict[str, Any]


def release(mech: DpMechanisms, rows: list[tuple], names: list[str], kinds: list[str],
            constants: dict[int, Any]) -> Released:
    """Noise the exact bounded cells; ``rows`` are keys, statistic parts, then people."""
    plan = mech.plan
    nkeys = len(plan.keys)
    # cells are told apart by the engine's text of their keys (the last column), and shown
    # with their values; the public code lists are text already
    exact: dict[tuple, tuple] = {}
    shown: dict[tuple, tuple] = {}
    for row in rows:
        cell = tuple(row[-1]) if plan.key_text else tuple(row[:nkeys])
        exact[cell] = tuple(row[nkeys:-1] if plan.key_text else row[nkeys:])
        shown[cell] = tuple(row[:nkeys])
    layout: dict[int, int] = {}  # statistic column -> offset of its parts in the row tail
    offset = 0
    for stat in plan.statistics:
        layout[stat.column] = offset
        offset += 2 if stat.kind in ("sum", "average") else 1
    people_at = offset

    if mech.public_keys:
        cells = list(itertools.product(*plan.public_domains)) if plan.keys else [()]
        noisy_people = None
    else:
        codes = {json.dumps([_plain(v) for v in k]): k for k in exact}
        counts = {code: int(exact[k][people_at]) for code, k in codes.items()}
        kept = mech.threshold.measurement(counts)
        cells = [codes[c] for c in kept]
        noisy_people = {codes[c]: v for c, v in kept.items()}

    columns: dict[int, list[Any]] = {}
    for stat in plan.statistics:
        at = layout[stat.column]
        if stat.all_people and noisy_people is not None:
            columns[stat.column] = [max(0, noisy_people[k]) for k in cells]
            continue
        ms = mech.per_statistic[stat.column]
        first = [_cell(exact, k, at) for k in cells]
        if stat.kind in ("rows", "people"):
            columns[stat.column] = [max(0, v) for v in _noise(ms[0], first, True)]
        elif stat.kind == "sum":
            values = _noise(ms[0], first, False)
            columns[stat.column] = [_clip_sum(v, stat.bounds) for v in values]
        else:
            sums = _noise(ms[0], first, False)
            counts = _noise(ms[1], [_cell(exact, k, at + 1) for k in cells], True)
            columns[stat.column] = [min(max(s / c, stat.bounds[0]), stat.bounds[1])
                                    if c > 0 else None for s, c in zip(sums, counts, strict=True)]
    out_rows: list[list[Any]] = []
    key_pos = {pos: n for n, pos in enumerate(plan.keys)}
    for r, cell in enumerate(cells):
        key = shown.get(cell, cell)
        row = []
        for i, kind in enumerate(kinds):
            if i in key_pos:
                row.append(key[key_pos[i]])
            elif kind == "aggregate":
                row.append(columns[i][r])
            else:
                row.append(constants.get(i))
        out_rows.append(row)
    for pos, desc, nulls_first in reversed(plan.order):
        out_rows = _ordered(out_rows, pos, desc, nulls_first)
    if plan.limit is not None:
        out_rows = out_rows[: plan.limit]
    suppressed = [{"row": r, "column": names[c], "rule": "dp: the noisy count of values is "
                   "not positive, so the average is not defined"}
                  for r, row in enumerate(out_rows) for c in columns
                  if row[c] is None]
    accuracy = {}
    for stat in plan.statistics:
        if stat.all_people and noisy_people is not None:
            accuracy[names[stat.column]] = mech.threshold.accuracy
        elif stat.kind == "average":
            s, c = mech.per_statistic[stat.column]
            accuracy[names[stat.column]] = {
                "sum": s.accuracy, "count": c.accuracy,
                "note": "an average's half-width is about (sum + |average| x count) / count"}
        else:
            accuracy[names[stat.column]] = mech.per_statistic[stat.column][0].accuracy
    return Released(out_rows, suppressed, accuracy)


def _cell(exact: dict, key: tuple, at: int) -> Any:
    row = exact.get(key)
    return row[at] if row is not None else 0


def _noise(m: Measurement, values: list[Any], integer: bool) -> list[Any]:
    if not values:
        return []
    if integer:
        return list(m.measurement([int(v or 0) for v in values]))
    return list(m.measurement([float(v or 0.0) for v in values]))


def _clip_sum(value: float, bounds: tuple[float, float] | None) -> float:
    if bounds is not None and bounds[0] >= 0:
        return max(0.0, value)
    return value


def _plain(v: Any) -> Any:
    return v if v is None or isinstance(v, bool | int | float | str) else str(v)


def _ordered(rows: list[list], pos: int, desc: bool, nulls_first: bool) -> list[list]:
    """Sort by one key as the engine does: NULLs where the ORDER BY puts them (last by
    default, either way), NaN above every other number; stable, so that sorting by each key
    from the last to the first orders by all of them."""
    nulls = [r for r in rows if r[pos] is None]
    values = [r for r in rows if r[pos] is not None]
    dates: set[tuple[int, ...]] = set()
    for r in values:
        _date_places(r[pos], (), dates)
    values.sort(key=lambda row: _sort_key(row[pos], dates), reverse=desc)
    return nulls + values if nulls_first else values + nulls


#: a date or timestamp the engine hands Python as text, being outside Python's years (after
#: 9999, or BC): ``10000-01-01``, ``0005-01-01 (BC)``, ``10000-01-01 10:00:00``
_FAR_DATE = re.compile(r"(\d{4,})-(\d\d)-(\d\d)(?:[ T](\d\d):(\d\d):(\d\d)(?:\.(\d+))?)?( \(BC\))?")


def _parts(value: Any) -> list[Any] | None:
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, dict):
        return list(value.values())
    return None


def _date_places(value: Any, place: tuple[int, ...], out: set[tuple[int, ...]]) -> None:
    """The places in a key (a field of a tuple key, at any depth) that hold a date on some
    row: there the column is of a date type, and text is a date Python cannot hold."""
    parts = _parts(value)
    if parts is not None:
        for i, v in enumerate(parts):
            _date_places(v, (*place, i), out)
    elif isinstance(value, date):
        out.add(place)


def _sort_key(value: Any, dates: set[tuple[int, ...]] = frozenset(),
              place: tuple[int, ...] = ()) -> tuple:
    """A key Python can always compare, that orders as the engine does: NULL after NaN after
    every value, inside a tuple key too (``(p.sex, d.place_of_death)`` holds a NULL for the
    living: review round 33). Each value is tagged with its kind, so that no two kinds are
    ever compared; and where a key holds dates (``dates``: its places that do on some row),
    a date outside Python's years, which the engine hands over as text, is read back into
    the same scale as the others (review round 37: a date after 9999 beside ordinary ones
    was a 500), while text in a field of text stays text (round 38)."""
    if value is None:
        return (2,)
    if isinstance(value, float) and math.isnan(value):
        return (1,)
    parts = _parts(value)
    if parts is not None:
        return (0, "seq", tuple(_sort_key(v, dates, (*place, i)) for i, v in enumerate(parts)))
    if isinstance(value, datetime):
        return (0, "instant", (value.year, value.month, value.day, value.hour, value.minute,
                               value.second, value.microsecond))
    if isinstance(value, date):
        return (0, "instant", (value.year, value.month, value.day, 0, 0, 0, 0))
    if isinstance(value, str):
        far = _FAR_DATE.fullmatch(value) if place in dates else None
        if far is None:
            return (0, "text", value)
        year, *rest = (int(g or 0) for g in far.groups()[:6])
        fraction = int((far.group(7) or "0").ljust(6, "0")[:6])
        year = 1 - year if far.group(8) else year  # 1 BC is the year before 1 AD
        return (0, "instant", (year, *rest, fraction))
    if isinstance(value, bool):
        return (0, "bool", value)
    if isinstance(value, int | float | Decimal):
        return (0, "number", value)
    if isinstance(value, timedelta | dt_time):
        return (0, type(value).__name__, value)
    return (0, "other", str(value))
