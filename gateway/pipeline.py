"""One request, start to finish: authenticate, analyse, decide, rewrite, execute, control, audit.

The stages run in this order and nowhere else; routes only call ``Pipeline.run``. The audit
write wraps the whole, so refusals, denials and failures are recorded as well as releases, and
an entry is durable before anything is returned: if it cannot be written, nothing is released.
"""

from __future__ import annotations

import hashlib
import math
import sqlite3
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as dt_time
from decimal import Decimal
from functools import lru_cache
from typing import Any

import structlog

from audit import AuditTrail, AuditWriteError
from datasets import Catalogue
from gateway.auth import TokenVerifier
from gateway.disclosure.secondary import RowShape, protect, relations
from gateway.disclosure.threshold import (
    Controlled,
    Dominance,
    SuppressedCell,
    apply_threshold,
    check_outputs,
)
from gateway.engine import DuckDBEngine, RawResult
from gateway.errors import (
    AuditUnavailable,
    GatewayError,
    PolicyDenied,
    RegimeUnavailable,
    Unauthenticated,
)
from gateway.results import ResultStore
from gateway.settings import Settings
from gateway.sql.analysis import Analysis, analyse
from gateway.sql.rewrite import Plan, rewrite
from policies import Caller, Decision, Facts, PolicySet, decide

log = structlog.get_logger("sde_gateway.pipeline")


@dataclass(frozen=True)
class QueryRequest:
    request_id: str
    authorization: str | None
    sql: str
    project: str
    purpose: str


class StateUnavailable(GatewayError):
    status, code, decision = 503, "state_unavailable", "failed"


class InternalError(GatewayError):
    """A defect in the gateway. Audited; the client gets no detail beyond the request id."""

    status, code, decision = 500, "internal_error", "failed"


