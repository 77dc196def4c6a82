"""The policy model: who, why, what, how it leaves, and when, for one agreement.

A policy file is TOML, one per agreement. The model is strict (unknown fields are errors), so
a typo in a policy stops the server instead of silently granting or withholding access.
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BasisType(StrEnum):
    COPI_REG3 = "copi_reg3"
    COPI_REG5 = "copi_reg5"
    COPI_JOINT_PLANNING = "copi_joint_planning"
    CONSENT = "consent"
    ANONYMISED = "anonymised"


class BasisStatus(StrEnum):
    IN_FORCE = "in_force"
    PROPOSED = "proposed"
    REVOKED = "revoked"


class OrgType(StrEnum):
    LOCAL_AUTHORITY = "local_authority"
    ICB = "icb"
    NHS_TRUST = "nhs_trust"
    UNIVERSITY = "university"
    REGULATOR = "regulator"
    COMMERCIAL = "commercial"


class Role(StrEnum):
    RESEARCHER = "researcher"
    PLANNER = "planner"
    IG_AUDITOR = "ig_auditor"


#: Roles that may submit queries at all; an IG auditor never queries data.
QUERY_ROLES = frozenset({Role.RESEARCHER, Role.PLANNER})

#: COPI regulation 3(3): bodies that may process under regulation 3.
REG3_ORG_TYPES = frozenset(
    {OrgType.LOCAL_AUTHORITY, OrgType.ICB, OrgType.NHS_TRUST, OrgType.REGULATOR}
)
#: COPI regulation 3(1): purposes within communicable disease and public health risk.
REG3_PURPOSES = frozenset(
    {
        "covid19",
        "communicable_disease_control",
        "diagnosis_of_communicable_disease",
        "disease_trends",
        "outbreak_investigation",
        "immunisation",
        "adverse_reactions",
        "public_health_risk",
    }
)


class Notice(Strict):
    """One notice of a chain under regulation 3(4) (each extension is a notice)."""

    reference: str
    start: date
    end: date


class LegalBasis(Strict):
    type: BasisType
    reference: str = Field(min_length=3)
    status: BasisStatus
    start: date | None = None
    end: date | None = None
    notices: tuple[Notice, ...] = ()
    annual_review_due: date | None = Field(
        default=None,
        description="CAG annual review date (regulation 5). Overdue is not an expiry.",
    )
    opt_out_exempt: bool = Field(
        default=False,
        description="Regulation 5 only: the approval records an exemption from the opt-out.",
    )

    @model_validator(mode="after")
    def _checks(self) -> LegalBasis:
        if self.opt_out_exempt and self.type is not BasisType.COPI_REG5:
            raise ValueError("opt_out_exempt applies only to a copi_reg5 basis")
        if self.start and self.end and self.end < self.start:
            raise ValueError("end is before start")
        return self


class Agreement(Strict):
    reference: str = Field(min_length=3)
    start: date | None = None
    end: date | None = None


class Subjects(Strict):
    org_types: tuple[OrgType, ...] = Field(min_length=1)
    roles: tuple[Role, ...] = Field(min_length=1)
    named_users: tuple[str, ...] = ()

    @field_validator("roles")
    @classmethod
    def _query_roles(cls, roles: tuple[Role, ...]) -> tuple[Role, ...]:
        if Role.IG_AUDITOR in roles:
            raise ValueError("ig_auditor never queries data; grant researcher or planner")
        return roles


class Data(Strict):
    datasets: tuple[str, ...] = Field(min_length=1)
    tables: tuple[str, ...] | None = Field(
        default=None, description="Restrict to these tables of the datasets; all if absent."
    )
    columns: dict[str, tuple[str, ...]] | None = Field(
        default=None,
        description="Per table, the only columns granted; tables not named get every "
        "queryable column.",
    )


class ResidenceRule(Strict):
    """How to tell that a person is a resident of the caller's area."""

    org_type: OrgType
    column: str = Field(pattern=r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$")
    via: str | None = Field(
        default=None,
        pattern=r"^[a-z_][a-z0-9_]*$",
        description="Join column from the person table to a lookup table, when the column "
        "is in a lookup (an ICB via lsoa_lookup).",
    )
    person_table: str = "patients"


class Rows(Strict):
    residents_only: bool = False
    residence: tuple[ResidenceRule, ...] = ()
    consent_study: str | None = None

    @model_validator(mode="after")
    def _checks(self) -> Rows:
        if self.residents_only and not self.residence:
            raise ValueError("residents_only needs at least one [[rows.residence]] rule")
        return self


class Output(Strict):
    regime: Literal["threshold", "cell_key", "dp"]
    min_people: int = Field(default=10, ge=2, description="Threshold: release cells of at least this many people.")
    rounding_base: int = Field(default=5, ge=1, le=1000)
    # Dominance rules for SUM/AVG of measures, on per-person totals (ACRO's defaults).
    nk_n: int = Field(default=2, ge=1, le=5, description="NK rule: the n largest contributors...")
    nk_k: float = Field(default=0.9, gt=0, le=1, description="...may not hold more than k of the total.")
    p_ratio: float = Field(default=0.1, ge=0, le=1, description="p% rule: the rest must be at least p of the largest.")
    # Differential privacy: the project's budget, the default cost of a query, and the
    # per-person contribution bounds the rewrite enforces.
    epsilon_budget: float | None = Field(default=None, gt=0, description="dp: the project's total epsilon.")
    delta_budget: float = Field(default=1e-6, ge=0, lt=1, description="dp: the project's total delta (spent only by noisy thresholds).")
    epsilon_per_query: float = Field(default=1.0, gt=0, description="dp: a query's epsilon unless it asks for another.")
    delta_per_query: float = Field(default=1e-8, gt=0, lt=1, description="dp: the delta of a noisy threshold.")
    max_cells_per_person: int = Field(default=5, ge=1, le=100, description="dp: a person counts in at most this many cells.")
    max_rows_per_cell: int = Field(default=5, ge=1, le=1000, description="dp: at most this many of a person's rows count per cell.")
    # Cell key: the perturbation table and the magnitude perturbation.
    ck_max_perturbation: int = Field(default=2, ge=1, le=10, description="cell_key: no count moves by more than this.")
    ck_variance: float = Field(default=1.0, gt=0, description="cell_key: the variance of the perturbation of a count.")
    ck_magnitude_share: float = Field(default=0.5, gt=0, le=2, description="cell_key: a sum moves by up to this share of its largest contribution.")

    def describe(self) -> dict:
        """The parameters that matter for this regime, for callers and the audit trail."""
        if self.regime == "threshold":
            return {"regime": "threshold", "min_people": self.min_people,
                    "rounding_base": self.rounding_base, "nk_n": self.nk_n, "nk_k": self.nk_k,
                    "p_ratio": self.p_ratio}
        if self.regime == "dp":
            return {"regime": "dp", "epsilon_budget": self.epsilon_budget,
                    "delta_budget": self.delta_budget,
                    "epsilon_per_query": self.epsilon_per_query,
                    "delta_per_query": self.delta_per_query,
                    "max_cells_per_person": self.max_cells_per_person,
                    "max_rows_per_cell": self.max_rows_per_cell}
        return {"regime": "cell_key", "min_people": self.min_people,
                "max_perturbation": self.ck_max_perturbation, "variance": self.ck_variance,
                "magnitude_share": self.ck_magnitude_share, "nk_n": self.nk_n,
                "nk_k": self.nk_k, "p_ratio": self.p_ratio}

    @model_validator(mode="after")
    def _checks(self) -> Output:
        if self.regime == "dp" and self.epsilon_budget is None:
            raise ValueError("a dp regime needs an epsilon_budget")
        if self.regime == "dp" and self.delta_per_query > self.delta_budget:
            raise ValueError("delta_per_query is over the delta_budget")
        if self.regime == "cell_key":
            if self.min_people <= self.ck_max_perturbation:
                raise ValueError("cell_key needs min_people above ck_max_perturbation, so no "
                                 "released count can be perturbed below zero")
            if self.ck_variance >= self.ck_max_perturbation ** 2:
                raise ValueError("ck_variance must be below ck_max_perturbation squared")
        return self


class Policy(Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    title: str
    agreement: Agreement
    legal_basis: LegalBasis
    subjects: Subjects
    project: str = Field(min_length=1)
    purposes: tuple[str, ...] = Field(min_length=1)
    data: Data
    rows: Rows = Rows()
    output: Output

    @model_validator(mode="after")
    def _basis_rules(self) -> Policy:
        b = self.legal_basis
        if b.type is BasisType.COPI_REG3:
            bad = [t.value for t in self.subjects.org_types if t not in REG3_ORG_TYPES]
            if bad:
                raise ValueError(
                    f"regulation 3 cannot be cited by organisation types {bad}; "
                    f"allowed: {sorted(t.value for t in REG3_ORG_TYPES)}"
                )
            bad = [p for p in self.purposes if p not in REG3_PURPOSES]
            if bad:
                raise ValueError(
                    f"purposes {bad} are not within regulation 3(1); allowed: "
                    f"{sorted(REG3_PURPOSES)}"
                )
        if b.type is BasisType.CONSENT and not self.rows.consent_study:
            raise ValueError("a consent basis needs rows.consent_study (the consented cohort)")
        return self

    @property
    def opt_out_applies(self) -> bool:
        """The national data opt-out follows the legal basis, never the dataset or the org."""
        b = self.legal_basis
        if b.type is BasisType.COPI_REG5:
            return not b.opt_out_exempt
        return b.type is BasisType.COPI_JOINT_PLANNING

    @property
    def effective_start(self) -> date | None:
        starts = [d for d in (self.agreement.start, self.legal_basis.start) if d]
        if self.legal_basis.notices:
            starts.append(min(n.start for n in self.legal_basis.notices))
        return max(starts) if starts else None

    @property
    def effective_end(self) -> date | None:
        """The earliest of every end date: agreement, approval, and the last notice of a chain."""
        ends = [d for d in (self.agreement.end, self.legal_basis.end) if d]
        if self.legal_basis.notices:
            ends.append(max(n.end for n in self.legal_basis.notices))
        return min(ends) if ends else None
