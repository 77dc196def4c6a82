"""Schemathesis against the live app's own OpenAPI: generated requests, real HTTP, real tokens.

Schemathesis's engine (the one behind its CLI) runs every phase that needs no set-up: the
schema's examples, the coverage phase (boundary values, negative cases, missing parameters,
unexpected methods) and fuzzing, with its checks: no server error, a documented status code,
a documented content type, a body that matches its schema, documented headers, 405 for a
method a path does not offer, 4xx for invalid input, and that auth is not ignored. Bounded so
that it runs in CI every time: a few examples per operation, a fixed seed, deterministic
generation, no example database. Requests carry a real demo token (an IG auditor's for the
audit and review routes, a planner's elsewhere), so the authenticated paths are exercised;
the ``ignored_auth`` check re-sends successful requests without it and with a bad one, and the
coverage phase drops it, which exercises the 401s.

Random requests rarely reach the answers worth checking (a held output, a past query, a dp
budget), so ``test_real_answers_match_their_schema`` makes those on purpose and has
schemathesis validate each against the documented schema.

(The pytest plugin's ``from_fixture(...).parametrize()`` would report per operation, but with
pytest 9 it fails on a removed ``Node._nodeid``; and ``parametrize()`` on a schema loaded at
import time cannot reach a server that the session starts.)
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events
from test_reviews import MOSTLY_SMALL  # the same directory: a query whose output is held

#: the whole generated run must stay well inside CI's minute on a 2-core machine
BUDGET_S = 45


def config(planner: str, auditor: str) -> SchemathesisConfig:
    """Bounded and reproducible. Left out: "a schema-valid request must be accepted" (no schema
    can say which strings are valid SQL or which projects a caller is in) and the stateful
    phase (it needs links between operations that the API does not declare)."""
    return SchemathesisConfig.from_dict({
        "seed": 20261123,
        "generation": {"max-examples": 8, "mode": "all", "deterministic": True, "database": "none"},
        "phases": {"stateful": {"enabled": False}},
        "checks": {"positive_data_acceptance": {"enabled": False}},
        "request-timeout": 30,
        "headers": {"Authorization": f"Bearer {planner}"},
        "operations": [{"include-path-regex": "^/v1/(audit|reviews)",
                        "headers": {"Authorization": f"Bearer {auditor}"}}],
    })


@dataclass
class Run:
    operations: int
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    reached: set[str] = field(default_factory=set)


@pytest.fixture(scope="module")
def api(server):
    return schemathesis.openapi.from_url(
        f"{server.url}/openapi.json",
        config=config(server.token("p.jones"), server.token("ig.lead")))


@pytest.fixture(scope="module")
def run(api) -> Run:
    """One schemathesis run over every operation; the tests below judge what it saw."""
    result = Run(operations=sum(1 for _ in api.get_all_operations()))
    started = time.perf_counter()
    for event in schemathesis.engine.from_schema(api).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            for interaction in recorder.interactions.values():
                if interaction.response is not None:
                    result.statuses[interaction.response.status_code] += 1
                    result.reached.add(recorder.label)
            result.failures += [
                f"{recorder.label} [{event.phase.value}] {node.name}: "
                f"{node.failure_info.failure.title}\n{node.failure_info.code_sample}"
                for nodes in recorder.checks.values() for node in nodes
                if node.status == Status.FAILURE and node.failure_info is not None]
        elif isinstance(event, events.NonFatalError | events.FatalError):
            result.failures.append(f"{getattr(event, 'label', 'engine')}: error "
                                   f"{getattr(event, 'value', None) or event.exception!r}")
    result.seconds = time.perf_counter() - started
    return result


def test_the_api_keeps_its_openapi_promises(run):
    assert not run.failures, "\n\n".join(dict.fromkeys(run.failures))


def test_the_run_was_real_and_bounded(run):
    """Every operation was reached, requests got past authentication and were refused for
    each documented reason, and the whole run stayed inside its time budget."""
    assert len(run.reached) == run.operations, run.reached
    assert {200, 400, 401, 403, 404, 405, 422} <= set(run.statuses), run.statuses
    assert max(run.statuses) < 500, run.statuses
    assert run.seconds < BUDGET_S, f"the schemathesis run took {run.seconds:.0f} s"


def test_every_route_is_in_the_openapi(api):
    paths = {(op.ok().method.upper(), op.ok().path) for op in api.get_all_operations()}
    assert paths == {
        ("POST", "/v1/queries"), ("POST", "/v1/queries/explain"),
        ("GET", "/v1/queries/{query_id}"), ("GET", "/v1/catalogue"),
        ("GET", "/v1/projects/{project_id}/budget"), ("GET", "/v1/audit/events"),
        ("GET", "/v1/audit/verify"), ("GET", "/v1/reviews"), ("POST", "/v1/reviews/{query_id}"),
        ("GET", "/healthz"), ("GET", "/metrics")}


def test_real_answers_match_their_schema(fresh_server):
    """The answers random requests rarely reach, made on purpose, each validated by
    schemathesis against what the OpenAPI documents for its operation and status."""
    s = fresh_server
    api = schemathesis.openapi.from_url(f"{s.url}/openapi.json")

    def call(method: str, template: str, sub: str | None, path: str | None = None,
             **kw) -> httpx.Response:
        auth = {"Authorization": f"Bearer {s.token(sub)}"} if sub else {}
        response = s.client.request(method, path or template,
                                    headers={**auth, **kw.pop("headers", {})}, **kw)
        api[template][method].validate_response(response)
        return response

    def query(sub: str, sql: str, project: str, purpose: str) -> httpx.Response:
        return call("POST", "/v1/queries", sub,
                    json={"sql": sql, "project": project, "purpose": purpose})

    count = "SELECT sex, COUNT(DISTINCT person_id) AS people FROM patients GROUP BY sex"
    released = query("p.jones", count, "JOINT-PLANNING", "planning")
    held = query("p.jones", MOSTLY_SMALL, "JOINT-PLANNING", "planning")
    assert (released.json()["status"], held.json()["status"]) == ("released", "held")
    for project in ("PRJ-0042", "PRJ-0077"):  # dp, cell_key
        assert query("r.smith", count, project, "research").status_code == 200
    refused = query("p.jones", "SELECT * FROM patients", "JOINT-PLANNING", "planning")
    assert query("p.jones", count, "JOINT-PLANNING", "marketing").status_code == 403
    assert query("ig.lead", count, "JOINT-PLANNING", "planning").status_code == 403
    for sub, project in (("p.jones", "JOINT-PLANNING"), ("c.trader", "OUTBREAK-2026"),
                         ("r.smith", "PRJ-0042")):  # permit, deny, dp with its budget
        assert call("POST", "/v1/queries/explain", sub, json={
            "sql": count, "project": project, "purpose": "research"}).status_code == 200

    read = "/v1/queries/{query_id}"
    for qid, sub in ((released, "p.jones"), (held, "p.jones"), (held, "ig.lead"),
                     (refused, "p.jones")):
        qid = qid.json().get("query_id") or qid.headers["x-request-id"]
        assert call("GET", read, sub, f"/v1/queries/{qid}").status_code == 200
    assert call("GET", read, "r.smith", f"/v1/queries/{released.json()['query_id']}"
                ).status_code == 404

    queue = call("GET", "/v1/reviews", "ig.lead").json()["held"]
    assert [h["query_id"] for h in queue] == [held.json()["query_id"]]
    review = "/v1/reviews/{query_id}"
    decide = {"decision": "release", "reason": "small areas agreed"}
    target = f"/v1/reviews/{held.json()['query_id']}"
    assert call("POST", review, "p.jones", target, json=decide).status_code == 403
    assert call("POST", review, "ig.lead", target, json=decide).status_code == 200
    assert call("POST", review, "ig.lead", target, json=decide).status_code == 409
    assert call("POST", review, "ig.lead", target, json={"decision": "x"}).status_code == 422

    budget = "/v1/projects/{project_id}/budget"
    for sub, project, status in (("r.smith", "PRJ-0042", 200), ("p.jones", "JOINT-PLANNING",
                                                               200), ("p.jones", "PRJ-0042", 404)):
        assert call("GET", budget, sub, f"/v1/projects/{project}/budget").status_code == status
    for sub in ("r.smith", "c.trader", None):  # permitted and denied projects; no token
        call("GET", "/v1/catalogue", sub)
    # JSON may carry a lone surrogate. The query is refused (400 sql_not_text), but its
    # write-ahead entry keeps the SQL, and every audit page quoting it must still be an answer
    # the schema documents (JSON or CSV), not a 500
    hostile = {"sql": "SELECT '\ud800' AS k, COUNT(*) AS n FROM patients GROUP BY k",
               "project": "JOINT-PLANNING", "purpose": "planning"}
    assert call("POST", "/v1/queries", "p.jones", content=json.dumps(hostile), headers={
        "Content-Type": "application/json"}).status_code == 400
    for params in ({"limit": 3}, {"format": "csv"}, {"limit": 0}, {"limit": 1000},
                  {"limit": 1000, "format": "csv"}):
        call("GET", "/v1/audit/events", "ig.lead", params=params)
    assert call("GET", "/v1/audit/events", "p.jones").status_code == 403
    assert call("GET", "/v1/audit/verify", "ig.lead").json()["intact"]
    assert call("GET", "/healthz", None).json()["status"] == "ok"
    too_big = call("POST", "/v1/queries", "p.jones", content=b"x" * (s.settings.max_body_bytes
                                                                      + 1))
    assert too_big.status_code == 413


def test_a_method_a_path_does_not_offer_gets_405_in_the_error_shape(server, api):
    """Not an operation, so not in the schema's operations: checked here against ErrorBody."""
    error_body = api.raw_schema["components"]["schemas"]["ErrorBody"]
    for method, path in (("GET", "/v1/queries"), ("DELETE", "/v1/catalogue"),
                         ("PUT", "/v1/reviews/abc")):
        response = server.client.request(method, path)
        assert response.status_code == 405 and response.headers["allow"]
        body = response.json()
        assert set(body) == set(error_body["properties"]) and body["error"]["code"] == \
            "method_not_allowed"
