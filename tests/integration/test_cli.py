"""The CLI contract of product.md, run as operators and harnesses run it: real subprocesses."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from policies.loader import shipped_policies_dir

CLI = [sys.executable, "-m", "gateway.cli"]


def run(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.time() + seconds
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"the server did not start: {proc.stderr.read()}")
        time.sleep(0.2)


def test_synth_writes_every_table_with_progress(tmp_path, catalogue):
    out = tmp_path / "d"
    result = run("synth", "--out", str(out), "--persons", "2000", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert {p.stem for p in out.glob("*.parquet")} == set(catalogue.tables)
    assert "patients" in result.stderr and "2,000" in result.stderr


def test_token_prints_only_a_token(tmp_path):
    result = run("token", "--state-dir", str(tmp_path / "s"), "--sub", "p.jones", "--org",
                 "E10000020", "--org-type", "local_authority", "--role", "planner",
                 "--project", "JOINT-PLANNING", "--ttl", "60")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(".") == 2 and len(result.stdout.split()) == 1


def test_token_signs_with_the_es256_demo_key_when_asked_and_the_server_takes_it(server):
    import jwt

    result = run("token", "--state-dir", str(server.settings.state_dir), "--sub", "p.jones",
                 "--org", "E10000020", "--org-type", "local_authority", "--role", "planner",
                 "--project", "JOINT-PLANNING", "--alg", "ES256")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": "demo-es256",
                                                "typ": "JWT"}
    resp = server.query(None, "SELECT sex, COUNT(DISTINCT person_id) FROM patients GROUP BY sex",
                        "JOINT-PLANNING", "planning", token=token)
    assert resp.status_code == 200, resp.text
    assert server.entry_for(resp)["subject"] == "p.jones"


def test_policy_check_passes_shipped_and_names_the_fault(tmp_path):
    ok = run("policy", "check", str(shipped_policies_dir()))
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "p"
    shutil.copytree(shipped_policies_dir(), bad)
    f = bad / "joint-planning.toml"
    f.write_text(f.read_text().replace("min_people = 8", "min_people = 1"))
    result = run("policy", "check", str(bad))
    assert result.returncode == 1
    assert "joint-planning.toml" in result.stderr and "output.min_people" in result.stderr


@pytest.fixture()
def served(data_dir, tmp_path):
    state = tmp_path / "state"
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*CLI, "serve", "--data", str(data_dir), "--state-dir", str(state),
                             "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc)
    yield url, state
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)


def token_for(state: Path, sub: str, org: str, org_type: str, project: str) -> str:
    return run("token", "--state-dir", str(state), "--sub", sub, "--org", org, "--org-type",
               org_type, "--role", "planner", "--project", project).stdout.strip()


def test_the_client_states_each_columns_rounding_base(served):
    """A count of rows (several admissions a person) is rounded to the larger base the
    response states, and the client says so beside the count of people at 5."""
    url, state = served
    tok = token_for(state, "p.jones", "E10000020", "local_authority", "JOINT-PLANNING")
    events = ("SELECT h.admission_method, COUNT(DISTINCT h.person_id) AS people, COUNT(*) AS "
              "spells FROM hospital_admissions h GROUP BY h.admission_method")
    mixed = run("query", "--url", url, "--token", tok, "--project", "JOINT-PLANNING",
                "--purpose", "planning", events, env={**os.environ, "COLUMNS": "120"})
    assert mixed.returncode == 0, mixed.stderr
    assert "rounded to 5 (people), to " in mixed.stdout and "(spells)" in mixed.stdout


def test_serve_query_and_verify_end_to_end(served):
    url, state = served
    tok = token_for(state, "p.jones", "E10000020", "local_authority", "JOINT-PLANNING")
    sql = ("SELECT p.lsoa_code, COUNT(DISTINCT p.person_id) AS people FROM patients p "
           "GROUP BY p.lsoa_code ORDER BY p.lsoa_code LIMIT 40")
    result = run("query", "--url", url, "--token", tok, "--project", "JOINT-PLANNING",
                 "--purpose", "planning", sql, env={**os.environ, "COLUMNS": "120"})
    assert result.returncode == 0, result.stderr
    assert "lsoa_code" in result.stdout and "suppressed" in result.stdout
    assert "rounded to 5" in result.stdout
    denied = run("query", "--url", url, "--token", tok, "--project", "JOINT-PLANNING",
                 "--purpose", "marketing", sql)
    assert denied.returncode == 1 and "403 policy_denied" in denied.stderr
    assert "permitted purposes" in denied.stderr
    verify = run("audit", "verify", "--state-dir", str(state))
    # two queries, each a write-ahead and a closing entry
    assert verify.returncode == 0 and "intact: 4 entries" in verify.stdout, verify.stdout
    assert "signed head checkpoint at entry 4" in verify.stdout
    trail = state / "audit" / "trail.jsonl"
    trail.write_text(trail.read_text().replace("marketing", "planning"))
    tampered = run("audit", "verify", "--state-dir", str(state))
    assert tampered.returncode == 1 and "line 3" in tampered.stdout


def test_serve_refuses_to_start_on_a_broken_policy(data_dir, tmp_path):
    bad = tmp_path / "p"
    shutil.copytree(shipped_policies_dir(), bad)
    f = bad / "outbreak-control-reg3.toml"
    f.write_text(f.read_text().replace('"icb", "nhs_trust"', '"commercial", "nhs_trust"'))
    result = run("serve", "--data", str(data_dir), "--state-dir", str(tmp_path / "s"),
                 "--policies", str(bad), "--port", str(free_port()))
    assert result.returncode == 2
    assert "outbreak-control-reg3.toml" in result.stderr and "regulation 3" in result.stderr


@pytest.mark.parametrize(("secret", "message"), [
    (None, "needs dev_hmac_secret"), ("x" * 31, "at least 32 bytes")])
def test_serve_refuses_development_mode_without_a_long_enough_secret(data_dir, tmp_path, secret,
                                                                      message):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDE_DEV_")}
    if secret:
        env["SDE_DEV_HMAC_SECRET"] = secret
    result = run("serve", "--data", str(data_dir), "--state-dir", str(tmp_path / "s"),
                 "--port", str(free_port()), "--dev-allow-hs256", env=env)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_in_development_mode_warns_and_takes_hs256(data_dir, tmp_path):
    from tokens import DEV_SECRET, hs256

    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SDE_DEV_HMAC_SECRET": DEV_SECRET.decode(),
           "SDE_DEV_ALLOW_HS256": "1"}
    proc = subprocess.Popen([*CLI, "serve", "--data", str(data_dir), "--state-dir",
                             str(tmp_path / "s"), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc)
        resp = httpx.post(f"{url}/v1/queries", timeout=30,
                          headers={"Authorization": f"Bearer {hs256(DEV_SECRET, 'dev-hmac')}"},
                          json={"project": "JOINT-PLANNING", "purpose": "planning",
                                "sql": "SELECT sex, COUNT(*) FROM patients GROUP BY sex"})
        assert resp.status_code == 200, resp.text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert "DEVELOPMENT_MODE_HS256_TOKENS_ACCEPTED" in err
    assert DEV_SECRET.decode() not in err


def test_demo_makes_data_prints_a_token_per_user_and_serves(tmp_path, catalogue):
    from policies.loader import load_demo_users

    port = free_port()
    proc = subprocess.Popen([*CLI, "demo", "--persons", "2000", "--port", str(port), "--dir",
                             str(tmp_path / "demo")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc)
        data = tmp_path / "demo" / "data-2000"
        assert {p.stem for p in data.glob("*.parquet")} == set(catalogue.tables)
        env_file = tmp_path / "demo" / "state" / "demo-tokens.env"
        tokens = dict(line.removeprefix("export ").split("=", 1)
                      for line in env_file.read_text().splitlines())
        assert set(tokens) == {"TOKEN_" + u.sub.upper().replace(".", "_")
                               for u in load_demo_users()}
        resp = httpx.post(f"{url}/v1/queries",
                          headers={"Authorization": f"Bearer {tokens['TOKEN_P_JONES'].strip(chr(39))}"},
                          json={"project": "JOINT-PLANNING", "purpose": "planning",
                                "sql": "SELECT sex, COUNT(DISTINCT person_id) FROM patients "
                                       "GROUP BY sex"}, timeout=30)
        assert resp.status_code == 200, resp.text
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert out.count("export TOKEN_") == len(load_demo_users())
