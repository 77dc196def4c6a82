"""What the OpenAPI says each route returns: response models, examples, and which error
statuses (in the one shape of ``gateway.errors.ErrorBody``) each route can give.

The models document the responses; they do not filter them. Routes still return the pipeline's
dicts (so a field the models do not name is never dropped, and a model cannot turn a good
answer into a 500). That the documents are true is checked instead: schemathesis validates
real responses against them in the test suite. So the models are permissive where the data
is open (result cells are any JSON value; disclosure, explanation and audit entries allow
fields beyond those named) and exact where the shape is fixed (the error body).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from gateway.errors import ERROR_EXAMPLES, ErrorBody

DESCRIPTION = (
    "The only door into the secure data environment: aggregate SQL in, disclosure-controlled, "
    "audited tables out. Every error, on every path, is JSON "
    '`{"error": {"code", "message", "reasons", "hint"}}` (schema `ErrorBody`): the statuses '
    "each operation can give are listed with it; besides those, an unknown path gets 404 and "
    "a method a path does not offer gets 405 (with `Allow`).")

#: 429 and 503 carry Retry-After when the gateway knows how long to wait.
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait, when known (rate limit)",
                                "schema": {"type": "integer"}}}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` entries of a route for the error statuses it can return."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description, examples = ERROR_EXAMPLES[status]
        out[status] = {"model": ErrorBody, "description": description, "content": {
            "application/json": {"examples": {name: {"value": body}
                                              for name, body in examples.items()}}}}
        if status in (429, 503):
            out[status]["headers"] = _RETRY_AFTER
    return out


def ok(model: type[BaseModel], description: str) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` entry of a route's 200, documented by ``model`` (not filtered by it)."""
    return {200: {"model": model, "description": description}}


# -- pieces shared by several answers --------------------------------------------------------

class Open(BaseModel):
    """An answer that may carry fields beyond those named (they depend on regime or event)."""

    model_config = ConfigDict(extra="allow")


class LegalBasis(Open):
    type: str
    reference: str


class PolicyRef(Open):
    id: str | None = Field(description="The policy that decided; null if none covers it.")
    legal_basis: LegalBasis | None


class AuditRef(BaseModel):
    """Where the request sits in the audit trail: the entry's sequence number and hash."""

    seq: int
    hash: str


class Reason(Open):
    rule: str
    message: str


class SuppressedCell(Open):
    row: int = Field(description="Row index in ``rows``.")
    column: str = Field(description="Column name.")
    rule: str = Field(description="The rule that suppressed it.")


class Disclosure(Open):
    """What disclosure control did to the table. Fields beyond these depend on the regime:
    threshold (min_people, rounding_base, column_rounding_bases, dominance), cell_key
    (perturbation, with column_max, and note), dp (delta_spent, epsilon_left, delta_left,
    accuracy, mechanism, repeat_of). A count of rows where one person adds up to s rows is
    rounded to rounding_base times s (column_rounding_bases), or perturbed by up to s times
    the maximum (perturbation.column_max), with s raised to 1, 2, 5, 10, 20, ..."""

    regime: Literal["threshold", "cell_key", "dp"]
    epsilon_spent: float | None = Field(description="Privacy budget spent (dp only).")
    suppressed: list[SuppressedCell]
    rounded_columns: list[str]
    held_because: str | None = Field(None, description="Present when the output is held for "
                                     "review: why. Nothing is released until it is reviewed.")


# -- queries ---------------------------------------------------------------------------------

_RELEASED = {
    "query_id": "c825f14301614ac68cf67105ad53586c", "status": "released",
    "columns": ["sex", "people"], "rows": [["F", 345], ["M", 345]],
    "disclosure": {"regime": "threshold", "epsilon_spent": None, "min_people": 8,
                   "rounding_base": 5, "column_rounding_bases": {},
                   "dominance": {"nk_n": 2, "nk_k": 0.9, "p_ratio": 0.1},
                   "suppressed": [], "rounded_columns": ["people"]},
    "policy": {"id": "joint-planning", "legal_basis": {
        "type": "copi_joint_planning",
        "reference": "COPI Regulations 2002 as amended for joint health and care planning"}},
}


class QueryResult(Open):
    """A released (or held, or reviewed) table."""

    query_id: str
    status: Literal["released", "held", "rejected"]
    columns: list[str]
    rows: list[list[JsonValue]] = Field(description="One list of cells per row, in the order "
                                        "of ``columns``; a suppressed cell is null. Empty "
                                        "while the output is held.")
    disclosure: Disclosure
    policy: PolicyRef


class QueryResponse(QueryResult):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {**_RELEASED, "audit": {"seq": 2, "hash": "b1f3b65b2d9f285e31e4c944b5dee145f619f338"
                                                  "76b598df9373bcc9491c1c54"}}]})

    status: Literal["released", "held"]
    audit: AuditRef


