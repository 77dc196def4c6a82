"""Shared fixtures: real generated data, a real server over HTTP, real signed tokens."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import duckdb
import httpx
import pytest
import uvicorn

from datasets import load_catalogue
from datasets.generator import generate
from gateway.app import create_app
from gateway.auth import issue_token
from gateway.engine import DuckDBEngine
from gateway.settings import Settings
from gateway.state import ensure_state
from policies.loader import load_demo_users

PERSONS = 20_000
SEED = 7
#: Tests decide policies as of this date, whatever the machine's clock says.
TODAY = date(2026, 11, 23)


@pytest.fixture(scope="session")
def catalogue():
    return load_catalogue()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    generate(out, PERSONS, seed=SEED)
    return out


@pytest.fixture(scope="module")
def engine(data_dir, catalogue, tmp_path_factory) -> Iterator[DuckDBEngine]:
    """The real, hardened engine over the generated data, without the pipeline."""
    eng = DuckDBEngine(data_dir, tmp_path_factory.mktemp("engine-state"), catalogue,
                       memory_limit="1GB", threads=2)
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def raw(data_dir) -> Iterator[duckdb.DuckDBPyConnection]:
    """Plain DuckDB over the same Parquet files: the oracle the gateway is checked against."""
    con = duckdb.connect()
    for f in data_dir.glob("*.parquet"):
        con.execute(f"CREATE VIEW {f.stem} AS SELECT * FROM read_parquet('{f}')")
    yield con
    con.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server_process(data_dir: Path, state: Path, port: int) -> subprocess.Popen:
    """`sde-gateway serve` in a process of its own, to be killed for real."""
    # logs to a file, not a pipe: a pipe nobody reads fills up and blocks the server
    log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the process)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--data", str(data_dir), "--state-dir",
         str(state), "--port", str(port)], stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 60
    while time.time() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(log.read().decode())
        time.sleep(0.2)
    raise RuntimeError("server did not start")


class LiveServer:
    """The real app on a real port, served by uvicorn in a thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error",
                                access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        self.client = httpx.Client(base_url=self.url, timeout=60)
        self.keys = ensure_state(settings.state_dir)

    def token(self, sub: str, **overrides) -> str:
        users = {u.sub: u for u in load_demo_users()}
        u = users[sub]
        claims = dict(sub=u.sub, org=u.org, org_type=u.org_type, roles=list(u.roles),
                      projects=list(u.projects))
        claims.update(overrides)
        return issue_token(self.keys.token_private_pem, issuer=self.settings.token_issuer,
                           audience=self.settings.token_audience, **claims)

    def query(self, sub: str | None, sql: str, project: str, purpose: str,
              token: str | None = None, epsilon: float | None = None) -> httpx.Response:
        headers = {}
        tok = token if token is not None else (self.token(sub) if sub else None)
        if tok is not None:
            headers["Authorization"] = f"Bearer {tok}"
        body = {"sql": sql, "project": project, "purpose": purpose}
        if epsilon is not None:
            body["epsilon"] = epsilon
        return self.client.post("/v1/queries", headers=headers, json=body)

    def released(self, response: httpx.Response, submitter: str,
                 reviewer: str = "ig.lead") -> dict:
        """The released body of a query: if it was held, an IG reviewer releases it (a real
        review over HTTP) and the submitter reads it back."""
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] == "released":
            return body
        assert body["status"] == "held" and body["rows"] == []
        qid = body["query_id"]
        decided = self.client.post(f"/v1/reviews/{qid}",
                                   headers={"Authorization": f"Bearer {self.token(reviewer)}"},
                                   json={"decision": "release", "reason": "checked by test"})
        assert decided.status_code == 200, decided.text
        read = self.client.get(f"/v1/queries/{qid}",
                               headers={"Authorization": f"Bearer {self.token(submitter)}"})
        assert read.status_code == 200 and read.json()["status"] == "released"
        return read.json()["result"]

    def audit_entries(self) -> list[dict]:
        lines = self.settings.audit_path.read_text().splitlines()  # any reader's idea of a line
        return [json.loads(line) for line in lines]

    def entries_for(self, response: httpx.Response) -> list[dict]:
        rid = response.headers["x-request-id"]
        return [e for e in self.audit_entries() if e.get("request_id") == rid]

    def entry_for(self, response: httpx.Response) -> dict:
        """The closing entry of a request (the one that says how it ended)."""
        matches = [e for e in self.entries_for(response) if e["event"] != "query_received"]
        assert len(matches) == 1, f"expected one closing entry, found {len(matches)}"
        return matches[0]

    def pipeline_results(self):
        """The server's store of kept results (to check what could be read back)."""
        return self.app.state.pipeline.results

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.client.close()


def make_settings(data_dir: Path, state_dir: Path, **kw) -> Settings:
    """Test servers have no rate limit unless a test sets one: suites send fast."""
    kw.setdefault("rate_limit_per_minute", 0)
    return Settings(data_dir=data_dir, state_dir=state_dir, today=TODAY, **kw)


@pytest.fixture(scope="session")
def server(data_dir, tmp_path_factory) -> Iterator[LiveServer]:
    live = LiveServer(make_settings(data_dir, tmp_path_factory.mktemp("state")))
    yield live
    live.stop()


@pytest.fixture()
def fresh_server(data_dir, tmp_path) -> Iterator[LiveServer]:
    """A server with its own state directory (own keys and trail), for tests that inspect both."""
    live = LiveServer(make_settings(data_dir, tmp_path / "state"))
    yield live
    live.stop()
