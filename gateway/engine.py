"""The execution backend: embedded DuckDB, read-only and hardened.

The data is loaded once from the data directory's Parquet files into a DuckDB database file in
the state directory (rebuilt when the files change), and served from a connection that is
read-only, cannot reach any file system, cannot load extensions and cannot change its
configuration. This is the second, independent layer under the SQL checks: even SQL that
bypasses the analysis cannot read around or write to anything (tests/unit/gateway/
test_engine_hardening.py proves it).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from datasets import Catalogue
from gateway.errors import (
    PERSON_LINK_BROKEN,
    PERSON_LINK_HINT,
    PERSON_LINK_MESSAGE,
    QueryFailed,
    QueryTimeout,
    ResultTooLarge,
    SqlRejected,
)


class EngineSetupError(RuntimeError):
    """The data directory does not match the catalogue, or the engine could not be hardened."""


@dataclass(frozen=True)
class RawResult:
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    #: whether rows past the row cap were left unread (``keep_first``)
    truncated: bool = False


class DuckDBEngine:
    """One hardened read-only connection; a cursor per query, interrupted at the time limit."""

    name = "duckdb"

    def __init__(
        self, data_dir: Path, state_dir: Path, catalogue: Catalogue, *, memory_limit: str,
        threads: int,
    ) -> None:
        self.db_path = build_database(Path(data_dir), Path(state_dir), catalogue)
        #: names the loaded data: a stored answer is reused only for the same data
        self.data_version = self.db_path.stem.removeprefix("data-")
        self._con = _open_hardened(self.db_path, memory_limit=memory_limit, threads=threads)
        self._prove_hardened()

    def _prove_hardened(self) -> None:
        """Refuse to serve unless a file read really fails on this connection."""
        try:
            self._con.cursor().execute(
                "SELECT * FROM read_csv(?)", [str(self.db_path)]
            ).fetchall()
        except duckdb.PermissionException:
            return
        except duckdb.Error as exc:
            raise EngineSetupError(f"unexpected engine state: {exc}") from exc
        raise EngineSetupError("the engine connection can read files; refusing to serve")

    def execute(self, sql: str, *, timeout_s: float, row_cap: int,
                params: dict[str, Any] | None = None,
                deadline: float | None = None, keep_first: bool = False) -> RawResult:
        """Run one query within ``timeout_s``, and before ``deadline`` (a time.monotonic()
        value) if one is given: the limit is the request's, shared by all its queries.
        ``params`` carries values that must not appear in the SQL text, which is audited
        (the cell-key secret). Past ``row_cap`` rows the result is too large, unless
        ``keep_first``: then the first ``row_cap`` rows come back, marked truncated."""
        left = timeout_s if deadline is None else min(timeout_s, deadline - time.monotonic())
        if left <= 0:
            raise QueryTimeout(f"the query ran past the time limit of {timeout_s:g} s",
                               hint="narrow the query (fewer joins, a date range)")
        cursor = self._con.cursor()
        timer = threading.Timer(left, cursor.interrupt)
        timer.daemon = True
        timer.start()
        try:
            cursor.execute(sql, params) if params else cursor.execute(sql)
            columns = tuple(d[0] for d in cursor.description)
            rows = cursor.fetchmany(row_cap + 1)
        except duckdb.InterruptException:
            raise QueryTimeout(f"the query ran past the time limit of {timeout_s:g} s",
                               hint="narrow the query (fewer joins, a date range)") from None
        except duckdb.Error as exc:
            if PERSON_LINK_BROKEN in str(exc):
                raise SqlRejected(PERSON_LINK_MESSAGE, hint=PERSON_LINK_HINT,
                                  code="person_link_broken") from None
            # The engine's message can quote the data it failed on (a value it could not
            # convert): never pass it on, nor log or audit it. The class is enough to act on.
            kind = type(exc).__name__.removesuffix("Exception").lower() or "error"
            raise QueryFailed(f"the engine could not run the query ({kind} error)",
                              hint="check the types and arithmetic of the expressions") from None
        except Exception:  # the engine's bindings can raise others (a failed C++ cast)
            raise QueryFailed("the engine could not run the query (internal error)",
                              hint="check the types of the expressions") from None
        finally:
            timer.cancel()
            cursor.close()
        if len(rows) > row_cap:
            if keep_first:
                return RawResult(columns, rows[:row_cap], truncated=True)
            raise ResultTooLarge(f"the result has more than {row_cap} rows",
                                 hint="aggregate to fewer groups")
        return RawResult(columns, rows)

    def close(self) -> None:
        self._con.close()


def _open_hardened(path: Path, *, memory_limit: str, threads: int) -> duckdb.DuckDBPyConnection:
    """Open in the order that works: config, then external access off, file systems off, lock."""
    con = duckdb.connect(
        str(path), read_only=True,
        config={
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "memory_limit": memory_limit,
            "threads": threads,
            "temp_directory": "",
        },
    )
    locked = con.execute("SELECT current_setting('lock_configuration')").fetchone()[0]
    if not locked:
        con.execute("SET enable_external_access = false")
        con.execute("SET disabled_filesystems = 'LocalFileSystem'")
        con.execute("SET lock_configuration = true")
    # A second open of the same file in one process shares the first instance's settings;
    # either way, _prove_hardened checks the result for real.
    return con


def build_database(data_dir: Path, state_dir: Path, catalogue: Catalogue) -> Path:
    """Load the Parquet files into a DuckDB file, unless one built from the same files exists."""
    files = {}
    for name in sorted(catalogue.tables):
        path = data_dir / f"{name}.parquet"
        if not path.exists():
            raise EngineSetupError(f"{data_dir}: missing {path.name} for table {name!r}")
        st = path.stat()
        files[name] = [str(path.resolve()), st.st_size, st.st_mtime_ns]
    spec = {"files": files, "schema": catalogue.sql_schema()}
    fingerprint = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    engine_dir = state_dir / "engine"
    engine_dir.mkdir(parents=True, exist_ok=True)
    target = engine_dir / f"data-{fingerprint}.duckdb"
    if target.exists():
        return target
    tmp = target.with_suffix(".building")
    tmp.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp), config={"autoinstall_known_extensions": False,
                                           "autoload_known_extensions": False})
    try:
        for name, table in sorted(catalogue.tables.items()):
            path = data_dir / f"{name}.parquet"
            cols = con.execute(
                "SELECT name FROM parquet_schema(?) WHERE name <> 'duckdb_schema'", [str(path)]
            ).fetchall()
            have = {c[0] for c in cols}
            want = {c.name for c in table.columns}
            if not want <= have:
                raise EngineSetupError(
                    f"{path.name}: missing columns {sorted(want - have)} declared by the catalogue"
                )
            select = ", ".join(f'CAST("{c.name}" AS {c.type}) AS "{c.name}"' for c in table.columns)
            con.execute(f'CREATE TABLE "{name}" AS SELECT {select} FROM read_parquet(?)',
                        [str(path)])
            # The analysis relies on what the catalogue declares unique: a lookup joined on its
            # key matches once, and a table of one row per person counts people by rows.
            for key, what in ((table.person_key if table.grain == "person" else None,
                               "one row per person"), (table.key, f"a unique {table.key}")):
                if key is None:
                    continue
                rows, distinct = con.execute(
                    f'SELECT COUNT(*), COUNT(DISTINCT "{key}") FROM "{name}"').fetchone()
                if rows != distinct:
                    raise EngineSetupError(
                        f"{path.name}: the catalogue declares {what}, but "
                        f"{rows - distinct} rows repeat a {key}")
        con.execute("CHECKPOINT")
    except duckdb.Error as exc:
        raise EngineSetupError(f"cannot load the data directory: {exc}") from exc
    finally:
        con.close()
    tmp.rename(target)
    for old in engine_dir.glob("data-*.duckdb"):
        if old != target:
            old.unlink(missing_ok=True)
    return target