class QueryRecord(Open):
    """A past query as kept: its outcome, and the released table or the refusal."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "query_id": _RELEASED["query_id"], "status": "released", "submitted_by": "p.jones",
        "project": "JOINT-PLANNING", "recorded": "2026-11-23T12:12:32.955462+00:00",
        "result": _RELEASED}]})

    query_id: str
    status: str = Field(description="released, held, rejected (by a reviewer), or the refusal "
                        "that ended it: refused, denied, failed.")
    submitted_by: str | None
    project: str | None
    recorded: str = Field(description="When the outcome was kept (ISO 8601, UTC).")
    result: QueryResult | ErrorBody = Field(description="The table (rows empty unless released "
                                            "or the reader is IG staff), or the error given.")


class ColumnUse(BaseModel):
    table: str
    column: str
    clauses: list[str]


class OutputColumn(Open):
    name: str
    kind: str
    shape: str | None


class Explanation(Open):
    """The decision for a query and what would run; ``obligations``, ``output`` and
    ``executed_sql`` only when it is permitted (and ``dp``, ``budget`` under dp)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "query_id": "02aecb802a8146a6bc8c24f8d574c513", "decision": "deny",
        "policy": {"id": "outbreak-control-reg3", "legal_basis": {
            "type": "copi_reg3", "reference": "COPI Regulations 2002, regulation 3(1) and 3(3)"}},
        "reasons": [{"rule": "purpose", "message": "purpose 'x' is not permitted"}],
        "hint": "permitted purposes: ['communicable_disease_control']",
        "datasets": ["gp"], "tables": ["patients"],
        "columns": [{"table": "patients", "column": "sex", "clauses": ["group", "select"]}],
        "outputs": [{"name": "sex", "kind": "group_key", "shape": None},
                    {"name": "people", "kind": "aggregate", "shape": "count"}]}]})

    query_id: str
    decision: Literal["permit", "deny"]
    policy: PolicyRef
    reasons: list[Reason]
    hint: str | None
    datasets: list[str]
    tables: list[str]
    columns: list[ColumnUse]
    outputs: list[OutputColumn]
    obligations: dict[str, JsonValue] | None = None
    output: dict[str, JsonValue] | None = None
    executed_sql: str | None = None
    contributions_sql: str | None = None


# -- catalogue and budget --------------------------------------------------------------------


class CatalogueColumn(Open):
    model_config = ConfigDict(populate_by_name=True)

    name: str
    type: str
    cls: str = Field(alias="class", description="person_key, quasi_identifier, measure, ...")
    description: str
    values: list[JsonValue] | None = Field(None, description="The allowed values, if a code.")


class CatalogueTable(Open):
    name: str
    description: str
    columns: list[CatalogueColumn]


class CatalogueDataset(Open):
    name: str
    title: str
    description: str
    tables: list[CatalogueTable]


class CatalogueProject(Open):
    """One of the caller's projects: what it may use today, or why it may not."""

    project: str
    access: Literal["permitted", "denied"]
    reasons: list[Reason] | None = Field(None, description="Why access is denied.")
    policy: str | None = None
    title: str | None = None
    legal_basis: dict[str, JsonValue] | None = None
    purposes: list[str] | None = None
    in_force: dict[str, str | None] | None = None
    rows: dict[str, JsonValue] | None = Field(None, description="Row obligations: residents "
                                              "only, opt-outs removed, consent study.")
    output: dict[str, JsonValue] | None = Field(None, description="The output regime and its "
                                                "parameters.")
    datasets: list[CatalogueDataset] | None = None


class Catalogue(Open):
    model_config = ConfigDict(json_schema_extra={"examples": [{"projects": [{
        "project": "JOINT-PLANNING", "policy": "joint-planning",
        "title": "Joint health and care planning", "access": "permitted",
        "legal_basis": {"type": "copi_joint_planning", "reference": "COPI Regulations 2002 as "
                        "amended for joint health and care planning", "status": "in_force"},
        "purposes": ["planning"], "in_force": {"from": "2025-04-01", "to": None},
        "rows": {"residents_of": {"by": "patients.local_authority_code",
                                  "values": ["E10000020"]},
                 "opt_out_removed": True, "consent_study": None},
        "output": {"regime": "threshold", "min_people": 8, "rounding_base": 5, "nk_n": 2,
                   "nk_k": 0.9, "p_ratio": 0.1},
        "datasets": [{"name": "gp", "title": "GP data for planning and research",
                      "description": "Registered patients and coded primary care events.",
                      "tables": [{"name": "patients", "description": "One row per person.",
                                  "columns": [{"name": "sex", "type": "VARCHAR",
                                               "class": "quasi_identifier",
                                               "description": "Sex recorded by the practice.",
                                               "values": ["F", "M"]}]}]}]}]}]})

    projects: list[CatalogueProject]


