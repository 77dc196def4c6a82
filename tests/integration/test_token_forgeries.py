"""Forged and rotated tokens against the real app over HTTP: every forgery gets 401 in the JSON
error shape and an audit entry, and key rotation by editing jwks.json needs no restart."""

from __future__ import annotations

import json
import time

import pytest
from conftest import LiveServer, make_settings
from tokens import (
    DEV_SECRET,
    FORGERIES,
    HS256_REFUSED,
    Forger,
    demo_token,
    ec_key,
    hs256,
    read_jwks,
    rsa_key,
    sign,
    write_jwks,
)

from gateway.keyset import public_jwk

SQL = "SELECT sex, COUNT(DISTINCT person_id) AS people FROM patients GROUP BY sex"
QUERY = {"sql": SQL, "project": "JOINT-PLANNING", "purpose": "planning"}


@pytest.fixture(scope="module")
def forger(server):
    return Forger(server.keys, server.settings.token_leeway_s)


def assert_refused(live: LiveServer, resp, token: str, reason: str | None = None) -> dict:
    """401 in the project's error shape, and a closing audit entry that says so (and never
    holds the token)."""
    assert resp.status_code == 401, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "reasons", "hint"}
    assert body["error"]["code"] == "unauthenticated"
    entry = live.entry_for(resp)
    assert entry["decision"] == "refused" and entry["error_code"] == "unauthenticated"
    assert "subject" not in entry
    if reason is not None:
        assert reason in body["error"]["message"] and reason in entry["error"]
    assert token not in json.dumps(entry)
    return entry


@pytest.mark.parametrize("name", FORGERIES)
def test_a_forgery_gets_401_in_the_error_shape_and_an_audit_entry(server, forger, name):
    make, reason = FORGERIES[name]
    token = make(forger)
    resp = server.query(None, SQL, "JOINT-PLANNING", "planning", token=token)
    assert_refused(server, resp, token, reason)


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_genuine_tokens_of_either_algorithm_are_served(server, alg):
    resp = server.query(None, SQL, "JOINT-PLANNING", "planning",
                        token=demo_token(server.keys, alg))
    assert resp.status_code == 200, resp.text
    assert server.entry_for(resp)["subject"] == "p.jones"


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v1/queries/explain", QUERY),
    ("GET", "/v1/catalogue", None),
    ("GET", "/v1/queries/0123abcd", None),
    ("GET", "/v1/audit/events", None),
    ("GET", "/v1/audit/verify", None),
    ("GET", "/v1/reviews", None),
    ("POST", "/v1/reviews/0123abcd", {"decision": "release", "reason": "looks fine"}),
])
def test_every_authenticated_route_refuses_a_forgery_the_same_way(server, forger, method, path,
                                                                   body):
    token = sign(forger.es, "ES256", forger.rs_kid)  # names the other algorithm's key
    resp = server.client.request(method, path, json=body,
                                 headers={"Authorization": f"Bearer {token}"})
    assert_refused(server, resp, token, "is an RS256 key")


# -- rotation by editing keys/jwks.json, without a restart --------------------------------


def _query(live: LiveServer, token: str):
    return live.query(None, SQL, "JOINT-PLANNING", "planning", token=token)


def _within(seconds: float, live: LiveServer, token: str, status: int):
    """Send the token until it gets ``status``; the response and how long that took."""
    started = time.monotonic()
    while True:
        resp = _query(live, token)
        if resp.status_code == status or time.monotonic() - started > seconds:
            return resp, time.monotonic() - started
        time.sleep(0.1)


