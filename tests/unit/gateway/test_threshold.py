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
            if p < k:  # small, or empty: zeros are disclosive too (review round 33)
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


def test_a_zero_is_suppressed_in_the_words_of_a_small_count():
    """An empty group and a small one look the same, rule included: a zero beside a
    suppressed count told which a chosen one-person group was (review round 33)."""
    out = apply_threshold([["a", 0], ["b", 3]], ["g", "n"], ["group_key", "aggregate"],
                          [False, True], [[None, 0], [None, 3]], min_people=8, rounding_base=5)
    assert out.rows[0][1] is None and out.rows[1][1] is None
    assert out.suppressed[0].rule == out.suppressed[1].rule


def test_rounding_halves_go_up():
    assert [round_to_base(v, 5) for v in (0, 2, 3, 7, 8, 12, 13, 2.5, 12.5)] == \
        [0, 0, 5, 5, 10, 10, 15, 5, 15]


# -- dominance (ACRO's defaults: NK n=2 k=90%, p% p=10%) ----------------------------------

import pytest  # noqa: E402

from gateway.disclosure.threshold import Dominance  # noqa: E402


@pytest.mark.parametrize(
    ("top", "total", "dominated"),
    [
        ([100.0, 1.0], 110.0, "NK"),      # two hold 92%
        ([50.0, 40.0], 100.0, "NK"),      # two hold exactly 90%: dominated (ACRO: >= k)
        ([50.0, 39.0], 100.0, None),      # 89%; rest 11 >= 5
        ([50.0, 41.0], 100.0, "NK"),      # 91%
        ([60.0, 20.0], 85.0, "NK"),       # 80/85 = 94%
        ([300.0, 100.0], 400.0 + 25.0, "NK"),
        ([1000.0, 10.0], 1010.0 + 95.0, "p%"),  # NK 91%; p%: rest 95 < 100
        ([10.0, 9.0], 100.0, None),
    ],
)
def test_dominance_rules(top, total, dominated):
    why = Dominance().verdict((top, total))
    if dominated is None:
        assert why is None
    else:
        assert why is not None


def test_p_ratio_alone():
    """With ACRO's defaults (NK n=2, k=90%; p=10%) NK fires whenever p% would; with n=1 the
    p% rule catches what NK does not: the largest holds 65%, but the rest after the top two
    (10) is under 10% of the largest (200)."""
    d = Dominance(nk_n=1, nk_k=0.9, p_ratio=0.1)
    assert "p%" in d.verdict(([200.0, 100.0], 310.0))
    assert d.verdict(([200.0, 100.0], 330.0)) is None


def test_unknown_contributions_are_dominated():
    assert Dominance().verdict(None) is not None


def test_dominated_cell_is_suppressed_and_the_rest_released():
    rows = [["a", 1000.0, 20], ["b", 500.0, 30]]
    out = apply_threshold(
        rows, ["g", "cost", "n"], ["group_key", "aggregate", "aggregate"], [False, False, True],
        [[None, 20, 20], [None, 30, 30]], min_people=8, rounding_base=5,
        contributions=[{1: ([950.0, 10.0], 1000.0, 1.0)}, {1: ([40.0, 35.0], 500.0, 2.0)}],
    )
    assert out.rows == [["a", None, 20], ["b", 500.0, 30]]
    assert out.suppressed[0].rule.startswith("dominance (NK)")
    assert out.hold is None


def test_negative_contributions_hold_the_output_for_review():
    out = apply_threshold(
        [["a", 100.0]], ["g", "net"], ["group_key", "aggregate"], [False, False], [[None, 20]],
        min_people=8, rounding_base=5, contributions=[{1: ([60.0, 50.0], 100.0, -30.0)}])
    assert out.hold and "negative" in out.hold


def test_a_mostly_suppressed_table_is_held():
    rows = [[f"k{i}", 3] for i in range(6)]
    out = apply_threshold(rows, ["g", "n"], ["group_key", "aggregate"], [False, True],
                          [[None, 3 if i < 4 else 30] for i in range(6)], min_people=8,
                          rounding_base=5)
    assert out.hold and "4 of 6 cells" in out.hold
