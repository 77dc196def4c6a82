"""Real keys and real signatures for the auth tests: tokens as an honest issuer or a forger
makes them. The forgery matrix lives here once, for the verifier's unit tests and the HTTP app."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from gateway.auth import issue_token
from gateway.keyset import public_jwk
from gateway.state import DEMO_KEYS, StateKeys

ISSUER = AUDIENCE = "sde-gateway"
CALLER = dict(sub="p.jones", org="E10000020", org_type="local_authority", roles=["planner"],
              projects=["JOINT-PLANNING"])
#: a secret of the right length, for development mode (and for showing it is refused without)
DEV_SECRET = b"a development secret, 32+ bytes long"


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def demo_key(keys: StateKeys, alg: str) -> Any:
    return load_pem_private_key(keys.demo_private_pems[alg], None)


def demo_token(keys: StateKeys, alg: str) -> str:
    """A genuine token for p.jones from the demo issuer's key of ``alg``, as the CLI signs it."""
    return issue_token(keys.demo_private_pems[alg], issuer=ISSUER, audience=AUDIENCE,
                       algorithm=alg, kid=DEMO_KEYS[alg].kid, **CALLER)


def claims(**over: Any) -> dict[str, Any]:
    """Valid claims for p.jones; an override of None leaves the claim out."""
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "iat": now, "nbf": now, "exp": now + 300, **CALLER,
            **over}
    return {k: v for k, v in body.items() if v is not None}


def sign(key: Any, alg: str, kid: str | None, body: dict[str, Any] | None = None,
         **headers: Any) -> str:
    """A token signed by ``key`` with PyJWT, naming ``kid`` (none if None)."""
    if kid is not None:
        headers["kid"] = kid
    return jwt.encode(body if body is not None else claims(), key, algorithm=alg,
                      headers=headers)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _segment(obj: dict[str, Any]) -> str:
    return _b64(json.dumps(obj).encode())


def hs256(secret: bytes, kid: str | None, body: dict[str, Any] | None = None) -> str:
    """HS256 by hand: PyJWT refuses to use a PEM or JWK as an HMAC secret, a forger does not."""
    header = {"alg": "HS256", "typ": "JWT", **({"kid": kid} if kid else {})}
    signing_input = f"{_segment(header)}.{_segment(body or claims())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def unsigned(kid: str | None) -> str:
    header = {"alg": "none", "typ": "JWT", **({"kid": kid} if kid else {})}
    return f"{_segment(header)}.{_segment(claims())}."


def tampered(token: str, **changes: Any) -> str:
    """The token with its payload edited and its signature kept."""
    header, payload, signature = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return f"{header}.{_segment({**body, **changes})}.{signature}"