class Budget(Open):
    """A project's privacy budget. Only the dp regime spends one: under the others the
    epsilon figures are null and ``note`` says so."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "project": "PRJ-0042", "policy": "diabetes-research-s251", "regime": "dp",
        "epsilon_total": 4.0, "epsilon_spent": 1.0, "epsilon_left": 3.0, "delta_total": 1e-06,
        "delta_spent": 0.0, "delta_left": 1e-06, "queries_charged": 1,
        "epsilon_per_query": 1.0}]})

    project: str
    policy: str
    regime: Literal["threshold", "cell_key", "dp"]
    epsilon_total: float | None
    epsilon_spent: float | None
    epsilon_left: float | None
    delta_total: float | None = None
    delta_spent: float | None = None
    delta_left: float | None = None
    queries_charged: int | None = None
    epsilon_per_query: float | None = None
    note: str | None = None


# -- audit and reviews -----------------------------------------------------------------------


class AuditEntry(Open):
    """One entry of the trail; its other fields depend on the event (never row data)."""

    seq: int
    time: str
    event: str
    hash: str


class AuditPage(Open):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "events": [{"seq": 9, "time": "2026-11-23T12:12:33.620411+00:00",
                    "event": "query_read", "request_id": "764eb09d6c2b4828a459f3a4871e4992",
                    "query_id": "c825f14301614ac68cf67105ad53586c", "subject": "p.jones",
                    "org": "E10000020", "roles": ["planner"], "decision": "permitted",
                    "prev_hash": "8f3366fccd7144c937a11a4e7e9885bd14e152a2cb929b3a261d3956c8e1bdfe",
                    "hash": "0c4f5e1bb0b5e2e9a4bd0b1c6d2f9a7e3c5b8d1f0e2a4c6b8d0f1e3a5c7b9d1f",
                    "mac": "5d1e0c3b7a9f2e4d6c8b0a1f3e5d7c9b1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d"}],
        "next_after": None, "count": 1}]})

    events: list[AuditEntry]
    next_after: int | None = Field(description="Pass as ``after`` for the next page; null on "
                                   "the last page.")
    count: int


class FirstBad(Open):
    line: int | None
    seq: int | None
    reason: str | None
    torn_tail: bool | None


class Verification(Open):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "intact": True, "entries": 14, "checkpoint_seq": 14, "first_bad": None,
        "head_hash": "311aceeb058cb48f9d6fb0d210b61a23f51ab5803382e7ecb0ef948a4718161e"}]})

    intact: bool
    entries: int
    head_hash: str | None
    checkpoint_seq: int | None
    first_bad: FirstBad | None


class HeldOutput(Open):
    query_id: str
    submitted_by: str | None
    project: str | None
    recorded: str
    held_because: str
    result: QueryResult = Field(description="The controlled table the reviewer must judge.")


_HOLES = "too many holes: 4 of 6 cells are suppressed: more than 50%"


class ReviewQueue(Open):
    model_config = ConfigDict(json_schema_extra={"examples": [{"held": [{
        "query_id": "5b0c2d7e9f4a4e1b8c3d6f2a1e0b9c8d", "submitted_by": "p.jones",
        "project": "JOINT-PLANNING", "recorded": "2026-11-23T12:20:01.114201+00:00",
        "held_because": _HOLES, "result": {
            **_RELEASED, "query_id": "5b0c2d7e9f4a4e1b8c3d6f2a1e0b9c8d", "status": "held",
            "columns": ["lsoa_code", "residents", "over_70", "over_65"],
            "rows": [["E01026491", 15, None, None], ["E01026492", 10, None, None]],
            "disclosure": {**_RELEASED["disclosure"], "held_because": _HOLES, "suppressed": [
                {"row": r, "column": c, "rule": "fewer than 8 people"}
                for r in (0, 1) for c in ("over_70", "over_65")]}}}]}]})

    held: list[HeldOutput]


class ReviewOutcome(Open):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "query_id": "5b0c2d7e9f4a4e1b8c3d6f2a1e0b9c8d", "status": "released",
        "audit": {"seq": 31, "hash": "9e1f0c2b4d6a8e0f1c3b5d7a9e1f3c5b"
                                     "7d9a1e3f5c7b9d1a3e5f7c9b1d3a5e7f"}}]})

    query_id: str
    status: Literal["released", "rejected"]
    audit: AuditRef


class Health(Open):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"status": "ok", "engine": "duckdb", "audit": "writable"},
        {"status": "degraded", "engine": "duckdb",
         "audit": "failing: [Errno 28] No space left on device"}]})

    status: Literal["ok", "degraded"]
    engine: str
    audit: str = Field(description="'writable', or 'failing: <the last write error>'.")
