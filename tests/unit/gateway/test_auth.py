"""Token verification against forgeries, with real keys, real signatures and a real JWKS file."""

from __future__ import annotations

import base64
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from tokens import (
    AUDIENCE,
    DEV_SECRET,
    FORGERIES,
    HS256_REFUSED,
    ISSUER,
    Forger,
    claims,
    demo_key,
    demo_token,
    hs256,
    sign,
)

from gateway.auth import TokenVerifier
from gateway.errors import Unauthenticated
from gateway.keyset import KeySet, public_jwk
from gateway.settings import Settings
from gateway.state import ensure_state

LEEWAY = 30


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return ensure_state(tmp_path_factory.mktemp("state"))


def verifier_for(keys, dev_hmac_secret: bytes | None = None) -> TokenVerifier:
    return TokenVerifier(KeySet(keys.jwks_path), ISSUER, AUDIENCE, leeway_s=LEEWAY,
                         dev_hmac_secret=dev_hmac_secret)


@pytest.fixture(scope="module")
def verifier(keys):
    return verifier_for(keys)


@pytest.fixture(scope="module")
def forger(keys):
    return Forger(keys, LEEWAY)


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_the_demo_issuer_signs_with_either_key(keys, verifier, alg):
    caller = verifier.verify(f"Bearer {demo_token(keys, alg)}")
    assert caller.sub == "p.jones" and caller.projects == ("JOINT-PLANNING",)


@pytest.mark.parametrize("name", FORGERIES)
def test_forgeries_are_refused_for_the_right_reason(name, forger, verifier):
    make, reason = FORGERIES[name]
    with pytest.raises(Unauthenticated) as refused:
        verifier.verify(f"Bearer {make(forger)}")
    assert reason in refused.value.message


def test_clock_skew_within_the_leeway_is_allowed(forger, verifier):
    now = int(time.time())
    late = forger.demo(claims(iat=now - 600, nbf=now - 600, exp=now - LEEWAY + 10))
    early = forger.demo(claims(iat=now + LEEWAY - 10, nbf=now + LEEWAY - 10))
    for token in (late, early):
        assert verifier.verify(f"Bearer {token}").sub == "p.jones"


def test_key_headers_in_a_token_are_ignored_not_obeyed(forger, verifier):
    """A genuine token that carries jku/jwk/x5u/x5c verifies with the gateway's own key: the
    headers neither add a key nor break the token (the forgeries show they add none)."""
    stranger = public_jwk(forger.stranger_rs.public_key(), "demo", "RS256")
    token = forger.demo(jku="https://forger.example/jwks", jwk=stranger,
                        x5u="https://forger.example/c.pem", x5c=["MIIB"])
    assert verifier.verify(f"Bearer {token}").sub == "p.jones"


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwdw==",
                                    "bearer not.a.token"])
def test_malformed_headers_are_refused(header, verifier):
    with pytest.raises(Unauthenticated):
        verifier.verify(header)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(max_size=10), lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)
HEADERS = st.fixed_dictionaries({}, optional={
    "alg": st.sampled_from(["RS256", "ES256", "HS256", "none", "PS256", "EdDSA"]) | JSON,
    "kid": st.sampled_from(["demo", "demo-es256", "dev-hmac", ""]) | JSON,
    "typ": JSON, "crit": JSON, "jku": JSON, "jwk": JSON, "x5u": JSON, "b64": JSON})
CLAIMS = st.fixed_dictionaries({}, optional={
    name: JSON for name in ("iss", "aud", "sub", "iat", "nbf", "exp", "org", "org_type",
                            "roles", "projects")})


@settings(max_examples=300, deadline=None)
@given(header=HEADERS, body=CLAIMS, signature=st.binary(max_size=80))
def test_no_header_or_payload_gets_past_or_breaks_the_verifier(verifier, header, body, signature):
    """Whatever the header and claims hold, the answer is Unauthenticated, never a crash (a 500
    over HTTP) and never a caller: nothing here is signed by a trusted key."""
    token = ".".join(base64.urlsafe_b64encode(part).rstrip(b"=").decode() for part in (
        json.dumps(header).encode(), json.dumps(body).encode(), signature))
    with pytest.raises(Unauthenticated):
        verifier.verify(f"Bearer {token}")


def test_a_long_made_up_kid_is_not_echoed_whole(forger, verifier):
    with pytest.raises(Unauthenticated) as refused:
        verifier.verify(f"Bearer {sign(forger.rs, 'RS256', 'k' * 5000)}")
    assert len(refused.value.message) < 200


# -- development mode ---------------------------------------------------------------------


def test_development_mode_accepts_hs256_only_under_its_own_kid_and_secret(keys, forger):
    dev = verifier_for(keys, dev_hmac_secret=DEV_SECRET)
    assert dev.verify(f"Bearer {hs256(DEV_SECRET, 'dev-hmac')}").sub == "p.jones"
    refused = {
        "another secret": (hs256(b"x" * 40, "dev-hmac"), "Signature verification failed"),
        "the RSA public key, kid demo": (hs256(keys.token_public_pem, "demo"),
                                         "kid 'demo' is an RS256 key; the token says alg "
                                         "'HS256'"),
        "the dev secret, kid demo": (hs256(DEV_SECRET, "demo"), "is an RS256 key"),
        "the dev secret, no kid": (hs256(DEV_SECRET, None), "no kid"),
        "an RS256 token naming the dev kid": (sign(forger.rs, "RS256", "dev-hmac"),
                                              "kid 'dev-hmac' is an HS256 key"),
    }
    for name, (token, reason) in refused.items():
        with pytest.raises(Unauthenticated) as err:
            dev.verify(f"Bearer {token}")
        assert reason in err.value.message, name
    # the published keys still work beside it
    assert dev.verify(f"Bearer {forger.demo()}").sub == "p.jones"
    es = sign(demo_key(keys, "ES256"), "ES256", "demo-es256")
    assert dev.verify(f"Bearer {es}").sub == "p.jones"


def test_without_development_mode_hs256_is_refused_even_with_the_secret(verifier):
    with pytest.raises(Unauthenticated) as err:
        verifier.verify(f"Bearer {hs256(DEV_SECRET, 'dev-hmac')}")
    assert HS256_REFUSED in err.value.message


def test_a_short_development_secret_is_refused(keys, tmp_path):
    with pytest.raises(ValueError, match="too short"):
        verifier_for(keys, dev_hmac_secret=b"x" * 31)
    base = dict(data_dir=tmp_path, state_dir=tmp_path)
    with pytest.raises(ValidationError, match="at least 32 bytes"):
        Settings(**base, dev_allow_hs256=True, dev_hmac_secret="x" * 31)
    with pytest.raises(ValidationError, match="needs dev_hmac_secret"):
        Settings(**base, dev_allow_hs256=True)
    assert Settings(**base, dev_allow_hs256=True, dev_hmac_secret="x" * 32).dev_allow_hs256
    # off by default, and a secret alone does not switch it on
    assert not Settings(**base, dev_hmac_secret="x" * 8).dev_allow_hs256
    assert "x" * 32 not in repr(Settings(**base, dev_allow_hs256=True,
                                         dev_hmac_secret="x" * 32))