def write_jwks(path: Path, keys: list[dict[str, Any]]) -> None:
    """Replace the JWKS as operators are told to: write a new file, then rename it over."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(json.dumps({"keys": keys}, indent=2))
    os.replace(tmp, path)


def read_jwks(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text())["keys"]


class Forger:
    """Keys a forger holds (their own) or can read (the gateway's public keys), and the demo
    keys, to make each token of the matrix against one state directory."""

    def __init__(self, keys: StateKeys, leeway_s: int) -> None:
        self.keys = keys
        self.rs, self.es = demo_key(keys, "RS256"), demo_key(keys, "ES256")
        self.rs_kid, self.es_kid = DEMO_KEYS["RS256"].kid, DEMO_KEYS["ES256"].kid
        self.demo_jwk = next(k for k in read_jwks(keys.jwks_path) if k["kid"] == self.rs_kid)
        self.stranger_rs, self.stranger_es = rsa_key(), ec_key()
        now = int(time.time())
        self.beyond, self.past = now + leeway_s + 120, now - leeway_s - 120

    def demo(self, body: dict[str, Any] | None = None, **headers: Any) -> str:
        """A genuine RS256 token of the demo issuer, with ``body`` as its claims."""
        return sign(self.rs, "RS256", self.rs_kid, body, **headers)


SIGNATURE = "Signature verification failed"
HS256_REFUSED = "HS256 is accepted only in development mode"

#: every forged or invalid token the gateway must refuse: how to make it, and (a fragment of)
#: the reason it is refused for, so that each is refused for the right reason
FORGERIES: dict[str, tuple[Any, str]] = {
    "alg none": (lambda f: unsigned(f.rs_kid), "is an RS256 key; the token says alg 'none'"),
    "alg none, no kid": (lambda f: unsigned(None), "no kid"),
    "HS256 signed with the RSA public key (PEM)": (
        lambda f: hs256(f.keys.token_public_pem, f.rs_kid), HS256_REFUSED),
    "HS256 signed with the RSA public key (JWK)": (
        lambda f: hs256(json.dumps(f.demo_jwk).encode(), f.rs_kid), HS256_REFUSED),
    "HS256 signed with the RSA public key (compact JWK)": (
        lambda f: hs256(json.dumps(f.demo_jwk, separators=(",", ":")).encode(), f.rs_kid),
        HS256_REFUSED),
    "HS256 with the development kid, development mode off": (
        lambda f: hs256(DEV_SECRET, "dev-hmac"), HS256_REFUSED),
    "wrong iss": (lambda f: f.demo(claims(iss="someone-else")), "Invalid issuer"),
    "wrong aud": (lambda f: f.demo(claims(aud="another-service")), "Audience doesn't match"),
    "expired": (lambda f: f.demo(claims(iat=f.past - 300, nbf=f.past - 300, exp=f.past)),
                "the token has expired"),
    "not yet valid (nbf)": (lambda f: f.demo(claims(nbf=f.beyond)), "not yet valid (nbf)"),
    "not yet valid (iat)": (lambda f: f.demo(claims(iat=f.beyond, nbf=None)),
                            "not yet valid (iat)"),
    "no exp": (lambda f: f.demo(claims(exp=None)), 'missing the "exp" claim'),
    "no iat": (lambda f: f.demo(claims(iat=None)), 'missing the "iat" claim'),
    "no iss": (lambda f: f.demo(claims(iss=None)), 'missing the "iss" claim'),
    "no aud": (lambda f: f.demo(claims(aud=None)), 'missing the "aud" claim'),
    "no sub": (lambda f: f.demo(claims(sub=None)), 'missing the "sub" claim'),
    "unknown kid": (lambda f: sign(f.rs, "RS256", "no-such-key"), "no key with kid 'no-such-key'"),
    "no kid": (lambda f: sign(f.rs, "RS256", None), "no kid"),
    "ES256 token naming the RSA key": (
        lambda f: sign(f.es, "ES256", f.rs_kid), "kid 'demo' is an RS256 key; the token says "
        "alg 'ES256'"),
    "RS256 token naming the EC key": (
        lambda f: sign(f.rs, "RS256", f.es_kid), "kid 'demo-es256' is an ES256 key; the token "
        "says alg 'RS256'"),
    "RSA key not in the JWKS, valid kid": (
        lambda f: sign(f.stranger_rs, "RS256", f.rs_kid), SIGNATURE),
    "EC key not in the JWKS, valid kid": (
        lambda f: sign(f.stranger_es, "ES256", f.es_kid), SIGNATURE),
    "tampered payload (RS256)": (lambda f: tampered(f.demo(), org="E10000029"), SIGNATURE),
    "tampered payload (ES256)": (
        lambda f: tampered(sign(f.es, "ES256", f.es_kid), roles=["ig_auditor"]), SIGNATURE),
    "jku header to the forger's keys": (
        lambda f: sign(f.stranger_rs, "RS256", "forger", jku="https://forger.example/jwks"),
        "no key with kid 'forger'"),
    "jku header with a trusted kid": (
        lambda f: sign(f.stranger_rs, "RS256", f.rs_kid, jku="https://forger.example/jwks"),
        SIGNATURE),
    "jwk header with the forger's key": (
        lambda f: sign(f.stranger_es, "ES256", f.es_kid,
                       jwk=public_jwk(f.stranger_es.public_key(), f.es_kid, "ES256")),
        SIGNATURE),
    "jwk header, no kid": (
        lambda f: sign(f.stranger_rs, "RS256", None,
                       jwk=public_jwk(f.stranger_rs.public_key(), "x", "RS256")),
        "no kid"),
    "x5u header": (
        lambda f: sign(f.stranger_rs, "RS256", f.rs_kid, x5u="https://forger.example/c.pem"),
        SIGNATURE),
    "unknown role": (lambda f: f.demo(claims(roles=["admin"])), "roles must be among"),
    "roles not a list": (lambda f: f.demo(claims(roles="planner")), "must be a list"),
    "unknown org type": (lambda f: f.demo(claims(org_type="martian")), "unknown org_type"),
    "garbage": (lambda f: "not-a-jwt", "invalid token"),
}
