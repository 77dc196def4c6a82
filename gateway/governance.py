"""What information governance staff do: search the trail, verify it, read past queries.

Only the ``ig_auditor`` role may search or verify. A past query can be read by its submitter
and by IG. Every one of these reads is itself audited: who looked at the record is part of the
record.
"""

from __future__ import annotations

from typing import Any

from audit import EventFilter, search, verify_trail
from gateway.budget import LedgerUnavailable
from gateway.errors import Forbidden, GatewayError
from gateway.pipeline import Pipeline
from policies import Caller

AUDITOR = "ig_auditor"


class NotFound(GatewayError):
    status, code, decision = 404, "not_found", "refused"


class Conflict(GatewayError):
    status, code, decision = 409, "conflict", "refused"


class Governance:
    def __init__(self, pipeline: Pipeline, audit_key: bytes, checkpoint_public_key) -> None:
        self.pipeline = pipeline
        self.audit_key = audit_key
        self.public_key = checkpoint_public_key

    def _caller(self, record: dict[str, Any], authorization: str | None) -> Caller:
        """The verified caller, added to ``record``; a bad token is audited, then raised."""
        caller = self.pipeline.authenticate(record, authorization)
        record["roles"] = list(caller.roles)
        return caller

    def _access(self, request_id: str, authorization: str | None, action: str,
                details: dict[str, Any], *, auditor_only: bool) -> Caller:
        record: dict[str, Any] = {"event": action, "request_id": request_id, **details}
        caller = self._caller(record, authorization)
        if auditor_only and AUDITOR not in caller.roles:
            err = Forbidden(f"{action.replace('_', ' ')} is for the {AUDITOR} role only",
                            reasons=[{"rule": "role", "message": f"roles {list(caller.roles)}"}],
                            hint="researchers and planners read their own queries at "
                            "GET /v1/queries/{id}")
            self.pipeline.audit({**record, "decision": "denied", "error_code": err.code})
            raise err
        self.pipeline.audit({**record, "decision": "permitted"})
        return caller

    def events(self, request_id: str, authorization: str | None, where: EventFilter,
               after: int, limit: int) -> dict[str, Any]:
        filters = {k: v for k, v in where.__dict__.items() if v is not None}
        self._access(request_id, authorization, "audit_search",
                     {"filters": filters, "after": after, "limit": limit}, auditor_only=True)
        entries, next_after = search(self.pipeline.settings.audit_path, where,
                                     after_seq=after, limit=limit)
        return {"events": entries, "next_after": next_after, "count": len(entries)}

    def verify(self, request_id: str, authorization: str | None) -> dict[str, Any]:
        self._access(request_id, authorization, "audit_verify", {}, auditor_only=True)
        result = verify_trail(self.pipeline.settings.audit_path, self.audit_key,
                              public_key=self.public_key)
        return {"intact": result.ok, "entries": result.entries, "head_hash": result.head_hash,
                "checkpoint_seq": result.checkpoint_seq,
                "first_bad": None if result.ok else {"line": result.first_bad_line,
                                                     "seq": result.first_bad_seq,
                                                     "reason": result.reason,
                                                     "torn_tail": result.torn_tail}}

    def query(self, request_id: str, authorization: str | None, query_id: str) -> dict[str, Any]:
        caller = self._access(request_id, authorization, "query_read",
                              {"query_id": query_id}, auditor_only=False)
        kept = self.pipeline.results.get(query_id)
        if kept is None or (AUDITOR not in caller.roles and kept["subject"] != caller.sub):
            # the same answer whether it does not exist or is someone else's
            raise NotFound(f"no query {query_id!r} that you may read")
        result = kept["body"]
        if kept["status"] in ("held", "rejected") and AUDITOR not in caller.roles:
            result = {**result, "rows": []}  # nothing leaves until a reviewer releases it
        return {"query_id": query_id, "status": kept["status"], "submitted_by": kept["subject"],
                "project": kept["project"], "recorded": kept["created"], "result": result}

    def budget(self, request_id: str, authorization: str | None,
               project: str) -> dict[str, Any]:
        """A project's privacy budget, for the project's members and IG staff.

        A member is a caller whose token names the project; the same 404 answers an unknown
        project and one the caller is not a member of, so projects cannot be probed."""
        record: dict[str, Any] = {"event": "budget_read", "request_id": request_id,
                                  "project": project}
        caller = self._caller(record, authorization)
        policy = self.pipeline.policies.for_project(project)
        if policy is None or (AUDITOR not in caller.roles and project not in caller.projects):
            err = NotFound(f"no project {project!r} that you may read",
                           hint="your token's projects claim lists your projects")
            self.pipeline.audit({**record, "decision": "refused", "error_code": err.code})
            raise err
        output = policy.output
        body: dict[str, Any] = {"project": project, "policy": policy.id, "regime": output.regime}
        if output.regime != "dp":
            body.update(epsilon_total=None, epsilon_spent=None, epsilon_left=None,
                        note=f"the {output.regime} regime spends no privacy budget")
        else:
            try:  # read first: the entry must say whether the caller got the figures
                budget = self.pipeline.ledger.budget(project, output.epsilon_budget,
                                                     output.delta_budget)
            except LedgerUnavailable as err:
                self.pipeline.audit({**record, "decision": "failed", "error_code": err.code})
                raise
            body.update(**budget.as_dict(), epsilon_per_query=output.epsilon_per_query)
        self.pipeline.audit({**record, "decision": "permitted"})
        return body

    def reviews(self, request_id: str, authorization: str | None) -> dict[str, Any]:
        """Outputs held for review, with the controlled table a reviewer must judge."""
        self._access(request_id, authorization, "review_list", {}, auditor_only=True)
        return {"held": [
            {"query_id": k["query_id"], "submitted_by": k["subject"], "project": k["project"],
             "recorded": k["created"], "held_because": k["body"]["disclosure"]["held_because"],
             "result": k["body"]} for k in self.pipeline.results.held()]}

    def review(self, request_id: str, authorization: str | None, query_id: str,
               decision: str, reason: str) -> dict[str, Any]:
        """Release or reject a held output. Four eyes: never the requester's own."""
        details = {"query_id": query_id, "review": decision, "reason": reason}
        caller = self._access(request_id, authorization, "review_decision_requested", details,
                              auditor_only=True)
        kept = self.pipeline.results.get(query_id)
        record = {"event": "review_decision", "request_id": request_id, "subject": caller.sub,
                  "org": caller.org, **details}
        if kept is None or kept["status"] != "held":
            err = Conflict(f"query {query_id!r} is not held for review",
                           hint="GET /v1/reviews lists what is held")
            self.pipeline.audit({**record, "decision": "refused", "error_code": err.code})
            raise err
        if kept["subject"] == caller.sub:
            err = Forbidden("you cannot review your own output (four-eyes)",
                            hint="another IG reviewer must decide")
            self.pipeline.audit({**record, "decision": "denied", "error_code": err.code})
            raise err
        status = "released" if decision == "release" else "rejected"
        body = {**kept["body"], "status": status,
                "review": {"by": caller.sub, "decision": decision, "reason": reason}}
        # On the record first: a release the trail does not show must not become readable.
        entry = self.pipeline.audit({**record, "decision": status,
                                     "submitted_by": kept["subject"],
                                     "rows_released": len(body["rows"]) if status == "released"
                                     else 0})
        self.pipeline.results.set_status(query_id, status, body)
        return {"query_id": query_id, "status": status,
                "audit": {"seq": entry["seq"], "hash": entry["hash"]}}