class Pipeline:
    def __init__(
        self, settings: Settings, catalogue: Catalogue, policies: PolicySet,
        engine: DuckDBEngine, verifier: TokenVerifier, trail: AuditTrail, results: ResultStore,
    ) -> None:
        self.settings = settings
        self.catalogue = catalogue
        self.policies = policies
        self.engine = engine
        self.verifier = verifier
        self.trail = trail
        self.results = results
        self._analyse = lru_cache(maxsize=1024)(self._analyse_uncached)

    def today(self) -> date:
        return self.settings.today or date.today()

    # -- stages -------------------------------------------------------------------------

    def _analyse_uncached(self, sql: str) -> Analysis:
        return analyse(sql, self.catalogue, max_chars=self.settings.max_sql_chars,
                       max_depth=self.settings.max_sql_depth)

    def _decide(self, caller: Caller, req: QueryRequest, analysis: Analysis) -> Decision:
        facts = Facts(caller=caller, project=req.project, purpose=req.purpose,
                      tables=analysis.tables, columns=analysis.columns, today=self.today())
        return decide(facts, self.policies, self.catalogue)

    def _control(self, analysis: Analysis, plan: Plan, raw: RawResult, decision: Decision,
                 contributions: RawResult | None = None) -> dict[str, Any]:
        output = decision.obligations.output
        width = len(plan.outputs)
        rows = [[_json_value(v) for v in row[:width]] for row in raw.rows]
        names = [o.name for o in plan.outputs]
        disclosure: dict[str, Any] = {"regime": output.regime, "epsilon_spent": None}
        if not plan.person_level:
            disclosure.update(suppressed=[], rounded_columns=[],
                              note="public reference data only: no people behind the cells")
            return {"columns": names, "rows": rows, "disclosure": disclosure}
        people = [[row[i] if i is not None else None for i in plan.people_index]
                  for row in raw.rows]
        dominance = Dominance(output.nk_n, output.nk_k, output.p_ratio)
        controlled = apply_threshold(
            rows, names, [o.kind for o in plan.outputs], [o.is_count for o in plan.outputs],
            people, min_people=output.min_people, rounding_base=output.rounding_base,
            contributions=_match_contributions(plan, raw, contributions), dominance=dominance,
        )
        controlled = self._secondary(analysis, plan, raw, controlled, names)
        controlled, withheld = _withhold_small_groups(
            controlled, people, output.min_people, _keyed_rows(analysis, plan, raw))
        disclosure["rows_withheld"] = withheld
        if controlled.hold:
            disclosure["held_because"] = controlled.hold
        disclosure.update(
            min_people=output.min_people,
            rounding_base=output.rounding_base,
            dominance={"nk_n": dominance.nk_n, "nk_k": dominance.nk_k,
                       "p_ratio": dominance.p_ratio},
            suppressed=[{"row": s.row, "column": s.column, "rule": s.rule}
                        for s in controlled.suppressed],
            rounded_columns=list(controlled.rounded_columns),
        )
        return {"columns": names, "rows": controlled.rows, "disclosure": disclosure}

    # -- the whole ----------------------------------------------------------------------

    def explain(self, req: QueryRequest) -> dict[str, Any]:
        """The decision for a query, and what would run, without running anything."""
        started = time.perf_counter()
        record = _request_record("explain", req)
        try:
            caller = self.verifier.verify(req.authorization)
            record.update(_caller_fields(caller))
            analysis = self._analyse(req.sql)
            record.update(tables=sorted(analysis.tables), columns=_columns(analysis))
            decision = self._decide(caller, req, analysis)
            record.update(_decision_fields(decision))
            body: dict[str, Any] = {
                "query_id": req.request_id,
                "decision": "permit" if decision.permitted else "deny",
                "policy": {"id": decision.policy_id, "legal_basis": decision.legal_basis},
                "reasons": [{"rule": r.rule, "message": r.message} for r in decision.reasons],
                "hint": decision.hint,
                "datasets": list(decision.datasets),
                "tables": sorted(analysis.tables),
                "columns": _columns(analysis),
                "outputs": [{"name": o.name, "kind": o.kind, "shape": o.shape or None}
                            for o in analysis.outputs],
            }
            if decision.permitted:
                output = decision.obligations.output
                if output.regime == "threshold":
                    check_outputs(analysis.outputs)
                plan = rewrite(analysis, decision.obligations, self.catalogue,
                               self.settings.row_cap)
                body.update(obligations=_obligations(decision),
                            output=output.describe(),
                            executed_sql=plan.sql,
                            contributions_sql=plan.contributions.sql
                            if plan.contributions else None)
        except GatewayError as err:
            self._close(record, started, err.decision, error=err)
            raise
        record["explain_outcome"] = body["decision"]
        self._close(record, started, "explained")
        return body

    def run(self, req: QueryRequest) -> dict[str, Any]:
        started = time.perf_counter()
        record = _request_record("query", req)
        caller: Caller | None = None
        auth_error: Unauthenticated | None = None
        try:
            caller = self.verifier.verify(req.authorization)
            record.update(_caller_fields(caller))
        except Unauthenticated as err:
            auth_error = err
        # Write-ahead: the request is on record before any work is done for it. If it cannot
        # be written, nothing is done (AuditUnavailable, 503).
        self.audit({**record, "event": "query_received"})
        stage = "authenticate"
        try:
            if auth_error is not None:
                raise auth_error
            stage = "analyse"
            analysis = self._analyse(req.sql)
            record.update(tables=sorted(analysis.tables), columns=_columns(analysis))
            stage = "decide"
            decision = self._decide(caller, req, analysis)
            record.update(_decision_fields(decision))
            if not decision.permitted:
                raise PolicyDenied(
                    "the policy does not permit this query",
                    reasons=[{"rule": r.rule, "message": r.message,
                              "policy": decision.policy_id} for r in decision.reasons],
                    hint=decision.hint,
                )
            output = decision.obligations.output
            record["regime"] = output.regime
            record["obligations"] = _obligations(decision)
            if output.regime != "threshold":
                raise RegimeUnavailable(
                    f"the {output.regime!r} output regime of policy {decision.policy_id!r} is "
                    "not available in this build, so nothing can be released under it",
                    hint="threshold policies (JOINT-PLANNING, OUTBREAK-2026) work today",
                )
            check_outputs(analysis.outputs)
            stage = "rewrite"
            plan = rewrite(analysis, decision.obligations, self.catalogue, self.settings.row_cap)
            record["executed_sql"] = plan.sql
            stage = "execute"
            raw = self.engine.execute(plan.sql, timeout_s=self.settings.query_timeout_s,
                                      row_cap=self.settings.row_cap)
            contributions = None
            if plan.contributions is not None and plan.contributions.inline_offset is not None:
                contributions = _inline_contributions(plan, raw)
            elif plan.contributions is not None:
                record["contributions_sql"] = plan.contributions.sql
                contributions = self.engine.execute(
                    plan.contributions.sql, timeout_s=self.settings.query_timeout_s,
                    row_cap=self.settings.row_cap)
            stage = "control"
            body = self._control(analysis, plan, raw, decision, contributions)
        except GatewayError as err:
            self._close(record, started, err.decision, error=err)
            try:
                self._keep(req, caller, err.decision, err.body())
            except StateUnavailable as keep_err:  # the refusal stands; it is audited
                log.error("outcome_not_kept", request_id=req.request_id, error=keep_err.message)
            raise
        except Exception as exc:  # a defect: audit it, tell the client nothing of it
            log.exception("pipeline_defect", stage=stage, request_id=req.request_id)
            err = InternalError(f"internal error in stage {stage}; quote request id "
                                f"{req.request_id}")
            record["defect"] = type(exc).__name__
            self._close(record, started, "failed", error=err)
            raise err from None
        held = "held_because" in body["disclosure"]
        status = "held" if held else "released"
        record.update(rows_released=0 if held else len(body["rows"]),
                      cells_suppressed=[{"row": s["row"], "column": s["column"]}
                                        for s in body["disclosure"]["suppressed"]],
                      epsilon_spent=None)
        if held:
            record["held_because"] = body["disclosure"]["held_because"]
        response = {
            "query_id": req.request_id, "status": status, **body,
            "policy": {"id": decision.policy_id, "legal_basis": decision.legal_basis},
        }
        # Keep the result first, then audit it: if the entry cannot be written the kept
        # result is withdrawn, so nothing is ever readable that the trail does not show.
        try:
            self._keep(req, caller, status, response)
        except StateUnavailable as err:
            self._close(record, started, "failed", error=err)
            raise
        try:
            entry = self._close(record, started, status)
        except AuditUnavailable:
            self.results.delete(req.request_id)
            raise
        if held:  # nothing leaves until an IG reviewer releases it
            response = {**response, "rows": []}
        response["audit"] = {"seq": entry["seq"], "hash": entry["hash"]}
        return response

    def _keep(self, req: QueryRequest, caller: Caller | None, status: str,
              body: dict[str, Any]) -> None:
        try:
            self.results.put(req.request_id, caller.sub if caller else None, req.project,
                             status, body)
        except sqlite3.Error as exc:
            raise StateUnavailable("the result store cannot be written; nothing is released",
                                   hint="operators: check the state directory's disk") from exc

    def _secondary(self, analysis: Analysis, plan: Plan, raw: RawResult,
                   controlled: Controlled, names: list[str]) -> Controlled:
        """Protect suppressed cells from recovery through the margins of the same result."""
        shapes = _row_shapes(analysis, plan, raw)
        if shapes is None:
            return controlled
        rels = relations(shapes)
        if not rels:
            return controlled
        rows = [list(r) for r in controlled.rows]
        extra = []
        for c, out in enumerate(plan.outputs):
            if out.kind != "aggregate" or not out.additive:
                continue
            hidden = {s.row for s in controlled.suppressed if s.column == names[c]}
            values = [raw.rows[r][c] for r in range(len(rows))]
            for r in sorted(protect(values, hidden, rels)):
                rows[r][c] = None
                extra.append(SuppressedCell(r, names[c], "secondary: protects a suppressed "
                                            "cell from recovery through the margins"))
        return Controlled(rows, controlled.suppressed + tuple(extra),
                          controlled.rounded_columns, controlled.hold)

    def _close(self, record: dict[str, Any], started: float, decision: str,
               error: GatewayError | None = None) -> dict[str, Any]:
        record["decision"] = decision
        if error is not None:
            record.update(error_code=error.code, error=error.message,
                          reasons=record.get("reasons") if decision == "denied"
                          else error.reasons)
        record["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
        return self.audit(record)

    def audit(self, record: dict[str, Any]) -> dict[str, Any]:
        """Write one entry durably, or raise AuditUnavailable: the caller releases nothing."""
        try:
            entry = self.trail.append(record)
        except AuditWriteError as exc:
            log.error("audit_write_failed", error=str(exc))
            raise AuditUnavailable("the audit trail cannot be written; nothing is released",
                                   hint="operators: check the state directory's disk") from None
        log.info("audited", seq=entry["seq"], decision=record.get("decision"),
                 kind=record.get("event"), subject=record.get("subject"))
        return entry


def _keyed_rows(analysis: Analysis, plan: Plan, raw: RawResult) -> list[bool]:
    """Per row, whether it carries group keys taken from the data (not only constant labels
    or the NULLs of a margin)."""
    keys = [i for i, o in enumerate(plan.outputs) if o.kind == "group_key"]
    out = []
    for row in raw.rows:
        if plan.branch_index is not None:
            kinds = analysis.branch_kinds[row[plan.branch_index]]
            out.append(any(kinds[i] == "group_key" for i in keys))
        elif plan.grouping_index:
            out.append(any(not row[h] for _, h in plan.grouping_index))
        else:
            out.append(bool(keys))
    return out


def _withhold_small_groups(controlled: Controlled, people: list[list[int | None]],
                           min_people: int, keyed: list[bool]) -> tuple[Controlled, int]:
    """A keyed row that no cell shows to rest on at least k people is not released at all: its
    keys alone would describe fewer than k people (a CASE key can carry one person's exact
    date), whatever zero or suppressed cells stand beside them. (Rows without keys, an
    ungrouped total or a constant label, describe nobody and stay.)"""
    drop = {r for r, row in enumerate(people)
            if keyed[r] and max((n or 0 for n in row), default=min_people) < min_people}
    if not drop:
        return controlled, 0
    new_index = {}
    rows = []
    for r, row in enumerate(controlled.rows):
        if r not in drop:
            new_index[r] = len(rows)
            rows.append(row)
    cells = tuple(SuppressedCell(new_index[c.row], c.column, c.rule)
                  for c in controlled.suppressed if c.row in new_index)
    return Controlled(rows, cells, controlled.rounded_columns, controlled.hold), len(drop)


def _row_shapes(analysis: Analysis, plan: Plan, raw: RawResult) -> list[RowShape] | None:
    """Where each released row sits in the margins, or None if the result has none."""
    keys = [i for i, o in enumerate(plan.outputs) if o.kind != "aggregate"]

    def key_values(row) -> tuple:  # the key columns, aggregate positions blanked
        return tuple(row[i] if i in keys else None for i in range(len(plan.outputs)))

    if plan.grouping_index:
        return [RowShape(0, frozenset(i for i, h in plan.grouping_index if row[h]),
                         key_values(row)) for row in raw.rows]
    if plan.branch_index is None:
        return None
    # A UNION branch is a margin of another when it aggregates the same rows and puts a
    # constant where the other groups: its rows sum the other's over those columns.
    kinds, rows_sql = analysis.branch_kinds, analysis.branch_rows
    families = {sql: n for n, sql in enumerate(dict.fromkeys(rows_sql))}
    rolled = []
    for b, k in enumerate(kinds):
        peers = [kk for bb, kk in enumerate(kinds) if rows_sql[bb] == rows_sql[b]]
        rolled.append(frozenset(i for i in keys if k[i] == "constant"
                                and any(pk[i] == "group_key" for pk in peers)))
    return [RowShape(families[rows_sql[row[plan.branch_index]]],
                     rolled[row[plan.branch_index]], key_values(row)) for row in raw.rows]


def _request_record(event: str, req: QueryRequest) -> dict[str, Any]:
    return {"event": event, "request_id": req.request_id, "project": req.project,
            "purpose": req.purpose, "sql": req.sql,
            "sql_sha256": hashlib.sha256(req.sql.encode("utf-8", "replace")).hexdigest()}


def _caller_fields(caller: Caller) -> dict[str, Any]:
    return {"subject": caller.sub, "org": caller.org, "org_type": caller.org_type,
            "roles": list(caller.roles)}


def _decision_fields(decision: Decision) -> dict[str, Any]:
    return {"policy_id": decision.policy_id, "legal_basis": decision.legal_basis,
            "datasets": list(decision.datasets),
            "reasons": [r.__dict__ for r in decision.reasons]}


def _inline_contributions(plan: Plan, raw: RawResult) -> RawResult:
    """The contributions a single-pass plan returned beside each row, shaped as if they had
    come from a contributions query (keys, then top, total and smallest per measure)."""
    c = plan.contributions
    width = 3 * len(c.measure_columns)
    return RawResult((), [tuple(row[i] for i in c.key_columns)
                          + tuple(row[c.inline_offset:c.inline_offset + width])
                          for row in raw.rows])


def _match_contributions(plan: Plan, raw: RawResult, result: RawResult | None):
    """Per released row, the contributions behind each SUM/AVG-of-measure cell (by group keys).

    A row without a match gets None for its cells, which the dominance rule treats as
    dominated: unknown contributions are never assumed safe.
    """
    if plan.contributions is None or result is None:
        return None
    c = plan.contributions
    nkeys = len(c.key_columns)
    by_key = {}
    for row in result.rows:
        by_key[tuple(row[:nkeys])] = {
            col: (row[nkeys + 3 * m] or [], row[nkeys + 3 * m + 1], row[nkeys + 3 * m + 2])
            for m, col in enumerate(c.measure_columns)
        }
    matched = []
    for row in raw.rows:
        if any(row[h] for _, h in plan.grouping_index):
            # A margin row: its key values (NULLs) can equal a real group's, and the
            # contributions were computed per detail group; unknown, so judged dominated.
            matched.append(dict.fromkeys(c.measure_columns))
            continue
        key = tuple(row[i] for i in c.key_columns)
        matched.append(by_key.get(key, dict.fromkeys(c.measure_columns)))
    return matched


def _obligations(decision: Decision) -> dict[str, Any]:
    """Which people the query could see: what IG staff search on ("Suffolk residents")."""
    o = decision.obligations
    residence = None
    if o.residence is not None:
        r = o.residence
        where = f"{r.lookup_table}.{r.column}" if r.lookup_table else f"{r.person_table}.{r.column}"
        residence = {"by": where, "values": list(r.values)}
    return {"residents_of": residence, "opt_out_removed": o.remove_opted_out,
            "consent_study": o.consent.study_id if o.consent else None}


def _columns(analysis: Analysis) -> list[dict[str, Any]]:
    clauses: dict[tuple[str, str], set[str]] = {}
    for use in analysis.columns:
        clauses.setdefault((use.table, use.column), set()).add(use.clause)
    return [{"table": t, "column": c, "clauses": sorted(cl)}
            for (t, c), cl in sorted(clauses.items())]


def _json_value(value: Any) -> Any:
    """A value of the released table as plain JSON; no type can break the response."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, date | datetime | dt_time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return _json_value(float(value))
    if isinstance(value, timedelta):
        return str(value)
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return str(value)
