"""Token verification against forgeries, with real keys and real signatures."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from gateway.auth import TokenVerifier, issue_token
from gateway.errors import Unauthenticated
from gateway.state import ensure_state

CLAIMS = dict(sub="p.jones", org="E10000020", org_type="local_authority", roles=["planner"],
              projects=["JOINT-PLANNING"])


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return ensure_state(tmp_path_factory.mktemp("state"))


@pytest.fixture(scope="module")
def verifier(keys):
    return TokenVerifier(keys.token_public_pem, "sde-gateway", "sde-gateway", leeway_s=0)


def sign(keys, **over):
    now = int(time.time())
    claims = {"iss": "sde-gateway", "aud": "sde-gateway", "iat": now, "exp": now + 60, **CLAIMS}
    claims.update(over)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, keys.token_private_pem, algorithm="RS256")


def test_valid_token_gives_the_caller(keys, verifier):
    token = issue_token(keys.token_private_pem, issuer="sde-gateway", audience="sde-gateway",
                        **CLAIMS)
    caller = verifier.verify(f"Bearer {token}")
    assert caller.sub == "p.jones" and caller.projects == ("JOINT-PLANNING",)


def _b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def forgeries(keys):
    now = int(time.time())
    body = {"iss": "sde-gateway", "aud": "sde-gateway", "iat": now, "exp": now + 60, **CLAIMS}
    import hashlib
    import hmac

    header = _b64({"alg": "HS256", "typ": "JWT"})
    payload = _b64(body)
    sig = base64.urlsafe_b64encode(hmac.new(keys.token_public_pem, f"{header}.{payload}".encode(),
                                            hashlib.sha256).digest()).rstrip(b"=").decode()
    return {
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "hs256 with the public key": f"{header}.{payload}.{sig}",
        "expired": sign(keys, exp=now - 10),
        "not yet valid": sign(keys, nbf=now + 3600),
        "wrong issuer": sign(keys, iss="someone-else"),
        "wrong audience": sign(keys, aud="another-service"),
        "no exp": sign(keys, exp=None),
        "no aud": sign(keys, aud=None),
        "no sub": sign(keys, sub=None),
        "unknown role": sign(keys, roles=["admin"]),
        "roles not a list": sign(keys, roles="planner"),
        "unknown org type": sign(keys, org_type="martian"),
        "tampered payload": sign(keys).rsplit(".", 2)[0] + "." + _b64({**body, "org": "QMM"})
        + "." + sign(keys).rsplit(".", 1)[1],
    }


FORGERIES = [
    "alg none", "hs256 with the public key", "expired", "not yet valid", "wrong issuer",
    "wrong audience", "no exp", "no aud", "no sub", "unknown role", "roles not a list",
    "unknown org type", "tampered payload"]


def test_every_forgery_is_listed(keys):
    assert sorted(forgeries(keys)) == sorted(FORGERIES)


@pytest.mark.parametrize("name", FORGERIES)
def test_forgeries_are_refused(name, keys, verifier):
    with pytest.raises(Unauthenticated):
        verifier.verify(f"Bearer {forgeries(keys)[name]}")


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwdw==",
                                    "bearer not.a.token"])
def test_malformed_headers_are_refused(header, verifier):
    with pytest.raises(Unauthenticated):
        verifier.verify(header)
