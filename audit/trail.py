"""The append-only, hash-chained, keyed audit trail (JSON Lines).

Each line is one entry: the caller's record plus ``seq``, ``time``, ``prev_hash``, ``hash``
and ``mac``. ``hash`` is SHA-256 over the canonical serialisation of the entry without
``hash`` and ``mac`` (so it covers ``prev_hash``, chaining the entries); ``mac`` is
HMAC-SHA256 of ``hash`` under the audit key, so that someone who can write the file but does
not hold the key cannot rebuild a consistent chain.

An append returns only after the line is written and fsync'd: an acknowledged entry is on
disk. Appends are serialised across threads (a lock) and processes (``flock`` on the file);
appends that arrive together are written together (group commit: one fsync for the batch).
This module imports nothing from the rest of the project, so IG staff can verify a trail
without trusting the gateway.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.checkpoint import read_checkpoint, write_checkpoint

GENESIS_HASH = "0" * 64
RESERVED = frozenset({"seq", "time", "prev_hash", "hash", "mac"})


class AuditWriteError(RuntimeError):
    """The entry could not be made durable; the caller must not release anything."""


def canonical(obj: Any) -> bytes:
    """The one serialisation that hashes are computed over, and the line that is written.

    ASCII-only, so that every entry is exactly one line for any reader: with raw UTF-8, a SQL
    text holding U+2028 or U+0085 splits the entry for tools that break lines the Unicode way.
    """
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k not in ("hash", "mac")}
    return hashlib.sha256(canonical(body)).hexdigest()


def entry_mac(key: bytes, digest: str) -> str:
    return hmac.new(key, digest.encode("ascii"), hashlib.sha256).hexdigest()


class _Pending:
    """One record waiting for its batch to reach the disk."""

    __slots__ = ("record", "done", "entry", "error")

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        self.done = threading.Event()
        self.entry: dict[str, Any] | None = None
        self.error: AuditWriteError | None = None


class AuditTrail:
    """Appends entries to one trail file, and signs its head after each append."""

    def __init__(
        self, path: Path, key: bytes, checkpoint_key: Ed25519PrivateKey | None = None
    ) -> None:
        if len(key) < 32:
            raise ValueError("the audit key must be at least 32 bytes")
        self.path = Path(path)
        self._key = key
        self._checkpoint_key = checkpoint_key
        self._lock = threading.Lock()  # held by the thread writing a batch
        self._queue_lock = threading.Lock()
        self._queue: list[_Pending] = []
        #: the last write error, or None once a write has succeeded since
        self.last_error: str | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(exist_ok=True)

    @property
    def healthy(self) -> bool:
        return self.last_error is None

    def recover(self) -> dict[str, Any] | None:
        """Set aside a torn last line left by a crash, and record that it was.

        A torn line is a write that never completed, so it was never acknowledged: nothing
        that a client received is lost by removing it. The fragment is kept beside the trail
        for inspection, and an entry says how many bytes were set aside and their hash.
        """
        with self._lock:
            data = self.path.read_bytes()
            if not data or data.endswith(b"\n"):
                return None
            cut = data.rfind(b"\n") + 1
            fragment = data[cut:]
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
            aside = self.path.with_name(f"{self.path.name}.torn-{stamp}")
            aside.write_bytes(fragment)
            with self.path.open("r+b") as fh:
                fh.truncate(cut)
                os.fsync(fh.fileno())
        return self.append({
            "event": "trail_recovered",
            "torn_bytes": len(fragment),
            "torn_sha256": hashlib.sha256(fragment).hexdigest(),
            "set_aside_as": aside.name,
        })

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Write one entry durably and return it (with seq, hash and mac).

        Group commit: appends that arrive while another is being written wait for it, then
        go to disk together, with one write, one fsync and one signed head for the batch. No
        caller returns before its own entry is fsync'd; under load, many share the cost.
        """
        clash = RESERVED & record.keys()
        if clash:
            raise ValueError(f"record uses reserved fields {sorted(clash)}")
        waiter = _Pending(record)
        with self._queue_lock:
            self._queue.append(waiter)
        while not waiter.done.is_set():
            # Whoever holds the write lock writes everything queued, its own entry included.
            if self._lock.acquire(timeout=0.05):
                try:
                    if not waiter.done.is_set():
                        self._write_batch()
                finally:
                    self._lock.release()
        if waiter.error is not None:
            raise waiter.error
        return waiter.entry

    def _write_batch(self) -> None:
        """Write every queued record as one batch (called with the write lock held)."""
        with self._queue_lock:
            batch, self._queue = self._queue, []
        if not batch:
            return
        try:
            entries = self._write(batch)
        except AuditWriteError as exc:
            for w in batch:
                w.error = exc
                w.done.set()
            return
        for w, entry in zip(batch, entries, strict=True):
            w.entry = entry
            w.done.set()

    def _write(self, batch: list[_Pending]) -> list[dict[str, Any]]:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            self.last_error = str(exc)
            raise AuditWriteError(f"cannot open the audit trail: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            seq, prev = _tail(fd)
            self._check_head(seq, prev)
            entries, lines = [], []
            for w in batch:
                seq += 1
                entry = {
                    "seq": seq,
                    "time": datetime.now(UTC).isoformat(timespec="microseconds"),
                    **w.record,
                    "prev_hash": prev,
                }
                entry["hash"] = entry_hash(entry)
                entry["mac"] = entry_mac(self._key, entry["hash"])
                prev = entry["hash"]
                entries.append(entry)
                lines.append(canonical(entry) + b"\n")
            _write_all(fd, b"".join(lines))
            os.fsync(fd)
            self.last_error = None
            if self._checkpoint_key is not None:
                last = entries[-1]
                try:
                    write_checkpoint(self.path, self._checkpoint_key, last["seq"],
                                     last["hash"], last["time"])
                except OSError as exc:
                    # The entries are durable and chained; only the head checkpoint lags.
                    # Report unhealthy so operators act, but do not disown the entries.
                    self.last_error = f"head checkpoint not written: {exc}"
            return entries
        except (OSError, ValueError) as exc:
            self.last_error = str(exc)
            raise AuditWriteError(f"cannot write the audit trail: {exc}") from exc
        finally:
            os.close(fd)  # closing releases the flock

    def _check_head(self, seq: int, prev: str) -> None:
        """Refuse to extend a trail that no longer reaches its own signed head.

        Appending would sign a new head over the damage and hide a truncation or rollback, so
        the writer stops instead: the gateway fails closed until the trail is investigated.
        A head behind the trail is fine (a crash between the entry and its checkpoint).
        """
        if self._checkpoint_key is None:
            return
        cp = read_checkpoint(self.path, self._checkpoint_key.public_key())
        if cp is None:
            return
        if cp.seq > seq or (cp.seq == seq and cp.hash != prev):
            raise ValueError(
                f"the trail ends at entry {seq} but its signed head is entry {cp.seq}: it has "
                "been truncated or rolled back; appends are refused until it is investigated"
            )


def _write_all(fd: int, data: bytes) -> None:
    start = os.lseek(fd, 0, os.SEEK_END)
    view = memoryview(data)
    try:
        while view:
            written = os.write(fd, view)
            view = view[written:]
    except OSError:
        # Leave no partial line behind: a torn entry would break the chain for everyone after.
        os.ftruncate(fd, start)
        raise


def _tail(fd: int) -> tuple[int, str]:
    """The sequence number and hash of the last complete entry (0 and genesis if empty)."""
    size = os.lseek(fd, 0, os.SEEK_END)
    if size == 0:
        return 0, GENESIS_HASH
    chunk = 4096
    pos = size
    buf = b""
    while pos > 0:
        step = min(chunk, pos)
        pos -= step
        os.lseek(fd, pos, os.SEEK_SET)
        buf = os.read(fd, step) + buf
        lines = buf.rstrip(b"\n").split(b"\n")
        if len(lines) > 1 or pos == 0:
            last = lines[-1]
            if not buf.endswith(b"\n"):
                raise ValueError(
                    "the trail ends in a torn line; run 'sde-gateway audit verify' and repair it"
                )
            entry = json.loads(last)
            return int(entry["seq"]), str(entry["hash"])
        chunk *= 2
    return 0, GENESIS_HASH
