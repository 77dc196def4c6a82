"""The breaks of review round 28b, kept as tests (docs/security.md lists every round).

**A tiny epsilon is a 500 under ``dp``.** ``_dp_epsilon`` (``gateway/pipeline.py``) accepts any
epsilon in (0, budget], and ``dp.build`` (``gateway/disclosure/dp.py``) splits it over the
measurements and sets each scale to sensitivity / share. For an epsilon below about 1e-307
(a positive float the JSON body carries without trouble) the scale overflows to infinity,
and OpenDP's ``make_laplace`` raises ``OpenDPException("scale (inf) must be finite")``; at
5e-324 the share itself underflows to 0.0 and ``_threshold`` divides by zero. Neither is a
``GatewayError``, so ``/v1/queries`` answers ``500 internal_error`` ("internal error in stage
dp") and ``/v1/queries/explain`` an unhandled 500 that also drops the connection. Nothing is
spent (the build runs before the reservation), so it is a defect, not a budget leak: the
guarantee is that no request gets a 5xx.

A fix may refuse such an epsilon (a 4xx, say ``invalid_epsilon`` with a floor), or answer it:
each passes.
"""

from __future__ import annotations

import pytest
from attack import DP_RESEARCHER, refused

#: keys with a public code list: every combination released, one count measured
PUBLIC_KEYS = ("SELECT p.sex, COUNT(*) AS n FROM patients p JOIN gp_events e "
               "ON e.person_id = p.person_id GROUP BY p.sex")
#: keys from the data: the noisy threshold of people is measured too
DATA_KEYS = "SELECT e.snomed_code, COUNT(*) AS n FROM gp_events e GROUP BY e.snomed_code"


def _budget(server) -> dict:
    sub, project, _ = DP_RESEARCHER
    resp = server.client.get(f"/v1/projects/{project}/budget",
                             headers={"Authorization": f"Bearer {server.token(sub)}"})
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest.mark.parametrize("epsilon", [1e-310, 3e-308, 5e-324])
@pytest.mark.parametrize("sql", [PUBLIC_KEYS, DATA_KEYS], ids=["public_keys", "data_keys"])
def test_a_tiny_epsilon_is_never_a_500(server, sql, epsilon):
    """dp: an epsilon in (0, budget] so small that the Laplace scale overflows (or the share
    underflows to zero) must be refused or answered, never a 500; and nothing is spent on a
    refusal."""
    sub, project, purpose = DP_RESEARCHER
    before = _budget(server)["epsilon_spent"]
    resp = server.query(sub, sql, project, purpose, epsilon=epsilon)
    assert resp.status_code < 500, (
        f"epsilon {epsilon:g}: {resp.status_code} {resp.text[:200]}")
    if refused(resp):
        assert _budget(server)["epsilon_spent"] == pytest.approx(before)


@pytest.mark.parametrize("epsilon", [1e-310, 5e-324])
@pytest.mark.parametrize("sql", [PUBLIC_KEYS, DATA_KEYS], ids=["public_keys", "data_keys"])
def test_explain_with_a_tiny_epsilon_is_never_a_500(server, sql, epsilon):
    """dp: explain builds the same mechanisms; a tiny epsilon must not break it either."""
    sub, project, purpose = DP_RESEARCHER
    resp = server.client.post(
        "/v1/queries/explain", headers={"Authorization": f"Bearer {server.token(sub)}"},
        json={"sql": sql, "project": project, "purpose": purpose, "epsilon": epsilon})
    assert resp.status_code < 500, (
        f"epsilon {epsilon:g}: {resp.status_code} {resp.text[:200]}")
