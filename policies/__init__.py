"""Access policies: the model, loading and validation, and the decision. Imports only datasets."""

from policies.decision import (
    Caller,
    ColumnUse,
    ConsentCohort,
    Decision,
    Facts,
    Obligations,
    Reason,
    ResidenceFilter,
    decide,
)
from policies.loader import PolicyError, PolicySet, load_policies
from policies.model import Policy

__all__ = [
    "Caller",
    "ColumnUse",
    "ConsentCohort",
    "Decision",
    "Facts",
    "Obligations",
    "Policy",
    "PolicyError",
    "PolicySet",
    "Reason",
    "ResidenceFilter",
    "decide",
    "load_policies",
]
