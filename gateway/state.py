"""The state directory: keys created on first start, kept with owner-only permissions."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa


@dataclass(frozen=True)
class StateKeys:
    token_private_pem: bytes
    token_public_pem: bytes
    audit_key: bytes
    checkpoint_key: ed25519.Ed25519PrivateKey

    @property
    def checkpoint_public_key(self) -> ed25519.Ed25519PublicKey:
        return self.checkpoint_key.public_key()


def ensure_state(state_dir: Path) -> StateKeys:
    """Create the state directory and its keys if missing, then load them.

    The token key (RS256, for the demo issuer) and the audit MAC key are separate, so that a
    leaked token key cannot be used to rewrite the audit trail.
    """
    keys = Path(state_dir) / "keys"
    keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = keys / "token-signing-key.pem"
    public = keys / "token-signing-key.pub.pem"
    audit = keys / "audit-mac.key"
    checkpoint = keys / "audit-checkpoint-key.pem"
    if not private.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_secret(private, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ))
        public.write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo,
        ))
    if not audit.exists():
        _write_secret(audit, secrets.token_hex(32).encode("ascii"))
    if not checkpoint.exists():
        key = ed25519.Ed25519PrivateKey.generate()
        _write_secret(checkpoint, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ))
        # The public half is what IG staff keep to check head checkpoints.
        (keys / "audit-checkpoint-key.pub.pem").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo,
        ))
    return StateKeys(
        token_private_pem=private.read_bytes(),
        token_public_pem=public.read_bytes(),
        audit_key=bytes.fromhex(audit.read_text().strip()),
        checkpoint_key=serialization.load_pem_private_key(checkpoint.read_bytes(), None),
    )


def _write_secret(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
