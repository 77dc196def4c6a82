"""Signed checkpoints of the trail's head, so that truncation is detected.

A chain alone cannot show that entries were cut from its end: what remains is still a valid
chain. After every append the writer signs (seq, hash) of the new head with an Ed25519 key and
replaces the checkpoint file. Verification requires the trail to reach the checkpointed entry.
IG staff hold the public key, and can also record a head reported by ``/v1/audit/verify`` and
pass it to the offline verifier later (``--expect-head``), which catches a rollback of the
trail and the checkpoint file together.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str
    time: str
    signature: str

    def message(self) -> bytes:
        return f"sde-gateway-audit-head:{self.seq}:{self.hash}:{self.time}".encode("ascii")


def checkpoint_path(trail_path: Path) -> Path:
    return Path(str(trail_path) + ".head")


def write_checkpoint(trail_path: Path, key: Ed25519PrivateKey, seq: int, digest: str,
                     time: str) -> None:
    unsigned = Checkpoint(seq, digest, time, "")
    cp = Checkpoint(seq, digest, time, key.sign(unsigned.message()).hex())
    target = checkpoint_path(trail_path)
    tmp = target.with_suffix(".head.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(cp.__dict__, sort_keys=True).encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)


def read_checkpoint(trail_path: Path, public_key: Ed25519PublicKey) -> Checkpoint | None:
    """The signed head, or None if there is none. Raises ValueError if it is forged."""
    path = checkpoint_path(trail_path)
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
        cp = Checkpoint(int(raw["seq"]), str(raw["hash"]), str(raw["time"]), str(raw["signature"]))
        public_key.verify(bytes.fromhex(cp.signature), cp.message())
    except (ValueError, KeyError, TypeError, InvalidSignature) as exc:
        raise ValueError(f"the head checkpoint {path.name} is not validly signed") from exc
    return cp
