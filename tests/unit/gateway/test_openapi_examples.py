"""The OpenAPI's examples are answers the API could give: each validates against its model."""

from __future__ import annotations

import inspect

import pytest
from pydantic import BaseModel

from gateway import openapi
from gateway.errors import ERROR_EXAMPLES, ErrorBody

MODELS = [m for _, m in inspect.getmembers(openapi, inspect.isclass)
          if issubclass(m, BaseModel) and m.__module__ == openapi.__name__
          and (m.model_config.get("json_schema_extra") or {}).get("examples")]


def test_every_answer_of_a_route_has_an_example():
    assert {m.__name__ for m in MODELS} >= {
        "QueryResponse", "QueryRecord", "Explanation", "Catalogue", "Budget", "AuditPage",
        "Verification", "ReviewQueue", "ReviewOutcome", "Health"}


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_each_example_validates_against_its_model(model):
    for example in model.model_config["json_schema_extra"]["examples"]:
        model.model_validate(example)


@pytest.mark.parametrize("status", sorted(ERROR_EXAMPLES))
def test_each_error_example_is_in_the_error_shape_and_documents_its_status(status):
    description, examples = ERROR_EXAMPLES[status]
    assert description and examples
    for name, body in examples.items():
        assert ErrorBody.model_validate(body).error.code == name


def test_a_route_documents_only_the_statuses_asked_for_each_with_schema_and_examples():
    responses = openapi.errors(401, 429)
    assert set(responses) == {401, 429}
    assert responses[401]["model"] is ErrorBody
    assert "rate_limited" in responses[429]["content"]["application/json"]["examples"]
    assert "Retry-After" in responses[429]["headers"] and "headers" not in responses[401]
