"""Bearer token verification (and issuing, for the demo issuer).

A token is checked with the one key its ``kid`` names in the state directory's JWKS
(``gateway/keyset.py``), under the algorithm that key decides (RS256 or ES256): the token's
``alg`` must agree with the key, so an RSA key never verifies an ES256 token, nor a public key
an HS256 one. Keys a token brings along (``jku``, ``jwk``, ``x5u``, ``x5c`` headers) are never
looked at. HS256 is taken only in an explicit development mode, with a secret of at least 32
bytes, under kid ``dev-hmac``. ``exp``, ``iss``, ``aud``, ``sub`` and ``iat`` are required:
PyJWT accepts a token without ``exp`` unless told to require it.
"""

from __future__ import annotations

import time

import jwt
from jwt import PyJWK
from jwt.utils import base64url_encode

from gateway.errors import Unauthenticated
from gateway.keyset import KEY_TYPES, KeySet
from policies import Caller

#: the kid of the development-only HMAC key (never in the JWKS: the secret is not public)
DEV_HMAC_KID = "dev-hmac"
REQUIRED = ["exp", "iss", "aud", "sub", "iat"]
ORG_TYPES = {"local_authority", "icb", "nhs_trust", "university", "regulator", "commercial"}
ROLES = {"researcher", "planner", "ig_auditor"}
BEARER_HINT = "send 'Authorization: Bearer <token>'"


class TokenVerifier:
    """Turns an Authorization header into a Caller, or raises Unauthenticated (401)."""

    def __init__(self, keys: KeySet, issuer: str, audience: str, leeway_s: int = 30,
                 dev_hmac_secret: bytes | None = None) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.leeway_s = leeway_s
        self._dev_key: PyJWK | None = None
        if dev_hmac_secret is not None:
            key = PyJWK({"kty": "oct", "k": base64url_encode(dev_hmac_secret).decode(),
                         "alg": "HS256", "kid": DEV_HMAC_KID})
            weak = key.Algorithm.check_key_length(key.key)
            if weak:
                raise ValueError(f"the development HMAC secret is too short: {weak}")
            self._dev_key = key

    def verify(self, authorization: str | None) -> Caller:
        if not authorization:
            raise Unauthenticated("missing bearer token", hint=BEARER_HINT)
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("the Authorization header is not a bearer token",
                                  hint=BEARER_HINT)
        key = self._key_for(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[key.algorithm_name],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": REQUIRED, "enforce_minimum_key_length": True},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired", hint="get a new token") from None
        except jwt.ImmatureSignatureError as exc:
            raise Unauthenticated(f"invalid token: {exc}",
                                  hint="check the issuer's clock") from None
        except jwt.PyJWTError as exc:  # InvalidTokenError, and InvalidKeyError for weak keys
            raise Unauthenticated(f"invalid token: {exc}") from None
        return _caller(claims)

    def _key_for(self, token: str) -> PyJWK:
        """The key the token's kid names, if its algorithm is the token's. The header is read
        unverified only to pick the key; nothing else in it is trusted."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg == "HS256" and self._dev_key is None:
            raise Unauthenticated("invalid token: HS256 is accepted only in development mode",
                                  hint=f"sign with a key in the JWKS ({', '.join(KEY_TYPES)})")
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("invalid token: no kid in its header to name the signing key",
                                  hint="the issuer must set kid to a key in the gateway's JWKS")
        key = self._dev_key if kid == DEV_HMAC_KID and self._dev_key else self.keys.get(kid)
        if key is None:
            raise Unauthenticated(f"invalid token: no key with kid {_shown(kid)} is trusted",
                                  hint="the key may have been rotated out: get a new token")
        if alg != key.algorithm_name:
            raise Unauthenticated(f"invalid token: kid {_shown(kid)} is an "
                                  f"{key.algorithm_name} key; the token says alg {_shown(alg)}")
        return key


def _shown(value: object) -> str:
    """A header value for a message, cut short: headers are the sender's to fill."""
    text = repr(value)
    return text if len(text) <= 66 else text[:63] + "..."


def _caller(claims: dict) -> Caller:
    def strings(name: str) -> tuple[str, ...]:
        value = claims.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise Unauthenticated(f"invalid token: claim {name!r} must be a list of strings")
        return tuple(value)

    for name in ("sub", "org", "org_type"):
        if not isinstance(claims.get(name), str) or not claims[name]:
            raise Unauthenticated(f"invalid token: claim {name!r} is missing or not a string")
    if claims["org_type"] not in ORG_TYPES:
        raise Unauthenticated(f"invalid token: unknown org_type {claims['org_type']!r}")
    roles = strings("roles")
    if not roles or set(roles) - ROLES:
        raise Unauthenticated(f"invalid token: roles must be among {sorted(ROLES)}")
    return Caller(
        sub=claims["sub"], org=claims["org"], org_type=claims["org_type"],
        roles=roles, projects=strings("projects"),
    )


def issue_token(
    private_pem: bytes, *, issuer: str, audience: str, sub: str, org: str, org_type: str,
    roles: list[str], projects: list[str], ttl_s: int = 3600, now: float | None = None,
    algorithm: str = "RS256", kid: str = "demo",
) -> str:
    """Sign a token for the demo issuer (one of the state directory's keys, named by ``kid``
    in its JWKS)."""
    now = int(now if now is not None else time.time())
    claims = {
        "iss": issuer, "aud": audience, "sub": sub, "org": org, "org_type": org_type,
        "roles": list(roles), "projects": list(projects), "iat": now, "nbf": now,
        "exp": now + int(ttl_s),
    }
    return jwt.encode(claims, private_pem, algorithm=algorithm, headers={"kid": kid})
