"""The tamper-evident audit trail. Imports nothing else of the project."""

from audit.checkpoint import Checkpoint, read_checkpoint
from audit.search import EventFilter, search, to_csv
from audit.trail import AuditTrail, AuditWriteError, canonical
from audit.verify import Verification, verify_trail

__all__ = [
    "AuditTrail",
    "AuditWriteError",
    "Checkpoint",
    "EventFilter",
    "Verification",
    "canonical",
    "read_checkpoint",
    "search",
    "to_csv",
    "verify_trail",
]
