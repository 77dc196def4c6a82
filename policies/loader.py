"""Loading and validating policy files against the catalogue.

Every problem is reported as ``<file>: <field>: <what is wrong> (fix: <what to do>)`` so that
an IG officer can mend a file without reading code.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from datasets import Catalogue, ColumnClass, TableKind
from datasets.catalogue import ENGINE_ONLY, NEVER_QUERYABLE
from policies.model import Policy


class PolicyError(ValueError):
    """One or more policy files are invalid; ``problems`` lists each, file and field first."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class PolicySet:
    policies: tuple[Policy, ...]

    def for_project(self, project: str) -> Policy | None:
        return next((p for p in self.policies if p.project == project), None)

    def by_id(self, policy_id: str) -> Policy | None:
        return next((p for p in self.policies if p.id == policy_id), None)


def shipped_policies_dir() -> Path:
    return Path(str(resources.files("policies") / "shipped"))


def load_policies(directory: Path | None, catalogue: Catalogue) -> PolicySet:
    directory = Path(directory) if directory else shipped_policies_dir()
    files = sorted(p for p in directory.glob("*.toml") if not p.name.startswith("_"))
    problems: list[str] = []
    if not files:
        raise PolicyError([f"{directory}: no policy files (*.toml) found"])
    loaded: list[tuple[Policy, Path]] = []
    for path in files:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            problems.append(f"{path.name}: not valid TOML: {exc} (fix: correct the syntax)")
            continue
        try:
            policy = Policy.model_validate(raw)
        except ValidationError as exc:
            for err in exc.errors():
                field = ".".join(str(x) for x in err["loc"]) or "(file)"
                problems.append(f"{path.name}: {field}: {_message(err)}")
            continue
        problems.extend(f"{path.name}: {p}" for p in check_against_catalogue(policy, catalogue))
        loaded.append((policy, path))
    seen: dict[str, str] = {}
    for p, path in loaded:
        for key in (f"id {p.id}", f"project {p.project}"):
            if key in seen:
                problems.append(
                    f"{path.name}: {key.split()[0]}: {key} is also used by {seen[key]} "
                    "(fix: one policy per id and per project)"
                )
            seen[key] = path.name
    if problems:
        raise PolicyError(problems)
    return PolicySet(tuple(p for p, _ in loaded))


def _message(err: dict) -> str:
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return "unknown field (fix: remove it, or check its spelling against docs/policies.md)"
    if err["type"] == "missing":
        return "required field is missing (fix: add it)"
    return f"{msg} (input: {err.get('input')!r})"


def check_against_catalogue(policy: Policy, catalogue: Catalogue) -> list[str]:
    """What the policy names must exist; what it grants must be grantable."""
    problems = []
    granted = granted_tables(policy, catalogue)
    for ds in policy.data.datasets:
        if catalogue.dataset(ds) is None:
            problems.append(
                f"data.datasets: unknown dataset {ds!r} (fix: use one of "
                f"{sorted(d.name for d in catalogue.datasets)})"
            )
        elif any(t.kind in ENGINE_ONLY for t in catalogue.dataset(ds).tables):
            problems.append(
                f"data.datasets: {ds!r} is read by the engine only and cannot be granted "
                "(fix: remove it; opt-outs and consent are applied through the legal basis "
                "and rows.consent_study)"
            )
    for t in policy.data.tables or ():
        table = catalogue.table(t)
        if table is None or table.dataset not in policy.data.datasets:
            problems.append(f"data.tables: {t!r} is not a table of the granted datasets")
    for t, cols in (policy.data.columns or {}).items():
        table = catalogue.table(t)
        if table is None or t not in granted:
            problems.append(f"data.columns.{t}: {t!r} is not a granted table")
            continue
        for c in cols:
            col = table.column(c)
            if col is None:
                problems.append(f"data.columns.{t}: unknown column {c!r}")
            elif col.cls in NEVER_QUERYABLE:
                problems.append(
                    f"data.columns.{t}: {c!r} is a {col.cls.value} and is never granted "
                    "(fix: remove it)"
                )
    for rule in policy.rows.residence:
        t, c = rule.column.split(".")
        table = catalogue.table(t)
        if table is None or table.column(c) is None:
            problems.append(f"rows.residence: unknown column {rule.column!r}")
        person = catalogue.table(rule.person_table)
        if person is None or person.kind is not TableKind.PERSON_LEVEL:
            problems.append(f"rows.residence: {rule.person_table!r} is not a person-level table")
        elif rule.via and (
            person.column(rule.via) is None or (table and table.column(rule.via) is None)
        ):
            problems.append(f"rows.residence: via column {rule.via!r} is not in both tables")
        elif not rule.via and t != rule.person_table:
            problems.append(
                f"rows.residence: {rule.column!r} is not in {rule.person_table!r}; "
                "name a 'via' join column"
            )
    if policy.rows.consent_study and catalogue.register(TableKind.CONSENT_REGISTER) is None:
        problems.append("rows.consent_study: the catalogue has no consent register")
    if policy.opt_out_applies and catalogue.register(TableKind.OPT_OUT_REGISTER) is None:
        problems.append("legal_basis: the opt-out applies but the catalogue has no opt-out register")
    return problems


def granted_tables(policy: Policy, catalogue: Catalogue) -> frozenset[str]:
    names = set()
    for ds_name in policy.data.datasets:
        ds = catalogue.dataset(ds_name)
        if ds is None:
            continue
        for t in ds.tables:
            if t.kind in ENGINE_ONLY:
                continue
            if policy.data.tables is None or t.name in policy.data.tables:
                names.add(t.name)
    return frozenset(names)


def granted_columns(policy: Policy, catalogue: Catalogue, table: str) -> frozenset[str]:
    """The columns of a granted table a query may reference. Never identifiers or internals."""
    t = catalogue.table(table)
    if t is None or table not in granted_tables(policy, catalogue):
        return frozenset()
    allowed = {c.name for c in t.columns if c.cls not in NEVER_QUERYABLE}
    explicit = (policy.data.columns or {}).get(table)
    if explicit is not None:
        keys = {c.name for c in t.columns if c.cls is ColumnClass.PERSON_KEY}
        allowed &= set(explicit) | keys
    return frozenset(allowed)


@dataclass(frozen=True)
class DemoUser:
    sub: str
    org: str
    org_type: str
    roles: tuple[str, ...]
    projects: tuple[str, ...]
    shows: str


def load_demo_users(directory: Path | None = None) -> tuple[DemoUser, ...]:
    """The demo users that the shipped policies name (``_demo_users.toml``)."""
    path = (Path(directory) if directory else shipped_policies_dir()) / "_demo_users.toml"
    if not path.exists():
        path = shipped_policies_dir() / "_demo_users.toml"
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    return tuple(
        DemoUser(u["sub"], u["org"], u["org_type"], tuple(u["roles"]), tuple(u["projects"]),
                 u.get("shows", ""))
        for u in raw["users"]
    )
