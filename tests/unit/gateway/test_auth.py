"""Token verification against forgeries, with real keys, real signatures and a real JWKS file."""

from __future__ import annotations

import time

import pytest
from tokens import (
    AUDIENCE,
    FORGERIES,
    ISSUER,
    Forger,
    claims,
    demo_token,
    sign,
)

from gateway.auth import TokenVerifier
from gateway.errors import Unauthenticated
from gateway.keyset import KeySet, public_jwk
from gateway.state import ensure_state

LEEWAY = 30


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return ensure_state(tmp_path_factory.mktemp("state"))


@pytest.fixture(scope="module")
def verifier(keys):
    return TokenVerifier(KeySet(keys.jwks_path), ISSUER, AUDIENCE, leeway_s=LEEWAY)


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


def test_a_long_made_up_kid_is_not_echoed_whole(forger, verifier):
    with pytest.raises(Unauthenticated) as refused:
        verifier.verify(f"Bearer {sign(forger.rs, 'RS256', 'k' * 5000)}")
    assert len(refused.value.message) < 200
