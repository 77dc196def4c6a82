"""The privacy budget ledger: per project, durable, shared by all the project's users.

SQLite in the state directory, in WAL mode with synchronous=FULL: a spend is on disk before
the query runs. Checking and spending happen in one ``BEGIN IMMEDIATE`` transaction, which
takes the database's write lock, so concurrent queries (threads or processes) are serialised
at that point and cannot overspend. The order is: spend, run, store the answer, release. A
crash after the spend leaves a spend without an answer: it stays spent (nothing was released,
but the exact values may have been computed), and the next start marks it ``interrupted``.

An identical query (same project, SQL, epsilon, policy and data) returns the stored answer and
spends nothing; one arriving while its twin is still running waits for the twin's answer.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.errors import GatewayError


class LedgerUnavailable(GatewayError):
    """The ledger cannot be read or written: nothing is spent, run or released (fail closed)."""

    status, code, decision = 503, "budget_unavailable", "failed"


@contextmanager
def _guarded() -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise LedgerUnavailable(
            f"the privacy budget ledger cannot be used ({type(exc).__name__}); nothing ran",
            hint="operators: check the state directory's budget.sqlite and its disk") from None

#: float arithmetic in the mechanisms can leave a spend a hair over its nominal value
TOLERANCE = 1e-9

SCHEMA = """
CREATE TABLE IF NOT EXISTS spends (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    project TEXT NOT NULL,
    request_id TEXT NOT NULL UNIQUE,
    fingerprint TEXT NOT NULL,
    subject TEXT NOT NULL,
    epsilon REAL NOT NULL,
    delta REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'released', 'failed', 'interrupted')),
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS spends_project ON spends (project);
CREATE INDEX IF NOT EXISTS spends_fingerprint ON spends (project, fingerprint);
CREATE TABLE IF NOT EXISTS answers (
    project TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    request_id TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (project, fingerprint)
);
"""


@dataclass(frozen=True)
class Budget:
    project: str
    epsilon_total: float
    delta_total: float
    epsilon_spent: float
    delta_spent: float
    queries: int

    @property
    def epsilon_left(self) -> float:
        return max(0.0, self.epsilon_total - self.epsilon_spent)

    @property
    def delta_left(self) -> float:
        return max(0.0, self.delta_total - self.delta_spent)

    def as_dict(self) -> dict[str, Any]:
        return {"project": self.project, "epsilon_total": self.epsilon_total,
                "epsilon_spent": self.epsilon_spent, "epsilon_left": self.epsilon_left,
                "delta_total": self.delta_total, "delta_spent": self.delta_spent,
                "delta_left": self.delta_left, "queries_charged": self.queries}


@dataclass(frozen=True)
class Reservation:
    """The outcome of asking to spend: either a stored answer, or a spend made (or refused)."""

    answer: dict[str, Any] | None
    spent: bool
    budget: Budget


class BudgetLedger:
    def __init__(self, path: Path, wait_s: float = 60.0) -> None:
        self.path = Path(path)
        self.wait_s = wait_s
        self._local = threading.local()
        with self._connect() as con:
            con.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                  check_same_thread=True)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            self._local.con = con
        return con

    def recover(self) -> int:
        """Mark spends left running by a crash as interrupted; they stay spent."""
        con = self._connect()
        cur = con.execute("UPDATE spends SET status = 'interrupted' WHERE status = 'running'")
        return cur.rowcount

    def budget(self, project: str, epsilon_total: float, delta_total: float) -> Budget:
        with _guarded():
            return self._budget(self._connect(), project, epsilon_total, delta_total)

    @staticmethod
    def _budget(con: sqlite3.Connection, project: str, eps_total: float,
                delta_total: float) -> Budget:
        eps, dlt, n = con.execute(
            "SELECT COALESCE(SUM(epsilon), 0), COALESCE(SUM(delta), 0), COUNT(*) FROM spends "
            "WHERE project = ?", (project,)).fetchone()
        return Budget(project, eps_total, delta_total, float(eps), float(dlt), int(n))

    def reserve(self, *, project: str, fingerprint: str, request_id: str, subject: str,
                epsilon: float, delta: float, epsilon_total: float,
                delta_total: float) -> Reservation:
        """Return the stored answer of an identical query, or spend, or refuse (spent=False,
        no answer). Atomic: the check and the spend are one write transaction."""
        with _guarded():
            return self._reserve(project, fingerprint, request_id, subject, epsilon, delta,
                                 epsilon_total, delta_total)

    def _reserve(self, project: str, fingerprint: str, request_id: str, subject: str,
                 epsilon: float, delta: float, epsilon_total: float,
                 delta_total: float) -> Reservation:
        con = self._connect()
        deadline = time.monotonic() + self.wait_s
        while True:
            con.execute("BEGIN IMMEDIATE")
            try:
                row = con.execute("SELECT body FROM answers WHERE project = ? AND "
                                  "fingerprint = ?", (project, fingerprint)).fetchone()
                budget = self._budget(con, project, epsilon_total, delta_total)
                if row is not None:
                    con.execute("COMMIT")
                    return Reservation(json.loads(row[0]), False, budget)
                running = con.execute(
                    "SELECT 1 FROM spends WHERE project = ? AND fingerprint = ? AND "
                    "status = 'running'", (project, fingerprint)).fetchone()
                if running is None or time.monotonic() > deadline:
                    if (budget.epsilon_spent + epsilon > epsilon_total + TOLERANCE
                            or budget.delta_spent + delta > delta_total + TOLERANCE * 1e-6):
                        con.execute("COMMIT")
                        return Reservation(None, False, budget)
                    con.execute(
                        "INSERT INTO spends (project, request_id, fingerprint, subject, epsilon,"
                        " delta, status, at) VALUES (?, ?, ?, ?, ?, ?, 'running', ?)",
                        (project, request_id, fingerprint, subject, epsilon, delta,
                         datetime.now(UTC).isoformat()))
                    budget = self._budget(con, project, epsilon_total, delta_total)
                    con.execute("COMMIT")
                    return Reservation(None, True, budget)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            time.sleep(0.05)  # an identical query is running: wait for its answer

    def settle(self, *, project: str, fingerprint: str, request_id: str,
               answer: dict[str, Any] | None) -> None:
        """Record the outcome of a spend: its answer (reused by identical queries) or failure.
        An answer that is not plain JSON cannot be kept, and the spend is closed as failed:
        left running, it would keep every identical query waiting for it (review round 30)."""
        body = None
        if answer is not None:
            try:
                body = json.dumps(answer, allow_nan=False)
            except (TypeError, ValueError):
                body = None
        with _guarded():
            con = self._connect()
            con.execute("BEGIN IMMEDIATE")
            try:
                con.execute("UPDATE spends SET status = ? WHERE request_id = ?",
                            ("released" if body is not None else "failed", request_id))
                if body is not None:
                    con.execute("INSERT OR REPLACE INTO answers (project, fingerprint, "
                                "request_id, body) VALUES (?, ?, ?, ?)",
                                (project, fingerprint, request_id, body))
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def cancel(self, request_id: str) -> None:
        """Take back a spend whose query never reached the engine (no slot came free): nothing
        was computed from the data, so nothing was spent."""
        with _guarded():
            self._connect().execute(
                "DELETE FROM spends WHERE request_id = ? AND status = 'running'", (request_id,))

    def spends(self, project: str) -> list[dict[str, Any]]:
        con = self._connect()
        cur = con.execute("SELECT seq, request_id, subject, epsilon, delta, status, at FROM "
                          "spends WHERE project = ? ORDER BY seq", (project,))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
