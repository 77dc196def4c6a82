"""Bearer token verification (and issuing, for the demo issuer).

Signatures are checked with an allow-listed algorithm only (RS256 here), and ``exp``, ``iss``,
``aud`` and ``sub`` are required: PyJWT accepts a token without ``exp`` unless told to require it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

from gateway.errors import Unauthenticated
from policies import Caller

ALGORITHMS = ["RS256"]
REQUIRED = ["exp", "iss", "aud", "sub", "iat"]
ORG_TYPES = {"local_authority", "icb", "nhs_trust", "university", "regulator", "commercial"}
ROLES = {"researcher", "planner", "ig_auditor"}


@dataclass(frozen=True)
class TokenVerifier:
    public_pem: bytes
    issuer: str
    audience: str
    leeway_s: int = 30

    def verify(self, authorization: str | None) -> Caller:
        if not authorization:
            raise Unauthenticated(
                "missing bearer token", hint="send 'Authorization: Bearer <token>'"
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated(
                "the Authorization header is not a bearer token",
                hint="send 'Authorization: Bearer <token>'",
            )
        try:
            claims = jwt.decode(
                token.strip(),
                self.public_pem,
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": REQUIRED},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired", hint="get a new token") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from None
        return _caller(claims)


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
) -> str:
    """Sign a token for the demo issuer (the state directory's key)."""
    now = int(now if now is not None else time.time())
    claims = {
        "iss": issuer, "aud": audience, "sub": sub, "org": org, "org_type": org_type,
        "roles": list(roles), "projects": list(projects), "iat": now, "nbf": now,
        "exp": now + int(ttl_s),
    }
    return jwt.encode(claims, private_pem, algorithm="RS256", headers={"kid": "demo"})
