"""Secondary suppression, by property: on random tables with margins, nothing small is released
and no primary-suppressed cell can be solved for from the released cells and the margins."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from linear import solvable

from gateway.disclosure.secondary import RowShape, protect, relations
from gateway.disclosure.threshold import apply_threshold

K, BASE = 8, 5


def with_margins(details: dict, na: int, nb: int) -> list:
    """The CUBE's rows: the details, then row totals, column totals and the grand total."""
    cells = dict(details)
    for a in range(na):
        cells[(a, None)] = sum(details[(a, b)] for b in range(nb))
    for b in range(nb):
        cells[(None, b)] = sum(details[(a, b)] for a in range(na))
    cells[(None, None)] = sum(details.values())
    return list(cells.items())


@st.composite
def cube_tables(draw):
    """A CUBE (a, b) result: details, row totals, column totals, grand total; one person a row
    in the data, so a cell's people are its count."""
    na, nb = draw(st.integers(2, 5)), draw(st.integers(2, 5))
    details = {(a, b): draw(st.one_of(st.integers(0, 9), st.integers(0, 60)))
               for a in range(na) for b in range(nb)}
    return na, nb, with_margins(details, na, nb)


def system(rows):
    """The table's own equations, from its layout: each margin is the sum of what it totals."""
    index = {key: r for r, (key, _) in enumerate(rows)}
    eqs = []
    for (a, b), _ in rows:
        if a is not None and b is None:
            eqs.append((index[(a, None)], [r for (k, r) in index.items()
                                           if k[0] == a and k[1] is not None]))
        if a is None and b is not None:
            eqs.append((index[(None, b)], [r for (k, r) in index.items()
                                           if k[1] == b and k[0] is not None]))
        if a is None and b is None:
            eqs.append((index[(None, None)], [r for (k, r) in index.items()
                                              if k[0] is not None and k[1] is None]))
    return eqs


@settings(max_examples=300, deadline=None)
@given(cube_tables())
def test_no_primary_cell_is_recoverable_and_nothing_small_is_released(table):
    na, nb, cells = table
    rows = [[a, b, n] for (a, b), n in cells]
    people = [[None, None, n] for (_, _), n in cells]
    out = apply_threshold(rows, ["a", "b", "n"], ["group_key", "group_key", "aggregate"],
                          [False, False, True], people, min_people=K, rounding_base=BASE)
    primary = {s.row for s in out.suppressed}
    shapes = [RowShape(0, frozenset(i for i, v in enumerate((a, b)) if v is None), (a, b))
              for (a, b), _ in cells]
    extra = protect([n for _, n in cells], primary, relations(shapes))
    hidden = primary | extra
    for r, ((_, _), n) in enumerate(cells):
        if r not in hidden:
            assert not 0 < n < K, "a small cell was released"
            assert out.rows[r][2] % BASE == 0
    assert extra.isdisjoint(primary)
    eqs = system(cells)
    for cell in primary:
        assert not solvable(cell, hidden, eqs), f"cell {cells[cell]} can be solved for"


def test_a_lone_small_cell_beside_its_total_takes_a_partner():
    # a 1-D table with a total: [3, 40, 25 | total 68]; 3 is suppressed, so the total would
    # give it away; the smallest other detail (25) goes too
    cells = [(("x",), 3), (("y",), 40), (("z",), 25), ((None,), 68)]
    shapes = [RowShape(0, frozenset({0}) if k[0] is None else frozenset(), k) for k, _ in cells]
    extra = protect([v for _, v in cells], {0}, relations(shapes))
    assert extra == {2}


def test_families_that_aggregate_different_rows_are_not_related():
    shapes = [RowShape(0, frozenset(), ("x",)), RowShape(1, frozenset({0}), (None,))]
    assert relations(shapes) == []


def test_a_nan_key_still_relates_a_subtotal_to_its_details():
    """The engine groups NaN with NaN; Python's NaN is not equal to itself. A two-key ROLLUP
    whose first key is NaN must still tie the NaN subtotal to its NaN details (round 12)."""
    nan = float("nan")
    cells = [((nan, "a"), 3), ((nan, "b"), 40), ((nan, "c"), 25), ((nan, None), 68),
             ((1.0, "a"), 50), ((1.0, None), 50), ((None, None), 118)]
    shapes = [RowShape(0, frozenset(j for j in (0, 1) if k[j] is None), k) for k, _ in cells]
    rels = relations(shapes)
    assert (3, [0, 1, 2]) in rels
    extra = protect([v for _, v in cells], {0}, rels)
    assert 2 in extra  # the NaN subtotal would otherwise give the 3 away


