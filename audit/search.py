"""Searching the trail for IG staff: filter, page, and export, reading the file as it stands."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class EventFilter:
    subject: str | None = None
    org: str | None = None
    project: str | None = None
    dataset: str | None = None
    table: str | None = None
    decision: str | None = None
    event: str | None = None
    since: str | None = None  # ISO 8601, inclusive
    until: str | None = None  # ISO 8601, exclusive

    def matches(self, e: dict[str, Any]) -> bool:
        if self.subject and e.get("subject") != self.subject:
            return False
        if self.org and e.get("org") != self.org:
            return False
        if self.project and e.get("project") != self.project:
            return False
        if self.dataset and self.dataset not in (e.get("datasets") or []):
            return False
        if self.table and self.table not in (e.get("tables") or []):
            return False
        if self.decision and e.get("decision") != self.decision:
            return False
        if self.event and e.get("event") != self.event:
            return False
        t = e.get("time", "")
        if self.since and t < _normal(self.since):
            return False
        return not (self.until and t >= _normal(self.until))


def _normal(ts: str) -> str:
    """Compare times as the trail writes them (UTC, +00:00); a bare date means its midnight."""
    ts = ts.replace("Z", "+00:00")
    return ts if "T" in ts else f"{ts}T00:00:00"


def iter_entries(path: Path) -> Iterator[dict[str, Any]]:
    with Path(path).open("rb") as fh:
        for raw in fh:
            if raw.endswith(b"\n"):
                yield json.loads(raw)


def search(path: Path, where: EventFilter, *, after_seq: int = 0, limit: int = 100
           ) -> tuple[list[dict[str, Any]], int | None]:
    """Entries after ``after_seq`` that match, oldest first; and the cursor of the next page."""
    found: list[dict[str, Any]] = []
    for e in iter_entries(path):
        if e["seq"] <= after_seq or not where.matches(e):
            continue
        if len(found) == limit:
            return found, found[-1]["seq"]
        found.append(e)
    return found, None


CSV_FIELDS = ["seq", "time", "event", "request_id", "subject", "org", "org_type", "project",
              "purpose", "policy_id", "legal_basis", "residents_of", "datasets", "tables",
              "decision", "error_code", "rows_released", "sql_sha256", "hash"]


def to_csv(entries: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for e in entries:
        row = dict(e)
        basis = row.get("legal_basis")
        row["legal_basis"] = basis.get("reference") if isinstance(basis, dict) else basis
        residents = (row.get("obligations") or {}).get("residents_of")
        row["residents_of"] = (f"{residents['by']} in {' '.join(residents['values'])}"
                               if residents else "")
        for key in ("datasets", "tables"):
            if isinstance(row.get(key), list):
                row[key] = ";".join(row[key])
        writer.writerow(row)
    return out.getvalue()
