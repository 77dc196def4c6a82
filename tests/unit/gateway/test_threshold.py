"""The threshold rule, by property: whatever the table, nothing small leaves and counts are rounded."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.disclosure.threshold import apply_threshold, round_to_base

cells = st.tuples(st.integers(0, 60), st.integers(0, 500))  # (people, value)


@given(st.lists(st.lists(cells, min_size=2, max_size=2), min_size=1, max_size=30),
       st.integers(2, 15), st.sampled_from([1, 2, 5, 10]))
def test_no_small_cell_is_released_and_counts_are_rounded(table, k, base):
    rows = [["key", *(value for _, value in row)] for row in table]
    people = [[None, *(p for p, _ in row)] for row in table]
    out = apply_threshold(rows, ["g", "n", "m"], ["group_key", "aggregate", "aggregate"],
                          [False, True, False], people, min_people=k, rounding_base=base)
    listed = {(s.row, s.column) for s in out.suppressed}
    for r, row in enumerate(table):
        for c, (p, value) in enumerate(row, start=1):
            released = out.rows[r][c]
            if 0 < p < k:
                assert released is None
                assert (r, ["g", "n", "m"][c]) in listed
            else:
                assert released is not None
                if c == 1:
                    assert released % base == 0
                    assert abs(released - value) <= base / 2
                else:
                    assert released == value
        assert out.rows[r][0] == "key"


def test_suppression_is_judged_before_rounding():
    """7 people round to 5 or 10, but must be suppressed before any rounding."""
    out = apply_threshold([["a", 7]], ["g", "n"], ["group_key", "aggregate"], [False, True],
                          [[None, 7]], min_people=8, rounding_base=5)
    assert out.rows[0][1] is None


def test_true_zero_is_released():
    out = apply_threshold([["a", 0]], ["g", "n"], ["group_key", "aggregate"], [False, True],
                          [[None, 0]], min_people=8, rounding_base=5)
    assert out.rows[0][1] == 0 and out.suppressed == ()


def test_rounding_halves_go_up():
    assert [round_to_base(v, 5) for v in (0, 2, 3, 7, 8, 12, 13, 2.5, 12.5)] == \
        [0, 0, 5, 5, 10, 10, 15, 5, 15]
