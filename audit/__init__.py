"""The tamper-evident audit trail. Imports nothing else of the project."""

from audit.trail import AuditTrail, AuditWriteError, canonical
from audit.verify import Verification, verify_trail

__all__ = ["AuditTrail", "AuditWriteError", "Verification", "canonical", "verify_trail"]
