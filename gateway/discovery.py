"""What a caller may use: the catalogue as their projects' policies allow it today."""

from __future__ import annotations

from typing import Any

from gateway.pipeline import Pipeline
from gateway.records import obligation_fields
from policies import Caller, Facts, decide
from policies.loader import granted_columns, granted_tables


class Discovery:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def catalogue(self, request_id: str, authorization: str | None) -> dict[str, Any]:
        record: dict[str, Any] = {"event": "catalogue_read", "request_id": request_id}
        caller = self.pipeline.authenticate(record, authorization)
        self.pipeline.audit({**record, "decision": "permitted"})
        return {"projects": [self._project(caller, p) for p in caller.projects]}

    def _project(self, caller: Caller, project: str) -> dict[str, Any]:
        p = self.pipeline
        policy = p.policies.for_project(project)
        if policy is None:
            return {"project": project, "access": "denied",
                    "reasons": [{"rule": "no_policy", "message": "no policy covers it"}]}
        # Judge everything but the purpose (the caller chooses it per query) and the data.
        facts = Facts(caller, project, policy.purposes[0], frozenset(), (), p.today())
        decision = decide(facts, p.policies, p.catalogue)
        entry: dict[str, Any] = {
            "project": project, "policy": policy.id, "title": policy.title,
            "legal_basis": {"type": policy.legal_basis.type.value,
                            "reference": policy.legal_basis.reference,
                            "status": policy.legal_basis.status.value},
            "purposes": list(policy.purposes),
            "in_force": {"from": _iso(policy.effective_start), "to": _iso(policy.effective_end)},
            "access": "permitted" if decision.permitted else "denied",
        }
        if not decision.permitted:
            entry["reasons"] = [{"rule": r.rule, "message": r.message} for r in decision.reasons]
            return entry
        entry["rows"] = obligation_fields(decision)
        entry["output"] = decision.obligations.output.describe()
        tables = granted_tables(policy, p.catalogue)
        datasets = []
        for ds in p.catalogue.datasets:
            shown = []
            for t in ds.tables:
                if t.name not in tables:
                    continue
                cols = granted_columns(policy, p.catalogue, t.name)
                shown.append({"name": t.name, "description": t.description, "columns": [
                    {"name": c.name, "type": c.type, "class": c.cls.value,
                     "description": c.description, **({"values": list(c.values)}
                                                      if c.values else {})}
                    for c in t.columns if c.name in cols]})
            if shown:
                datasets.append({"name": ds.name, "title": ds.title,
                                 "description": ds.description, "tables": shown})
        entry["datasets"] = datasets
        return entry


def _iso(d) -> str | None:
    return d.isoformat() if d else None
