"""The time limit, the row cap and the SQL size limits, over HTTP, audited, server healthy after."""

from __future__ import annotations

import pytest
from conftest import LiveServer, make_settings


@pytest.fixture()
def tight(data_dir, tmp_path):
    live = LiveServer(make_settings(data_dir, tmp_path / "state", query_timeout_s=0.3,
                                    row_cap=20, max_sql_chars=2000, max_sql_depth=40))
    yield live
    live.stop()


def test_a_query_over_the_time_limit_gets_504_and_the_server_carries_on(tight):
    # legal (every join on person_id), but each person's events to the fifth power
    slow = ("SELECT p.sex, COUNT(*) AS n FROM patients p "
            + " ".join(f"JOIN gp_events e{i} ON e{i}.person_id = p.person_id" for i in range(5))
            + " GROUP BY p.sex")
    resp = tight.query("p.jones", slow, "JOINT-PLANNING", "planning")
    assert resp.status_code == 504, resp.text
    assert resp.json()["error"]["code"] == "query_timeout"
    assert tight.entry_for(resp)["decision"] == "failed"
    quick = tight.query("p.jones", "SELECT sex, COUNT(*) FROM patients GROUP BY sex",
                        "JOINT-PLANNING", "planning")
    assert quick.status_code == 200


def test_a_result_over_the_row_cap_gets_413(tight):
    resp = tight.query("p.jones", "SELECT lsoa_code, COUNT(*) FROM patients GROUP BY lsoa_code",
                       "JOINT-PLANNING", "planning")
    assert resp.status_code == 413, resp.text
    assert resp.json()["error"]["code"] == "result_too_large"
    assert "rows" not in resp.json()
    assert tight.entry_for(resp)["error_code"] == "result_too_large"


def test_a_user_limit_under_the_cap_is_kept(tight):
    """More groups than the cap, and a LIMIT: the engine reads to the cap, small groups are
    withheld, and the LIMIT takes the first rows left (review round 33)."""
    resp = tight.query("p.jones", "SELECT lsoa_code, COUNT(*) FROM patients GROUP BY lsoa_code "
                       "ORDER BY lsoa_code LIMIT 5", "JOINT-PLANNING", "planning")
    assert resp.status_code == 200 and len(resp.json()["rows"]) == 5
    assert "LIMIT 5" not in tight.entry_for(resp)["executed_sql"]


@pytest.mark.parametrize(("sql", "code"), [
    ("SELECT COUNT(*) FROM patients WHERE sex IN (" + ", ".join(["'F'"] * 600) + ")",
     "sql_too_long"),
    ("SELECT COUNT(*) FROM patients WHERE " + "(" * 45 + "sex = 'F'" + ")" * 45, "sql_too_deep"),
])
def test_sql_size_limits_give_400(tight, sql, code):
    resp = tight.query("p.jones", sql, "JOINT-PLANNING", "planning")
    assert resp.status_code == 400 and resp.json()["error"]["code"] == code