def test_a_key_added_to_the_jwks_verifies_without_restart(fresh_server):
    key = ec_key()
    token = sign(key, "ES256", "partner-idp-2027")
    refused = _query(fresh_server, token)
    assert_refused(fresh_server, refused, token, "no key with kid 'partner-idp-2027'")
    jwks = fresh_server.keys.jwks_path
    write_jwks(jwks, [*read_jwks(jwks), public_jwk(key.public_key(), "partner-idp-2027",
                                                   "ES256")])
    resp, took = _within(5, fresh_server, token, 200)
    assert resp.status_code == 200, resp.text
    assert took < 2.5  # the unknown kid re-reads the file (at most once a second)
    assert fresh_server.entry_for(resp)["subject"] == "p.jones"


def test_a_key_removed_from_the_jwks_stops_verifying_without_restart(fresh_server):
    forger = Forger(fresh_server.keys, fresh_server.settings.token_leeway_s)
    rs_token, es_token = forger.demo(), sign(forger.es, "ES256", forger.es_kid)
    assert _query(fresh_server, rs_token).status_code == 200
    jwks = fresh_server.keys.jwks_path
    write_jwks(jwks, [k for k in read_jwks(jwks) if k["kid"] != "demo"])
    resp, took = _within(5, fresh_server, rs_token, 401)
    assert_refused(fresh_server, resp, rs_token, "no key with kid 'demo'")
    assert took < 2.5  # checked at most once a second
    assert _query(fresh_server, es_token).status_code == 200  # the other key is untouched


def test_a_key_replaced_under_its_kid_moves_trust_to_the_new_key(fresh_server):
    forger = Forger(fresh_server.keys, fresh_server.settings.token_leeway_s)
    old_token = forger.demo()
    new_key = rsa_key()
    new_token = sign(new_key, "RS256", "demo")
    assert_refused(fresh_server, _query(fresh_server, new_token), new_token,
                   "Signature verification failed")
    jwks = fresh_server.keys.jwks_path
    write_jwks(jwks, [public_jwk(new_key.public_key(), "demo", "RS256"),
                      *[k for k in read_jwks(jwks) if k["kid"] != "demo"]])
    resp, _ = _within(5, fresh_server, old_token, 401)
    assert_refused(fresh_server, resp, old_token, "Signature verification failed")
    assert _query(fresh_server, new_token).status_code == 200


def test_a_broken_jwks_refuses_every_token_until_it_is_mended(fresh_server):
    forger = Forger(fresh_server.keys, fresh_server.settings.token_leeway_s)
    token = forger.demo()
    jwks = fresh_server.keys.jwks_path
    good = jwks.read_bytes()
    jwks.write_text('{"keys": [')
    resp, _ = _within(5, fresh_server, token, 401)
    assert_refused(fresh_server, resp, token, "no key with kid 'demo'")
    jwks.write_bytes(good)
    resp, _ = _within(5, fresh_server, token, 200)
    assert resp.status_code == 200, resp.text


# -- development mode ---------------------------------------------------------------------


def test_a_dev_secret_without_development_mode_changes_nothing(data_dir, tmp_path):
    live = LiveServer(make_settings(data_dir, tmp_path / "state",
                                    dev_hmac_secret=DEV_SECRET.decode()))
    try:
        token = hs256(DEV_SECRET, "dev-hmac")
        assert_refused(live, _query(live, token), token, HS256_REFUSED)
    finally:
        live.stop()


def test_development_mode_accepts_hs256_beside_the_published_keys(data_dir, tmp_path):
    """(The loud warning at start is checked on the real command: test_cli.py.)"""
    live = LiveServer(make_settings(data_dir, tmp_path / "state", dev_allow_hs256=True,
                                    dev_hmac_secret=DEV_SECRET.decode()))
    try:
        resp = _query(live, hs256(DEV_SECRET, "dev-hmac"))
        assert resp.status_code == 200, resp.text
        pem = hs256(live.keys.token_public_pem, "demo")  # still no way in with the public key
        assert_refused(live, _query(live, pem), pem, "is an RS256 key")
        for alg in ("RS256", "ES256"):
            assert _query(live, demo_token(live.keys, alg)).status_code == 200
    finally:
        live.stop()
