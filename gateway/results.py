"""The outcomes of past queries, so that the submitter and IG staff can read them again.

Holds what was already released (disclosure-controlled tables) or the refusal; never raw rows.
SQLite in the state directory: durable, transactional, and in the standard library.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


class ResultStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._con = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA synchronous=FULL")
            self._con.execute(
                """CREATE TABLE IF NOT EXISTS results (
                       query_id TEXT PRIMARY KEY, subject TEXT, project TEXT, status TEXT,
                       created TEXT, body TEXT)"""
            )

    def put(self, query_id: str, subject: str | None, project: str | None, status: str,
            body: dict[str, Any]) -> None:
        with self._lock:
            self._con.execute(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?)",
                (query_id, subject, project, status, datetime.now(UTC).isoformat(),
                 json.dumps(body, default=str)),
            )

    def delete(self, query_id: str) -> None:
        with self._lock:
            self._con.execute("DELETE FROM results WHERE query_id = ?", (query_id,))

    def get(self, query_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._con.execute(
                "SELECT query_id, subject, project, status, created, body FROM results "
                "WHERE query_id = ?", (query_id,),
            ).fetchone()
        if row is None:
            return None
        return {"query_id": row[0], "subject": row[1], "project": row[2], "status": row[3],
                "created": row[4], "body": json.loads(row[5])}

    def held(self) -> list[dict[str, Any]]:
        with self._lock:
            ids = [r[0] for r in self._con.execute(
                "SELECT query_id FROM results WHERE status = 'held' ORDER BY created").fetchall()]
        return [self.get(i) for i in ids]

    def set_status(self, query_id: str, status: str, body: dict[str, Any]) -> None:
        with self._lock:
            self._con.execute("UPDATE results SET status = ?, body = ? WHERE query_id = ?",
                              (status, json.dumps(body, default=str), query_id))

    def close(self) -> None:
        with self._lock:
            self._con.close()
