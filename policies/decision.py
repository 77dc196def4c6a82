"""The decision: plain facts about a request in, permit with obligations or deny with reasons out.

Deny by default. Every reason names the policy and the rule, and where it can, what would be
allowed instead. The engine never sees SQL: the gateway extracts the facts and enforces the
obligations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from datasets import Catalogue
from datasets.catalogue import NEVER_QUERYABLE
from policies.loader import PolicySet, granted_columns, granted_tables
from policies.model import QUERY_ROLES, REG3_ORG_TYPES, BasisStatus, BasisType, Output, Policy


@dataclass(frozen=True)
class Caller:
    sub: str
    org: str
    org_type: str
    roles: tuple[str, ...]
    projects: tuple[str, ...]


@dataclass(frozen=True)
class ColumnUse:
    """A source column referenced by a query, and the clause it appears in."""

    table: str
    column: str
    clause: str


@dataclass(frozen=True)
class Facts:
    caller: Caller
    project: str
    purpose: str
    tables: frozenset[str]
    columns: tuple[ColumnUse, ...]
    today: date


@dataclass(frozen=True)
class Reason:
    rule: str
    message: str


@dataclass(frozen=True)
class ResidenceFilter:
    """Keep only people whose ``person_table.column`` (or lookup column via a join) is a value."""

    person_table: str
    column: str
    values: tuple[str, ...]
    lookup_table: str | None = None
    via: str | None = None


@dataclass(frozen=True)
class ConsentCohort:
    study_id: str
    as_of: date


@dataclass(frozen=True)
class Obligations:
    residence: ResidenceFilter | None
    remove_opted_out: bool
    consent: ConsentCohort | None
    output: Output


@dataclass(frozen=True)
class Decision:
    permitted: bool
    policy_id: str | None
    legal_basis: dict[str, str] | None
    reasons: tuple[Reason, ...]
    hint: str | None = None
    obligations: Obligations | None = None
    datasets: tuple[str, ...] = field(default=())


def decide(facts: Facts, policies: PolicySet, catalogue: Catalogue) -> Decision:
    caller = facts.caller
    datasets = tuple(
        sorted({catalogue.table(t).dataset for t in facts.tables if catalogue.table(t)})
    )
    if not QUERY_ROLES & set(caller.roles):
        return _deny(
            None, "role", f"role(s) {list(caller.roles)} may not query data",
            "queries need the researcher or planner role; IG auditors use the audit API",
            datasets,
        )
    if facts.project not in caller.projects:
        return _deny(
            None, "project_membership",
            f"your token does not include project {facts.project!r}",
            f"your projects: {list(caller.projects) or 'none'}", datasets,
        )
    policy = policies.for_project(facts.project)
    if policy is None:
        return _deny(
            None, "no_policy", f"no policy covers project {facts.project!r}",
            "ask your IG team which agreement covers this work", datasets,
        )
    reasons: list[Reason] = []
    hints: list[str] = []
    basis = policy.legal_basis
    if basis.status is not BasisStatus.IN_FORCE:
        reasons.append(Reason("basis_status", f"legal basis {basis.reference!r} is "
                              f"{basis.status.value}, not in force; it cannot grant access"))
    start, end = policy.effective_start, policy.effective_end
    if start and facts.today < start:
        reasons.append(Reason("validity", f"the policy takes effect on {start.isoformat()}"))
    if end and facts.today > end:
        reasons.append(Reason("validity", f"the policy expired on {end.isoformat()} "
                              "(the earliest end date of its agreement, approval or notices)"))
    if basis.type is BasisType.COPI_REG3 and caller.org_type not in REG3_ORG_TYPES:
        reasons.append(Reason("reg3_eligibility", f"organisation type {caller.org_type!r} is not "
                              "a body that may process under COPI regulation 3(3)"))
    elif caller.org_type not in policy.subjects.org_types:
        reasons.append(Reason("org_type", f"organisation type {caller.org_type!r} is not covered"))
        hints.append(f"covered: {[t.value for t in policy.subjects.org_types]}")
    if not set(caller.roles) & {r.value for r in policy.subjects.roles}:
        reasons.append(Reason("role", f"role(s) {list(caller.roles)} not covered"))
        hints.append(f"roles covered: {[r.value for r in policy.subjects.roles]}")
    if policy.subjects.named_users and caller.sub not in policy.subjects.named_users:
        reasons.append(Reason("named_user", f"{caller.sub!r} is not a named user of project "
                              f"{policy.project!r}"))
        hints.append("ask the project lead to add you to the approval's named users")
    if facts.purpose not in policy.purposes:
        reasons.append(Reason("purpose", f"purpose {facts.purpose!r} is not permitted"))
        hints.append(f"permitted purposes: {list(policy.purposes)}")
    reasons.extend(_data_reasons(facts, policy, catalogue, hints))
    residence = None
    if policy.rows.residents_only:
        rule = next((r for r in policy.rows.residence if r.org_type == caller.org_type), None)
        if rule is None:
            reasons.append(Reason("residence", f"no residence rule for organisation type "
                                  f"{caller.org_type!r}; access is refused"))
        else:
            table, column = rule.column.split(".")
            residence = ResidenceFilter(
                person_table=rule.person_table, column=column, values=(caller.org,),
                lookup_table=table if rule.via else None, via=rule.via,
            )
    if reasons:
        return Decision(False, policy.id, _basis(policy), tuple(reasons),
                        "; ".join(dict.fromkeys(hints)) or None, None, datasets)
    consent = (
        ConsentCohort(policy.rows.consent_study, facts.today) if policy.rows.consent_study else None
    )
    return Decision(
        True, policy.id, _basis(policy),
        (Reason("permit", f"permitted by policy {policy.id!r} under {basis.reference}"),),
        None,
        Obligations(residence, policy.opt_out_applies, consent, policy.output),
        datasets,
    )


def _data_reasons(
    facts: Facts, policy: Policy, catalogue: Catalogue, hints: list[str]
) -> list[Reason]:
    reasons = []
    granted = granted_tables(policy, catalogue)
    for t in sorted(facts.tables - granted):
        reasons.append(Reason("table", f"table {t!r} is not granted by policy {policy.id!r}"))
    if facts.tables - granted:
        hints.append(f"tables granted: {sorted(granted)}")
    refused: dict[tuple[str, str], list[str]] = {}
    for use in facts.columns:
        if use.table not in granted:
            continue
        col = catalogue.table(use.table).column(use.column)
        if col is None or col.cls in NEVER_QUERYABLE or use.column not in granted_columns(
            policy, catalogue, use.table
        ):
            refused.setdefault((use.table, use.column), []).append(use.clause)
    for (t, c), clauses in sorted(refused.items()):
        reasons.append(Reason("column", f"column {t}.{c} is not granted (used in "
                              f"{', '.join(sorted(set(clauses)))})"))
        hints.append(f"{t} columns granted: {sorted(granted_columns(policy, catalogue, t))}")
    return reasons


def _basis(policy: Policy) -> dict[str, str]:
    return {"type": policy.legal_basis.type.value, "reference": policy.legal_basis.reference}


def _deny(policy_id, rule, message, hint, datasets) -> Decision:
    return Decision(False, policy_id, None, (Reason(rule, message),), hint, None, datasets)
