"""Failures caused for real: a server killed with SIGKILL under load, and a full disk."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import LiveServer, free_port, make_settings, start_server_process

from audit import verify_trail
from gateway.state import ensure_state

RELEASE_SQL = "SELECT p.sex, COUNT(DISTINCT p.person_id) AS people FROM patients p GROUP BY p.sex"


def test_sigkill_under_load_leaves_a_verifiable_trail_with_every_answer_in_it(data_dir, tmp_path):
    state = tmp_path / "state"
    keys = ensure_state(state)
    from gateway.auth import issue_token

    token = issue_token(keys.token_private_pem, issuer="sde-gateway", audience="sde-gateway",
                        sub="p.jones", org="E10000020", org_type="local_authority",
                        roles=["planner"], projects=["JOINT-PLANNING"])
    port = free_port()
    proc = start_server_process(data_dir, state, port)
    answered: list[tuple[str, int]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(i: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            n = 0
            while not stop.is_set() and n < 400:
                n += 1
                sql = RELEASE_SQL if n % 3 else "SELECT * FROM patients"
                try:
                    r = c.post("/v1/queries", headers={"Authorization": f"Bearer {token}"},
                               json={"sql": sql, "project": "JOINT-PLANNING",
                                     "purpose": "planning"})
                except httpx.HTTPError:
                    return  # the server is gone
                with lock:
                    answered.append((r.headers["x-request-id"], r.status_code))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    stop.set()
    for t in threads:
        t.join(timeout=20)
    assert len(answered) > 20, "the load did not get going"

    trail = state / "audit" / "trail.jsonl"
    result = verify_trail(trail, keys.audit_key, public_key=keys.checkpoint_public_key)
    assert result.ok or result.torn_tail, result.reason
    closing = {json.loads(line)["request_id"]: json.loads(line)
               for line in trail.read_bytes().split(b"\n")
               if line.endswith(b"}") and b'"event":"query"' in line}
    for request_id, status in answered:
        entry = closing.get(request_id)
        assert entry is not None, f"a client got {status} for {request_id} with no entry"
        assert (entry["decision"] == "released") == (status == 200)

    # restarting recovers any torn tail (and records it) and the trail verifies
    proc = start_server_process(data_dir, state, port)
    try:
        after = verify_trail(trail, keys.audit_key, public_key=keys.checkpoint_public_key)
        assert after.ok, after.reason
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


@pytest.fixture()
def tiny_audit_dir(tmp_path):
    """The state directory's audit folder on a real 256 KiB file system that can fill up."""
    audit_dir = tmp_path / "state" / "audit"
    audit_dir.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs",
                              str(audit_dir)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {mounted.stderr.strip()}")
    yield audit_dir
    subprocess.run(["umount", "-l", str(audit_dir)], check=False)


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (65536, 4096, 512, 1):  # to the last byte
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


def test_full_disk_gives_503_releases_nothing_and_recovers(data_dir, tiny_audit_dir):
    live = LiveServer(make_settings(data_dir, tiny_audit_dir.parent))
    try:
        ok = live.query("p.jones", RELEASE_SQL, "JOINT-PLANNING", "planning")
        assert ok.status_code == 200
        before = live.settings.audit_path.read_bytes()
        filler = _fill(tiny_audit_dir)

        full = live.query("p.jones", RELEASE_SQL, "JOINT-PLANNING", "planning")
        assert full.status_code == 503, full.text
        assert full.json()["error"]["code"] == "audit_unavailable"
        assert "rows" not in full.json()
        health = live.client.get("/healthz")
        assert health.status_code == 503 and health.json()["status"] == "degraded"
        # Whatever did fit is whole: no torn line, and no release on record for the request.
        # (The small write-ahead entry may fit in the last page's slack; the closing entry
        # then fails, and the kept result is withdrawn.)
        trail_now = live.settings.audit_path.read_bytes()
        assert trail_now.startswith(before) and trail_now.endswith(b"\n")
        assert verify_trail(live.settings.audit_path, live.keys.audit_key).ok
        qid = full.headers["x-request-id"]
        mine = [json.loads(x) for x in trail_now.splitlines() if qid.encode() in x]
        assert all(e["event"] == "query_received" for e in mine)
        assert live.pipeline_results().get(qid) is None

        filler.unlink()
        again = live.query("p.jones", RELEASE_SQL, "JOINT-PLANNING", "planning")
        assert again.status_code == 200
        assert live.client.get("/healthz").status_code == 200
        result = verify_trail(live.settings.audit_path, live.keys.audit_key,
                              public_key=live.keys.checkpoint_public_key)
        assert result.ok, result.reason
    finally:
        live.stop()
