"""The token verification keys: a JWKS file in the state directory, reloaded when it changes.

Operators rotate keys by editing ``keys/jwks.json``; the gateway notices without a restart. The
file is checked at most once per ``check_every_s`` (one ``stat``, re-read only when its mtime,
ctime, size or inode moved, re-parsed only when its bytes did), and re-read once more, at most
once per ``refresh_unknown_every_s``, when a token names a kid it does not hold, so that a key
just added verifies at once while a stream of made-up kids costs one read a second at most.

Each key's algorithm comes from the key itself (its ``alg``, else its ``kty`` and curve), never
from a token, and only RS256 (RSA, at least 2048 bits) and ES256 (EC P-256) public signing keys
are taken. A key that breaks a rule is skipped and logged; a file that cannot be read or parsed
at run time leaves no key at all (every token is refused until it is mended) rather than the
keys of before, so that removing a compromised key with a slip of the pen never keeps it alive.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog
from jwt import PyJWK
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.exceptions import PyJWTError

log = structlog.get_logger("sde_gateway.keys")

#: the algorithms a published key may verify, and the key type each needs
KEY_TYPES = {"RS256": "RSA", "ES256": "EC"}
#: JWK members that only a private key has: a public key set must never hold one
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


class KeySet:
    """The public keys of ``path`` by kid, kept in step with the file."""

    def __init__(self, path: Path, *, check_every_s: float = 1.0,
                 refresh_unknown_every_s: float = 1.0) -> None:
        self.path = Path(path)
        self.check_every_s = check_every_s
        self.refresh_unknown_every_s = refresh_unknown_every_s
        self._lock = threading.Lock()
        self._keys: dict[str, PyJWK] = {}
        self._stamp: tuple[int, ...] | None = None
        self._digest: bytes | None = None
        self._error: str | None = None
        self._checked = self._refreshed = time.monotonic()
        # At start a bad file stops the server (ValueError) instead of serving with no keys.
        stamp = _stamp(self.path)
        data = self.path.read_bytes()
        self._keys = parse_jwks(data, str(self.path))
        self._stamp, self._digest = stamp, hashlib.sha256(data).digest()

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def get(self, kid: str) -> PyJWK | None:
        """The key published under ``kid`` now, or None."""
        now = time.monotonic()
        if now - self._checked >= self.check_every_s:
            self._reload(now, force=False)
        key = self._keys.get(kid)
        if key is None and now - self._refreshed >= self.refresh_unknown_every_s:
            self._reload(now, force=True)
            key = self._keys.get(kid)
        return key

    def _reload(self, now: float, *, force: bool) -> None:
        with self._lock:
            if force:
                if now - self._refreshed < self.refresh_unknown_every_s:
                    return  # another thread has just refreshed
                self._refreshed = now
            elif now - self._checked < self.check_every_s:
                return
            self._checked = now
            try:
                # The stat before the read: a write that lands after it moves the stamp again.
                stamp = _stamp(self.path)
                if stamp == self._stamp and not force:
                    return
                data = self.path.read_bytes()
            except OSError as exc:
                self._replace({}, None, None, error=f"cannot read: {exc.strerror}")
                return
            digest = hashlib.sha256(data).digest()
            if digest == self._digest:
                self._stamp = stamp
                return
            try:
                keys = parse_jwks(data, str(self.path))
            except ValueError as exc:
                self._replace({}, stamp, digest, error=str(exc))
                return
            self._replace(keys, stamp, digest)

    def _replace(self, keys: dict[str, PyJWK], stamp: tuple[int, ...] | None,
                 digest: bytes | None, error: str | None = None) -> None:
        if error is None:
            log.info("jwks_reloaded", path=str(self.path), kids=sorted(keys))
        elif error != self._error:  # once when it breaks, not every second until mended
            log.error("jwks_unusable_no_token_verifies", path=str(self.path), error=error)
        self._keys, self._stamp, self._digest, self._error = keys, stamp, digest, error


def _stamp(path: Path) -> tuple[int, ...]:
    st = path.stat()
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


def parse_jwks(data: bytes, source: str) -> dict[str, PyJWK]:
    """The usable keys of a JWKS document by kid. Raises ValueError if it is not a JWKS at all;
    skips (and logs) single keys that break a rule, so one bad key does not take the rest down."""
    keys: dict[str, PyJWK] = {}
    for i, jwk in enumerate(read_jwks(data, source)["keys"]):
        try:
            kid, key = _public_key(jwk)
            if kid in keys:
                raise ValueError(f"kid {kid!r} appears twice")
        except ValueError as exc:
            log.error("jwks_key_skipped", path=source, index=i, error=str(exc))
            continue
        keys[kid] = key
    if not keys:
        log.warning("jwks_has_no_usable_key", path=source)
    return keys


def read_jwks(data: bytes, source: str) -> dict[str, Any]:
    """The JWKS document as JSON, or ValueError naming the file if it is not one."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError(f'{source} is not a JWKS: expected {{"keys": [...]}}')
    return doc


def _public_key(jwk: Any) -> tuple[str, PyJWK]:
    """One JWK as (kid, key), with the algorithm the key itself decides."""
    if not isinstance(jwk, Mapping):
        raise ValueError("not a JSON object")
    kid, kty, alg = jwk.get("kid"), jwk.get("kty"), jwk.get("alg")
    if not isinstance(kid, str) or not kid:
        raise ValueError("no kid: every key must be named, and tokens must name it")
    if PRIVATE_MEMBERS & set(jwk):
        raise ValueError(f"kid {kid!r} is a private or symmetric key; publish public keys only")
    if alg is None and isinstance(kty, str):
        alg = {"RSA": "RS256", "EC": "ES256"}.get(kty)
    if not isinstance(alg, str) or KEY_TYPES.get(alg) != kty:
        raise ValueError(f"kid {kid!r}: alg {alg!r} with kty {kty!r} is not RS256/RSA or "
                         "ES256/EC")
    if kty == "EC" and jwk.get("crv") != "P-256":
        raise ValueError(f"kid {kid!r}: ES256 needs curve P-256, not {jwk.get('crv')!r}")
    key_ops = jwk.get("key_ops", ["verify"])
    if jwk.get("use", "sig") != "sig" or not isinstance(key_ops, list) or "verify" not in key_ops:
        raise ValueError(f"kid {kid!r}: not a signature key (use {jwk.get('use')!r}, key_ops "
                         f"{jwk.get('key_ops')!r})")
    try:
        key = PyJWK(dict(jwk), algorithm=alg)
    except PyJWTError as exc:
        raise ValueError(f"kid {kid!r}: {exc}") from None
    weak = key.Algorithm.check_key_length(key.key)
    if weak:
        raise ValueError(f"kid {kid!r}: {weak}")
    return kid, key


def public_jwk(public_key: Any, kid: str, alg: str) -> dict[str, Any]:
    """The JWK to publish for a public key (the demo issuer's, or a test's)."""
    codec = {"RS256": RSAAlgorithm, "ES256": ECAlgorithm}[alg]
    return {**codec.to_jwk(public_key, as_dict=True), "kid": kid, "alg": alg, "use": "sig"}
