"""The trail on a real file: chaining, tamper detection, torn tails, concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
import threading

import pytest

from audit import AuditTrail, verify_trail
from audit.trail import entry_hash

KEY = b"k" * 32


@pytest.fixture()
def trail(tmp_path):
    return AuditTrail(tmp_path / "trail.jsonl", KEY)


def fill(trail: AuditTrail, n: int) -> None:
    for i in range(n):
        trail.append({"event": "query", "subject": f"user{i}", "decision": "released"})


def lines(trail: AuditTrail) -> list[str]:
    return trail.path.read_text().splitlines()


def write(trail: AuditTrail, rows: list[str]) -> None:
    trail.path.write_text("".join(r + "\n" for r in rows))


def test_entries_chain_and_verify(trail):
    fill(trail, 5)
    entries = [json.loads(x) for x in lines(trail)]
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0]["prev_hash"] == "0" * 64
    for a, b in zip(entries, entries[1:], strict=False):
        assert b["prev_hash"] == a["hash"]
    result = verify_trail(trail.path, KEY)
    assert result.ok and result.entries == 5 and result.head_hash == entries[-1]["hash"]


def test_empty_trail_verifies(trail):
    result = verify_trail(trail.path, KEY)
    assert result.ok and result.entries == 0


def test_edit_is_found_and_located(trail):
    fill(trail, 5)
    rows = lines(trail)
    rows[2] = rows[2].replace('"user2"', '"someone-else"')
    write(trail, rows)
    result = verify_trail(trail.path, KEY)
    assert not result.ok and result.first_bad_line == 3 and "edited" in result.reason


def test_deletion_is_found(trail):
    fill(trail, 5)
    rows = lines(trail)
    del rows[1]
    write(trail, rows)
    result = verify_trail(trail.path, KEY)
    assert not result.ok and result.first_bad_line == 2


def test_reordering_is_found(trail):
    fill(trail, 5)
    rows = lines(trail)
    rows[1], rows[3] = rows[3], rows[1]
    write(trail, rows)
    result = verify_trail(trail.path, KEY)
    assert not result.ok and result.first_bad_line == 2


def test_rewritten_chain_without_the_key_is_found(trail):
    """An insider who recomputes every hash but lacks the key still fails the MAC."""
    fill(trail, 3)
    rows = [json.loads(x) for x in lines(trail)]
    rows[1]["subject"] = "covered-up"
    prev = rows[0]["hash"]
    for e in rows[1:]:
        e["prev_hash"] = prev
        e["hash"] = entry_hash(e)
        prev = e["hash"]
    write(trail, [json.dumps(e) for e in rows])
    result = verify_trail(trail.path, KEY)
    assert not result.ok and result.first_bad_line == 2 and "MAC" in result.reason


def test_wrong_key_fails(trail):
    fill(trail, 2)
    assert not verify_trail(trail.path, b"x" * 32).ok


def test_torn_tail_is_told_apart_from_tampering(trail):
    fill(trail, 3)
    with trail.path.open("ab") as fh:
        fh.write(b'{"seq": 4, "event": "qu')
    result = verify_trail(trail.path, KEY)
    assert not result.ok and result.torn_tail and result.entries == 3


def test_append_refuses_after_a_torn_tail(trail):
    from audit import AuditWriteError

    fill(trail, 1)
    with trail.path.open("ab") as fh:
        fh.write(b'{"seq": 2')
    with pytest.raises(AuditWriteError):
        trail.append({"event": "query"})


def test_reserved_fields_cannot_be_forged(trail):
    with pytest.raises(ValueError):
        trail.append({"seq": 99, "event": "query"})


def test_concurrent_threads_keep_one_chain(trail):
    threads = [threading.Thread(target=fill, args=(trail, 25)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = verify_trail(trail.path, KEY)
    assert result.ok and result.entries == 200


def _proc_fill(path: str, n: int) -> None:
    fill(AuditTrail(path, KEY), n)


def test_concurrent_processes_keep_one_chain(tmp_path):
    path = tmp_path / "trail.jsonl"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_proc_fill, args=(str(path), 30)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    result = verify_trail(path, KEY)
    assert result.ok and result.entries == 120


def test_every_entry_is_one_line_for_any_reader(trail):
    """Line separators in recorded text (U+2028, U+0085, CR, FS) stay escaped."""
    trail.append({"event": "query", "sql": "a\u2028b\x85c\rd\x1ce\nf"})
    trail.append({"event": "query", "sql": "plain"})
    text = trail.path.read_text(encoding="utf-8")
    assert len(text.splitlines()) == 2
    assert text.isascii()
    assert json.loads(text.splitlines()[0])["sql"] == "a\u2028b\x85c\rd\x1ce\nf"
    assert verify_trail(trail.path, KEY).ok


# -- truncation, insertion, recovery: with the signed head --------------------------------

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from audit.checkpoint import checkpoint_path  # noqa: E402

SIGNER = Ed25519PrivateKey.generate()


@pytest.fixture()
def signed(tmp_path):
    return AuditTrail(tmp_path / "trail.jsonl", KEY, SIGNER)


def check(trail, **kw):
    return verify_trail(trail.path, KEY, public_key=SIGNER.public_key(), **kw)


def test_truncation_is_found_through_the_signed_head(signed):
    fill(signed, 6)
    assert check(signed).ok and check(signed).checkpoint_seq == 6
    write(signed, lines(signed)[:4])
    result = check(signed)
    assert not result.ok and "truncated" in result.reason and result.first_bad_seq == 5


def test_a_forged_head_is_refused(signed):
    fill(signed, 3)
    cp = checkpoint_path(signed.path)
    data = json.loads(cp.read_text())
    data["seq"] = 2
    cp.write_text(json.dumps(data))
    result = check(signed)
    assert not result.ok and "not validly signed" in result.reason


def test_rollback_of_trail_and_head_together_is_found_against_a_recorded_head(signed):
    fill(signed, 3)
    old_lines, old_head = lines(signed), checkpoint_path(signed.path).read_text()
    fill(signed, 2)
    recorded = (5, json.loads(lines(signed)[-1])["hash"])
    write(signed, old_lines)
    checkpoint_path(signed.path).write_text(old_head)
    assert check(signed).ok  # a consistent rollback, invisible without an outside record
    result = check(signed, expect_head=recorded)
    assert not result.ok and "truncated" in result.reason


def test_insertion_is_found(signed):
    fill(signed, 4)
    rows = lines(signed)
    forged = json.loads(rows[1])
    forged["subject"] = "inserted"
    rows.insert(2, json.dumps(forged))
    write(signed, rows)
    result = check(signed)
    assert not result.ok and result.first_bad_line == 3


def test_torn_tail_is_recovered_and_the_recovery_recorded(signed):
    fill(signed, 3)
    with signed.path.open("ab") as fh:
        fh.write(b'{"seq": 4, "event": "qu')
    assert check(signed).torn_tail
    entry = signed.recover()
    assert entry["event"] == "trail_recovered" and entry["torn_bytes"] == 23
    assert (signed.path.parent / entry["set_aside_as"]).read_bytes() == b'{"seq": 4, "event": "qu'
    result = check(signed)
    assert result.ok and result.entries == 4
    assert signed.recover() is None


# -- search ---------------------------------------------------------------------------------

from audit import EventFilter, search, to_csv  # noqa: E402


def test_search_filters_and_pages(trail):
    for i in range(30):
        trail.append({"event": "query", "subject": "a" if i % 3 else "b",
                      "datasets": ["gp", "asc_cld"] if i % 2 else ["gp"],
                      "tables": ["patients"], "decision": "released" if i % 5 else "denied"})
    where = EventFilter(subject="a", dataset="asc_cld")
    expected = [e for e in map(json.loads, lines(trail))
                if e["subject"] == "a" and "asc_cld" in e["datasets"]]
    page1, cursor = search(trail.path, where, limit=4)
    page2, cursor2 = search(trail.path, where, after_seq=cursor, limit=100)
    assert [e["seq"] for e in page1 + page2] == [e["seq"] for e in expected]
    assert len(page1) == 4 and cursor2 is None
    denied, _ = search(trail.path, EventFilter(decision="denied"), limit=100)
    assert len(denied) == 6
    csv_text = to_csv(page1)
    assert csv_text.splitlines()[0].startswith("seq,time,event") and "gp;asc_cld" in csv_text


def test_search_by_time(trail):
    fill(trail, 3)
    entries = [json.loads(x) for x in lines(trail)]
    found, _ = search(trail.path, EventFilter(since=entries[1]["time"], until=entries[2]["time"]))
    assert [e["seq"] for e in found] == [2]
    assert search(trail.path, EventFilter(since="2999-01-01"))[0] == []


def test_the_writer_refuses_to_extend_a_truncated_trail(signed):
    from audit import AuditWriteError

    fill(signed, 5)
    write(signed, lines(signed)[:3])
    with pytest.raises(AuditWriteError, match="truncated or rolled back"):
        signed.append({"event": "query"})
    assert not signed.healthy
    assert len(lines(signed)) == 3
