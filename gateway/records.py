"""The fields of an audit entry (and of an explain answer) drawn from a request, its caller,
the analysis and the policy decision: what information governance staff search on."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from datasets import Catalogue
from gateway.sql.analysis import Analysis
from policies import Caller, Decision

if TYPE_CHECKING:
    from gateway.pipeline import QueryRequest


def person_level(analysis: Analysis, catalogue: Catalogue) -> bool:
    return any((t := catalogue.table(n)) is not None and t.kind.value == "person_level"
               for n in analysis.tables)


def request_record(event: str, req: QueryRequest) -> dict[str, Any]:
    return {"event": event, "request_id": req.request_id, "project": req.project,
            "purpose": req.purpose, "sql": req.sql,
            "sql_sha256": hashlib.sha256(req.sql.encode("utf-8", "replace")).hexdigest()}


def caller_fields(caller: Caller) -> dict[str, Any]:
    return {"subject": caller.sub, "org": caller.org, "org_type": caller.org_type,
            "roles": list(caller.roles)}


def decision_fields(decision: Decision) -> dict[str, Any]:
    return {"policy_id": decision.policy_id, "legal_basis": decision.legal_basis,
            "datasets": list(decision.datasets),
            "reasons": [r.__dict__ for r in decision.reasons]}


def obligation_fields(decision: Decision) -> dict[str, Any]:
    """Which people the query could see: what IG staff search on ("Suffolk residents")."""
    o = decision.obligations
    residence = None
    if o.residence is not None:
        r = o.residence
        where = f"{r.lookup_table}.{r.column}" if r.lookup_table else f"{r.person_table}.{r.column}"
        residence = {"by": where, "values": list(r.values)}
    return {"residents_of": residence, "opt_out_removed": o.remove_opted_out,
            "consent_study": o.consent.study_id if o.consent else None}


def columns_used(analysis: Analysis) -> list[dict[str, Any]]:
    clauses: dict[tuple[str, str], set[str]] = {}
    for use in analysis.columns:
        clauses.setdefault((use.table, use.column), set()).add(use.clause)
    return [{"table": t, "column": c, "clauses": sorted(cl)}
            for (t, c), cl in sorted(clauses.items())]
