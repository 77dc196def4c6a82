"""The dp regime's noise is what OpenDP promised for the epsilon, checked statistically.

The mechanisms are the real ones (gateway.disclosure.dp over OpenDP); each release below draws
fresh noise, and thousands of releases are compared with the Laplace distribution of the scale
the epsilon and the sensitivity call for. A wrong scale (a sensitivity or a split of epsilon off
by a factor) fails these tests: they are checked to fail on a scale 20% off. (A true scale fails by chance with probability 1e-4.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from gateway.disclosure import dp
from gateway.sql.dp_rewrite import DpPlan, DpStatistic

RUNS = 6000


def plan_of(*statistics: DpStatistic, public: bool = True, cells: int = 1) -> DpPlan:
    return DpPlan(sql="", keys=(0,), key_columns=("k",),
                  public_domains=(("a", "b"),) if public else None,
                  statistics=statistics, cells_per_person=cells, order=(), limit=None)


def noise(mech: dp.DpMechanisms, exact_rows: list[tuple], column: int) -> np.ndarray:
    truth = {r[0]: r for r in exact_rows}
    out = []
    for _ in range(RUNS):
        released = dp.release(mech, exact_rows, ["k", "v"], ["group_key", "aggregate"], {})
        out += [row[1] - truth[row[0]][1] for row in released.rows]
    return np.array(out, dtype=float)


def test_sum_noise_is_laplace_of_the_promised_scale():
    # a sum of a measure bounded to [0, 250], 5 rows per person per cell, 3 cells per person
    stat = DpStatistic(1, "sum", per_cell=5 * 250.0, bounds=(0.0, 250.0))
    mech = dp.build(plan_of(stat, cells=3), epsilon=1.0, delta=1e-8)
    (m,) = mech.per_statistic[1]
    assert m.epsilon <= 1.0 and m.epsilon == pytest.approx(1.0, rel=1e-6)
    assert m.scale == pytest.approx(3 * 5 * 250.0 / 1.0, rel=1e-6)  # L1 sensitivity / epsilon
    rows = [("a", 1_000_000.0, 0, 0), ("b", 2_000_000.0, 0, 0)]  # far from the clip at zero
    sample = noise(mech, rows, 1)
    assert stats.kstest(sample, "laplace", args=(0, m.scale)).pvalue > 1e-4
    assert stats.kstest(sample, "laplace", args=(0, m.scale * 1.2)).pvalue < 1e-4
    assert stats.kstest(sample, "laplace", args=(0, m.scale / 1.2)).pvalue < 1e-4
    # the reported accuracy is the 95% half-width of that distribution
    assert np.mean(np.abs(sample) <= m.accuracy) == pytest.approx(0.95, abs=0.015)


def discrete_laplace_cdf(k: np.ndarray, scale: float) -> np.ndarray:
    """P(X <= k) for the discrete Laplace with P(X = k) proportional to exp(-|k| / scale)."""
    q = math.exp(-1 / scale)
    k = np.asarray(k, dtype=float)
    below = q ** (-k) / (1 + q)  # k < 0
    above = 1 - q ** (k + 1) / (1 + q)  # k >= 0
    return np.where(k < 0, below, above)


def test_count_noise_is_discrete_laplace_of_the_promised_scale():
    stat = DpStatistic(1, "rows", per_cell=5.0)
    mech = dp.build(plan_of(stat, cells=2), epsilon=2.0, delta=1e-8)
    (m,) = mech.per_statistic[1]
    assert m.scale == pytest.approx(2 * 5 / 2.0, rel=1e-6)
    sample = noise(mech, [("a", 10_000, 0), ("b", 20_000, 0)], 1)
    assert np.all(sample == np.round(sample)), "counts get integer noise"
    for scale, ok in [(m.scale, True), (m.scale * 1.2, False), (m.scale / 1.2, False)]:
        edges = np.arange(-12, 13)
        observed = np.array([np.sum(sample <= edges[0])]
                            + [np.sum(sample == e) for e in edges[1:]]
                            + [np.sum(sample > edges[-1])])
        cdf = discrete_laplace_cdf(edges, scale)
        expected = np.diff(np.concatenate([[0.0], cdf, [1.0]])) * len(sample)
        p = stats.chisquare(observed, expected).pvalue
        assert bool(p > 1e-4) == ok, (scale, p)


def test_the_cost_of_a_query_is_split_and_composed():
    """Three statistics and a threshold: each gets a quarter, the total is the request."""
    plan = plan_of(DpStatistic(1, "rows", 5.0), DpStatistic(2, "people", 1.0),
                   DpStatistic(3, "sum", 1250.0, (0.0, 250.0)), public=False, cells=5)
    mech = dp.build(plan, epsilon=1.0, delta=1e-8)
    assert mech.epsilon_spent <= 1.0 and mech.epsilon_spent == pytest.approx(1.0, rel=1e-6)
    assert mech.threshold.epsilon == pytest.approx(0.25, rel=1e-6)
    assert 0 < mech.delta_spent <= 1e-8
    # the threshold is the smallest integer meeting delta: one lower would not
    assert mech.threshold.measurement.map((5, 5, 1))[1] <= 1e-8


def test_cells_below_the_noisy_threshold_are_not_released():
    plan = plan_of(DpStatistic(1, "people", 1.0, all_people=True), public=False, cells=1)
    mech = dp.build(plan, epsilon=1.0, delta=1e-8)
    tau = mech.threshold_value
    rows = [("rare", 3, 3), ("common", 10 * tau, 10 * tau)]
    seen = set()
    for _ in range(300):
        released = dp.release(mech, rows, ["k", "v"], ["group_key", "aggregate"], {})
        seen |= {r[0] for r in released.rows}
    assert seen == {"common"}
