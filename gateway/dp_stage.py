"""The differential-privacy stage of a request: plan the noisy query, price it, spend the
project's budget, run it, add the noise, and settle the spend.

``Pipeline.run`` hands a permitted ``dp`` query on a person-level table to ``DpStage.run``; the
spend is reserved before the engine sees the query and settled (kept for identical queries, or
marked failed) once the outcome is decided, so a failure never spends budget silently and an
identical query is answered again for nothing.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import structlog
from sqlglot import exp

from datasets import Catalogue
from gateway.budget import BudgetLedger, LedgerUnavailable
from gateway.control import json_value
from gateway.disclosure import dp
from gateway.engine import DuckDBEngine
from gateway.errors import BudgetExhausted, SqlRejected
from gateway.operations import Busy, EngineSlots
from gateway.settings import Settings
from gateway.sql.analysis import Analysis
from gateway.sql.dp_rewrite import DpPlan, rewrite_dp
from gateway.sql.scans import safe_casts
from gateway.sql.tree import DIALECT
from policies import Caller, Decision

if TYPE_CHECKING:
    from gateway.pipeline import QueryRequest

log = structlog.get_logger("sde_gateway.pipeline")

#: dp: the smallest epsilon a query may ask for
MIN_EPSILON = 1e-3


class DpStage:
    def __init__(self, settings: Settings, catalogue: Catalogue, engine: DuckDBEngine,
                 ledger: BudgetLedger, slots: EngineSlots) -> None:
        self.settings = settings
        self.catalogue = catalogue
        self.engine = engine
        self.ledger = ledger
        self.slots = slots

    def plan(self, analysis: Analysis, decision: Decision) -> DpPlan:
        output = decision.obligations.output
        return rewrite_dp(analysis, decision.obligations, self.catalogue,
                          max_cells=output.max_cells_per_person,
                          max_rows=output.max_rows_per_cell, row_cap=self.settings.row_cap)

    def epsilon(self, req: QueryRequest, decision: Decision) -> float:
        output = decision.obligations.output
        epsilon = req.epsilon if req.epsilon is not None else output.epsilon_per_query
        if not MIN_EPSILON <= epsilon <= output.epsilon_budget:
            # below MIN_EPSILON the noise is meaningless and its scale overflows (review
            # round 28: epsilon 1e-310 made an infinite Laplace scale, a 500)
            raise SqlRejected(f"epsilon {epsilon:g} is outside [{MIN_EPSILON:g}, "
                              f"{output.epsilon_budget:g}] (the project's whole budget)",
                              code="invalid_epsilon",
                              hint=f"ask for an epsilon of at least {MIN_EPSILON:g}, and no "
                              "more than the budget left")
        return epsilon

    def constants(self, analysis: Analysis) -> dict[int, Any]:
        """The value of each constant label of a dp query, as the engine computes it: the dp
        query leaves them out, and reading them off the syntax tree released ``-1``, ``NULL``
        or ``DATE '2025-01-01'`` as their SQL text (review round 39). They read no column."""
        tree = analysis.tree
        at = [i for i, o in enumerate(analysis.outputs) if o.kind == "constant"]
        if not at or not isinstance(tree, exp.Select):
            return {}
        labels = [tree.expressions[i].unalias() for i in at]
        if any(label.find(exp.Column, exp.Table, exp.Select) for label in labels):
            # the analysis makes a column constant only if it reads nothing; run nothing else
            raise SqlRejected("a constant output column reads data",
                              hint="name each label as a literal")
        select = exp.select(*[exp.alias_(label.copy(), f"c{i}")
                              for i, label in zip(at, labels, strict=True)])
        safe_casts(select)
        got = self.engine.execute(select.sql(dialect=DIALECT),
                                  timeout_s=self.settings.query_timeout_s, row_cap=1)
        return dict(zip(at, got.rows[0], strict=True))

    def run(self, req: QueryRequest, caller: Caller, analysis: Analysis,
                decision: Decision, record: dict[str, Any]) -> dict[str, Any]:
        """Plan, price, spend, run, noise. Returns the body, or a stored answer's body."""
        output = decision.obligations.output
        plan = self.plan(analysis, decision)
        epsilon = self.epsilon(req, decision)
        mech = dp.build(plan, epsilon, output.delta_per_query)
        record["executed_sql"] = plan.sql
        constants = self.constants(analysis)  # before anything is spent
        fingerprint = hashlib.sha256(json.dumps(
            [req.project, decision.policy_id, req.sql, repr(epsilon), output.delta_per_query,
             self.engine.data_version]).encode()).hexdigest()
        reservation = self.ledger.reserve(
            project=req.project, fingerprint=fingerprint, request_id=req.request_id,
            subject=caller.sub, epsilon=mech.epsilon_spent, delta=mech.delta_spent,
            epsilon_total=output.epsilon_budget, delta_total=output.delta_budget)
        budget = reservation.budget
        if reservation.answer is not None:
            record["repeat_of"] = reservation.answer["query_id"]
            body = {k: reservation.answer[k] for k in ("columns", "rows", "disclosure")}
            body["disclosure"] = {**body["disclosure"], "epsilon_spent": 0.0,
                                  "delta_spent": 0.0, "epsilon_left": budget.epsilon_left,
                                  "repeat_of": reservation.answer["query_id"],
                                  "note": "an identical query was answered before: its answer "
                                  "is returned and nothing is spent"}
            return body
        if not reservation.spent:
            figures = {"epsilon_requested": mech.epsilon_spent,
                       "delta_requested": mech.delta_spent, **budget.as_dict()}
            raise BudgetExhausted(
                f"project {req.project} has epsilon {budget.epsilon_left:.6g} left; this query "
                f"needs {mech.epsilon_spent:.6g}", reasons=[figures],
                hint="ask for a smaller epsilon (the answer will be noisier), or ask the data "
                "controller about the project's budget")
        try:
            self.slots.acquire()
        except Busy:  # the query never reached the engine: take the spend back
            self.ledger.cancel(req.request_id)
            raise
        record["epsilon_spent"] = mech.epsilon_spent
        record["delta_spent"] = mech.delta_spent
        record["dp_fingerprint"] = fingerprint
        try:
            try:
                raw = self.engine.execute(plan.sql, timeout_s=self.settings.query_timeout_s,
                                          row_cap=10 * self.settings.row_cap)
            finally:
                self.slots.release()
            names = [o.name for o in analysis.outputs]
            released = dp.release(mech, raw.rows, names, [o.kind for o in analysis.outputs],
                                  constants)
        except BaseException:
            self.settle(req, (fingerprint, mech), None)
            raise
        disclosure = {
            "regime": "dp", "epsilon_spent": mech.epsilon_spent,
            "delta_spent": mech.delta_spent, "epsilon_left": budget.epsilon_left,
            "delta_left": budget.delta_left, "accuracy": released.accuracy,
            "mechanism": mech.describe(), "suppressed": released.suppressed,
            "rounded_columns": [],
        }
        # as plain JSON like every other regime's values: keys from the data (dates, NaN),
        # constants (1.5 is a Decimal) (review round 30)
        rows = [[json_value(v) for v in row] for row in released.rows]
        return {"columns": names, "rows": rows, "disclosure": disclosure,
                "_dp": (fingerprint, mech)}

    def settle(self, req: QueryRequest, spent: tuple | None,
                response: dict[str, Any] | None) -> None:
        """Close a dp spend: keep its answer for identical queries, or mark it failed. If the
        ledger cannot take the outcome, the spend stays counted (marked interrupted at the next
        start) and the outcome already decided stands."""
        if spent is None:
            return
        try:
            self.ledger.settle(project=req.project, fingerprint=spent[0],
                               request_id=req.request_id, answer=response)
        except LedgerUnavailable as err:
            log.error("budget_outcome_not_kept", request_id=req.request_id, error=err.message)
