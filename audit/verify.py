"""Offline verification of a trail: intact, or the first bad entry and why."""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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


def verify_trail(
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
