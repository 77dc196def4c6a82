"""The state directory: keys created on first start, kept with owner-only permissions."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.keyset import public_jwk, read_jwks


@dataclass(frozen=True)
class DemoKey:
    """A demo issuer's signing key. The private half stays in the state directory; the public
    half is published in the JWKS under ``kid``, which tokens signed with it name."""

    algorithm: str
    kid: str
    filename: str

    def generate(self) -> Any:
        if self.algorithm == "ES256":
            return ec.generate_private_key(ec.SECP256R1())
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)


#: the demo issuer's keys by algorithm: RS256 (the one tokens have always used) and ES256
DEMO_KEYS = {
    "RS256": DemoKey("RS256", "demo", "token-signing-key.pem"),
    "ES256": DemoKey("ES256", "demo-es256", "token-signing-key-es256.pem"),
}


@dataclass(frozen=True)
class StateKeys:
    #: private PEM of each demo key, by algorithm
    demo_private_pems: dict[str, bytes]
    token_public_pem: bytes
    jwks_path: Path
    audit_key: bytes
    checkpoint_key: ed25519.Ed25519PrivateKey

    @property
    def token_private_pem(self) -> bytes:
        """The RS256 demo key, which signs tokens unless another algorithm is asked for."""
        return self.demo_private_pems["RS256"]

    @property
    def checkpoint_public_key(self) -> ed25519.Ed25519PublicKey:
        return self.checkpoint_key.public_key()


def ensure_state(state_dir: Path) -> StateKeys:
    """Create the state directory and its keys if missing, then load them.

    The token keys (for the demo issuer) and the audit MAC key are separate, so that a leaked
    token key cannot be used to rewrite the audit trail. A demo key's public half goes into
    ``keys/jwks.json`` when the key is made or the JWKS is first written (a state directory
    from before there was one); after that the file is the operator's: a demo key removed from
    it stays removed, so the demo issuer can be switched off for good.
    """
    keys = Path(state_dir) / "keys"
    keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    public = keys / "token-signing-key.pub.pem"
    jwks = keys / "jwks.json"
    audit = keys / "audit-mac.key"
    checkpoint = keys / "audit-checkpoint-key.pem"
    # Read first: a broken JWKS stops the start before any new key is made and left unpublished.
    existing = read_jwks(jwks.read_bytes(), str(jwks)) if jwks.exists() else None
    publish: list[dict[str, Any]] = []
    private_pems: dict[str, bytes] = {}
    for demo in DEMO_KEYS.values():
        path = keys / demo.filename
        made = not path.exists()
        if made:
            _write_secret(path, _private_pem(demo.generate()))
        private_pems[demo.algorithm] = path.read_bytes()
        if made or existing is None:
            key = serialization.load_pem_private_key(private_pems[demo.algorithm], None)
            publish.append(public_jwk(key.public_key(), demo.kid, demo.algorithm))
    if publish:
        _publish(jwks, existing or {"keys": []}, publish)
    rsa_public = _public_pem(serialization.load_pem_private_key(private_pems["RS256"], None))
    if not public.exists() or public.read_bytes() != rsa_public:
        public.write_bytes(rsa_public)
    if not audit.exists():
        _write_secret(audit, secrets.token_hex(32).encode("ascii"))
    if not checkpoint.exists():
        key = ed25519.Ed25519PrivateKey.generate()
        _write_secret(checkpoint, _private_pem(key))
        # The public half is what IG staff keep to check head checkpoints.
        (keys / "audit-checkpoint-key.pub.pem").write_bytes(_public_pem(key))
    return StateKeys(
        demo_private_pems=private_pems,
        token_public_pem=rsa_public,
        jwks_path=jwks,
        audit_key=bytes.fromhex(audit.read_text().strip()),
        checkpoint_key=serialization.load_pem_private_key(checkpoint.read_bytes(), None),
    )


def _publish(jwks: Path, doc: dict[str, Any], new: list[dict[str, Any]]) -> None:
    """Put public keys into the JWKS, replacing any of the same kid and keeping the others."""
    kids = [k["kid"] for k in new]  # a list: an operator's kid may be any JSON, even a list
    doc["keys"] = [k for k in doc["keys"] if not (isinstance(k, dict) and k.get("kid") in kids)]
    doc["keys"].extend(new)
    # Atomic, so a running gateway never reads half a file; public, so 0644.
    _write_atomic(jwks, (json.dumps(doc, indent=2) + "\n").encode(), 0o644)


def _private_pem(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _public_pem(key: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def _write_secret(path: Path, data: bytes) -> None:
    _write_atomic(path, data, 0o600)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
