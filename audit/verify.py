"""Offline verification of a trail: intact, or the first bad entry and why."""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from audit.checkpoint import read_checkpoint
from audit.trail import GENESIS_HASH, entry_hash, entry_mac


@dataclass(frozen=True)
class Verification:
    ok: bool
    entries: int
    head_hash: str
    first_bad_line: int | None = None
    first_bad_seq: int | None = None
    reason: str | None = None
    torn_tail: bool = False
    #: the signed head the trail was checked against, if any
    checkpoint_seq: int | None = None


def verify_trail(
    path: Path, key: bytes, progress: Callable[[int, int], None] | None = None, *,
    public_key: Ed25519PublicKey | None = None, expect_head: tuple[int, str] | None = None,
) -> Verification:
    """Check the chain and MACs, then that the trail reaches its signed head (and any head
    recorded elsewhere): a trail cut short is still a valid chain, so the heads catch it."""
    result = _verify_chain(path, key, progress)
    heads: list[tuple[int, str, str]] = []
    if public_key is not None:
        try:
            cp = read_checkpoint(path, public_key)
        except ValueError as exc:
            return _replace(result, ok=False, reason=str(exc))
        if cp is not None:
            heads.append((cp.seq, cp.hash, "the signed head checkpoint"))
            result = _replace(result, checkpoint_seq=cp.seq)
    if expect_head is not None:
        heads.append((expect_head[0], expect_head[1], "the expected head"))
    if not result.ok:
        return result
    for seq, digest, name in heads:
        if seq > result.entries:
            return _replace(result, ok=False, first_bad_seq=result.entries + 1,
                            reason=f"truncated: {name} records entry {seq}, the trail ends "
                            f"at {result.entries}")
        if _hash_at(path, seq) != digest:
            return _replace(result, ok=False, first_bad_seq=seq,
                            reason=f"entry {seq} does not match {name}")
    return result


def _replace(v: Verification, **changes) -> Verification:
    return Verification(**{**v.__dict__, **changes})


def _hash_at(path: Path, seq: int) -> str | None:
    if seq == 0:
        return GENESIS_HASH
    with Path(path).open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == seq:
                return json.loads(raw)["hash"]
    return None


def _verify_chain(
    path: Path, key: bytes, progress: Callable[[int, int], None] | None = None
) -> Verification:
    """Walk the chain from the start; stop at the first entry that does not hold."""
    path = Path(path)
    size = path.stat().st_size
    prev_hash, expected_seq, count = GENESIS_HASH, 1, 0
    done = 0
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            done += len(raw)
            if progress and lineno % 10000 == 0:
                progress(done, size)
            if not raw.endswith(b"\n"):
                return Verification(
                    False, count, prev_hash, lineno, expected_seq,
                    "the last line is incomplete (a write was cut off, as by a crash)",
                    torn_tail=True,
                )
            try:
                entry = json.loads(raw)
                seq, stored_hash, mac = entry["seq"], entry["hash"], entry["mac"]
            except (ValueError, KeyError, TypeError):
                return _bad(count, prev_hash, lineno, expected_seq, "not a valid entry")
            if seq != expected_seq:
                return _bad(
                    count, prev_hash, lineno, seq,
                    f"sequence number {seq} where {expected_seq} was expected "
                    "(an entry was deleted, inserted or moved)",
                )
            if entry.get("prev_hash") != prev_hash:
                return _bad(count, prev_hash, lineno, seq, "does not chain to the entry before")
            if entry_hash(entry) != stored_hash:
                return _bad(count, prev_hash, lineno, seq, "content does not match its hash (edited)")
            if not hmac.compare_digest(entry_mac(key, stored_hash), str(mac)):
                return _bad(count, prev_hash, lineno, seq, "MAC does not match (rewritten without the audit key)")
            prev_hash, expected_seq, count = stored_hash, expected_seq + 1, count + 1
    if progress:
        progress(size, size)
    return Verification(True, count, prev_hash)


def _bad(count: int, head: str, lineno: int, seq: int, reason: str) -> Verification:
    return Verification(False, count, head, lineno, seq, reason)
