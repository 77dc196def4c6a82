"""Schemathesis against the live app's own OpenAPI: generated requests, real HTTP.

Bounded (a few examples per operation, derandomised) so that it runs in CI every time. The
checks are schemathesis's own: no server error, a documented status code, a documented content
type, and a body that matches the documented schema. Requests carry a real demo token (an IG
auditor's for the audit and review routes, a planner's elsewhere), so the authenticated paths
are exercised, not only the 401s.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

#: A schema cannot say which strings are valid SQL, so schemathesis's "a schema-valid request
#: must be accepted" does not apply; every other response check does.
CHECKS = [checks.not_a_server_error, checks.status_code_conformance,
          checks.content_type_conformance, checks.response_schema_conformance,
          checks.response_headers_conformance]


@pytest.fixture(scope="module")
def operations(server):
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def test_every_route_is_in_the_openapi(operations):
    paths = {(op.method.upper(), op.path) for op in operations}
    for route in [("POST", "/v1/queries"), ("POST", "/v1/queries/explain"),
                  ("GET", "/v1/queries/{query_id}"), ("GET", "/v1/catalogue"),
                  ("GET", "/v1/projects/{project_id}/budget"), ("GET", "/v1/audit/events"),
                  ("GET", "/v1/audit/verify"), ("GET", "/v1/reviews"),
                  ("POST", "/v1/reviews/{query_id}"), ("GET", "/healthz"), ("GET", "/metrics")]:
        assert route in paths


def test_the_api_keeps_its_openapi_promises(operations, server):
    failures: list[str] = []
    statuses: list[int] = []
    for op in operations:
        headers = {"Authorization": "Bearer " + server.token(
            "ig.lead" if op.path.startswith(("/v1/audit", "/v1/reviews")) else "p.jones")}

        @given(case=op.as_strategy())
        @settings(max_examples=15, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            response = case.call_and_validate(headers=headers,  # noqa: B023 (called below)
                                              checks=CHECKS)
            statuses.append(response.status_code)

        try:
            run()
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{op.method.upper()} {op.path}: {exc}")
    assert not failures, "\n\n".join(failures)
    assert len(statuses) >= 3 * len(operations), "the generated cases really ran"
    assert {200, 400} <= set(statuses) and max(statuses) < 500