@settings(max_examples=25, deadline=None)
@given(st.integers(8, 14), st.integers(8, 12), st.randoms(use_true_random=False))
def test_a_large_cube_takes_the_quick_way_and_still_protects_every_cell(na, nb, rnd):
    """Past MAX_SEARCH_CELLS the search (a matrix rank per cell, per step) took minutes on a
    real ROLLUP (review round 19); every margin is suppressed instead. No primary cell may be
    solvable from what is released, and it must be quick."""
    import time

    from gateway.disclosure import secondary

    details = {(a, b): rnd.choice([rnd.randint(0, 7), rnd.randint(0, 60)])
               for a in range(na) for b in range(nb)}
    rows = with_margins(details, na, nb)
    # the small details, and then the smallest others, until past the limit
    by_size = sorted((v, r) for r, (key, v) in enumerate(rows) if None not in key)
    primary = {r for v, r in by_size[:secondary.MAX_SEARCH_CELLS + 1]}
    primary |= {r for r, (_, v) in enumerate(rows) if 0 < v < K}
    assert len(primary) > secondary.MAX_SEARCH_CELLS
    shapes = [RowShape(0, frozenset(j for j in (0, 1) if key[j] is None), key)
              for key, _ in rows]
    t0 = time.perf_counter()
    added = protect([v for _, v in rows], primary, relations(shapes))
    assert time.perf_counter() - t0 < 2.0
    hidden = primary | added
    eqs = system(rows)
    assert not any(solvable(c, hidden, eqs) for c in primary)


@st.composite
def grouping_set_tables(draw):
    """GROUPING SETS over two or three keys, holding any of the levels (each a set of keys
    rolled up). A level may be skipped (the grand total beside the details, round 20's
    note), and two may be incomparable (totals by a beside totals by b, which both add up to
    everyone, a row the result need not hold)."""
    sizes = draw(st.lists(st.integers(1, 4), min_size=2, max_size=3))
    details = {key: draw(st.one_of(st.integers(0, 9), st.integers(0, 60)))
               for key in itertools.product(*(range(n) for n in sizes))}
    every = [frozenset(c) for r in range(len(sizes) + 1)
             for c in itertools.combinations(range(len(sizes)), r)]
    levels = draw(st.sets(st.sampled_from(every), min_size=2))
    cells: dict = {}
    for level in sorted(levels, key=len):
        for key, n in details.items():
            rolled = tuple(None if j in level else v for j, v in enumerate(key))
            cells[rolled] = cells.get(rolled, 0) + n
    return list(cells.items()), sorted(details)


def latent_system(rows, details):
    """The truth, whatever levels the result holds: each row is the sum of the details it
    covers, and the details a result leaves out are unknowns numbered after its rows."""
    latent = {key: len(rows) + i for i, key in enumerate(details)}
    eqs = [(r, [latent[d] for d in details
                if all(k is None or k == v for k, v in zip(key, d, strict=True))])
           for r, (key, _) in enumerate(rows)]
    return eqs, set(latent.values())


@settings(max_examples=500, deadline=None)
@given(grouping_set_tables(), st.booleans())
def test_no_cell_is_recoverable_through_skipped_or_incomparable_levels(table, quick):
    cells, details = table
    width = len(details[0])
    names = [f"k{j}" for j in range(width)]
    rows = [[*key, n] for key, n in cells]
    people = [[None] * width + [n] for _, n in cells]
    out = apply_threshold(rows, [*names, "n"], ["group_key"] * width + ["aggregate"],
                          [False] * width + [True], people, min_people=K, rounding_base=BASE)
    primary = {s.row for s in out.suppressed}
    shapes = [RowShape(0, frozenset(j for j, v in enumerate(key) if v is None), key)
              for key, _ in cells]
    extra = protect([n for _, n in cells], primary, relations(shapes), quick=quick)
    assert all(r < len(cells) for r in extra)
    eqs, latent = latent_system(cells, details)
    for cell in primary:
        assert not solvable(cell, primary | extra | latent, eqs), (
            f"cell {cells[cell]} can be solved for")


def test_the_grand_total_beside_the_details_is_related_to_them():
    cells = [(("x", "m"), 3), (("x", "f"), 40), (("y", "m"), 25), ((None, None), 68)]
    shapes = [RowShape(0, frozenset({0, 1}) if k[0] is None else frozenset(), k)
              for k, _ in cells]
    assert relations(shapes) == [(3, [0, 1, 2])]
    assert protect([v for _, v in cells], {0}, relations(shapes)) == {2}


def test_totals_by_two_keys_are_tied_through_everyone():
    """GROUPING SETS ((a), (b)): the totals by a and by b both add up to everyone, a row the
    result does not hold; 3 = (40 + 28) - 65 unless one more total goes too (the smallest)."""
    cells = [(("x", None), 3), (("y", None), 65), ((None, "m"), 40), ((None, "f"), 28)]
    shapes = [RowShape(0, frozenset({1}) if k[1] is None else frozenset({0}), k)
              for k, _ in cells]
    assert relations(shapes) == [(4, [0, 1]), (4, [2, 3])]
    assert protect([v for _, v in cells], {0}, relations(shapes)) == {3}
