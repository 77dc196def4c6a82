"""The JWKS file: which keys it may hold, and rotation by editing it, without a restart."""

from __future__ import annotations

import contextlib
import json
import os
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.algorithms import RSAAlgorithm
from structlog.testing import capture_logs
from tokens import ec_key, read_jwks, rsa_key, write_jwks

from gateway.keyset import KeySet, parse_jwks, public_jwk
from gateway.state import ensure_state


@pytest.fixture()
def jwks(tmp_path):
    """A state directory's JWKS (the two demo keys), to edit."""
    return ensure_state(tmp_path / "state").jwks_path


def test_the_algorithm_is_the_keys_own(jwks):
    keys = KeySet(jwks)
    assert keys.kids == {"demo", "demo-es256"}
    assert keys.get("demo").algorithm_name == "RS256"
    assert keys.get("demo-es256").algorithm_name == "ES256"
    # without an alg member, the key type decides it, never a token
    plain = [{k: v for k, v in jwk.items() if k != "alg"} for jwk in read_jwks(jwks)]
    parsed = parse_jwks(json.dumps({"keys": plain}).encode(), "test")
    assert {k: v.algorithm_name for k, v in parsed.items()} == {"demo": "RS256",
                                                                 "demo-es256": "ES256"}


def _private_jwk(kid: str) -> dict:
    return {**RSAAlgorithm.to_jwk(rsa_key(), as_dict=True), "kid": kid}


UNUSABLE = {
    "a private RSA key": lambda: _private_jwk("k"),
    "a symmetric key": lambda: {"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0",
                                "kid": "k", "alg": "HS256"},
    "no kid": lambda: {k: v for k, v in public_jwk(rsa_key().public_key(), "k", "RS256").items()
                       if k != "kid"},
    "an RSA key declared ES256": lambda: {**public_jwk(rsa_key().public_key(), "k", "RS256"),
                                          "alg": "ES256"},
    "an EC key declared RS256": lambda: {**public_jwk(ec_key().public_key(), "k", "ES256"),
                                         "alg": "RS256"},
    "an RSA key declared PS256": lambda: {**public_jwk(rsa_key().public_key(), "k", "RS256"),
                                          "alg": "PS256"},
    "an EC key on P-384": lambda: public_jwk(ec.generate_private_key(ec.SECP384R1())
                                             .public_key(), "k", "ES256"),
    "a 1024-bit RSA key": lambda: public_jwk(rsa.generate_private_key(65537, 1024)
                                             .public_key(), "k", "RS256"),
    "an encryption key": lambda: {**public_jwk(rsa_key().public_key(), "k", "RS256"),
                                  "use": "enc"},
    "a key not for verifying": lambda: {**public_jwk(rsa_key().public_key(), "k", "RS256"),
                                        "key_ops": ["encrypt"]},
    "not an object": lambda: ["RSA"],
}


@pytest.mark.parametrize("name", UNUSABLE)
def test_an_unusable_key_is_skipped_and_the_rest_kept(jwks, name):
    write_jwks(jwks, [*read_jwks(jwks), UNUSABLE[name]()])
    with capture_logs() as logs:
        assert KeySet(jwks).kids == {"demo", "demo-es256"}
    assert [e["event"] for e in logs] == ["jwks_key_skipped"]


def test_a_kid_given_twice_keeps_only_the_first(jwks):
    first = read_jwks(jwks)
    write_jwks(jwks, [*first, public_jwk(rsa_key().public_key(), "demo", "RS256")])
    assert KeySet(jwks).get("demo").key.public_numbers() == \
        parse_jwks(json.dumps({"keys": first}).encode(), "t")["demo"].key.public_numbers()


@pytest.mark.parametrize("content", [b"", b"{not json", b"[]", b'{"keys": {}}', b"\xff\xfe",
                                     b"[" * 100_000])
def test_a_file_that_is_not_a_jwks_stops_the_start(jwks, content):
    jwks.write_bytes(content)
    with pytest.raises(ValueError, match="jwks.json"):
        KeySet(jwks)


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from(["kty", "kid", "alg", "crv", "n", "e",
                                                       "x", "y", "use", "key_ops", "d", "k"]),
                                      inner, max_size=6), max_leaves=20))
def test_any_json_gives_keys_or_a_value_error_never_a_crash(doc):
    for candidate in (doc, {"keys": doc}, {"keys": [doc]}):
        with contextlib.suppress(ValueError):
            parse_jwks(json.dumps(candidate).encode(), "fuzz")


# -- rotation -----------------------------------------------------------------------------


def test_a_key_added_verifies_at_once_through_the_unknown_kid_refresh(jwks):
    keys = KeySet(jwks, check_every_s=3600, refresh_unknown_every_s=0)
    new = public_jwk(ec_key().public_key(), "issuer-2027", "ES256")
    write_jwks(jwks, [*read_jwks(jwks), new])
    assert keys.get("issuer-2027") is not None


def test_unknown_kids_re_read_the_file_at_most_once_per_interval(jwks):
    keys = KeySet(jwks, check_every_s=3600, refresh_unknown_every_s=0.5)
    time.sleep(0.55)
    with capture_logs() as logs:
        assert keys.get("made-up-1") is None  # re-reads (nothing new: not even re-parsed)
        write_jwks(jwks, [*read_jwks(jwks), public_jwk(rsa_key().public_key(), "new", "RS256")])
        for i in range(50):
            assert keys.get(f"made-up-{i}") is None
        assert keys.get("new") is None  # within the interval: no read
        time.sleep(0.55)
        assert keys.get("new") is not None
    assert [e["event"] for e in logs] == ["jwks_reloaded"]


def test_a_key_removed_stops_at_the_next_check_and_not_before(jwks):
    keys = KeySet(jwks, check_every_s=0.5, refresh_unknown_every_s=0.5)
    assert keys.get("demo") is not None
    write_jwks(jwks, [k for k in read_jwks(jwks) if k["kid"] != "demo"])
    assert keys.get("demo") is not None  # a stat at most once per interval
    time.sleep(0.55)
    assert keys.get("demo") is None
    assert keys.get("demo-es256") is not None


def test_a_change_in_place_is_seen_and_a_touch_does_not_re_parse(jwks):
    keys = KeySet(jwks, check_every_s=0, refresh_unknown_every_s=0)
    with capture_logs() as logs:
        os.utime(jwks)
        assert keys.get("demo") is not None
        time.sleep(0.01)
        jwks.write_text(json.dumps({"keys": read_jwks(jwks)[1:]}))  # not atomic: in place
        assert keys.get("demo") is None
    assert [e["event"] for e in logs] == ["jwks_reloaded"]


def test_a_broken_or_missing_file_refuses_every_key_until_mended(jwks):
    good = jwks.read_bytes()
    keys = KeySet(jwks, check_every_s=0, refresh_unknown_every_s=0)
    with capture_logs() as logs:
        jwks.write_text('{"keys": [')  # a slip of the pen while removing a key
        assert keys.get("demo") is None and keys.get("demo-es256") is None
        assert keys.get("demo") is None
        jwks.unlink()
        assert keys.get("demo") is None
        jwks.write_bytes(good)
        assert keys.get("demo") is not None
    assert [e["event"] for e in logs] == ["jwks_unusable_no_token_verifies",
                                          "jwks_unusable_no_token_verifies", "jwks_reloaded"]
