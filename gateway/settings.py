"""Every limit, threshold and path, declared once; the CLI and docs read them from here."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

#: where ``sde-gateway serve`` reads the development HMAC secret from (never a command-line
#: argument: those are visible to every user of the machine in the process list)
DEV_HMAC_SECRET_ENV = "SDE_DEV_HMAC_SECRET"  # noqa: S105 (a variable's name, not a secret)
#: RFC 7518 3.2: an HS256 key is at least as long as the hash output
MIN_HMAC_SECRET_BYTES = 32


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    data_dir: Path = Field(description="Directory of the catalogue's Parquet files (one per table).")
    state_dir: Path = Field(
        description="Keys, the audit trail, the engine's database and the budget ledger."
    )
    catalogue_dir: Path | None = Field(None, description="Catalogue files; the shipped ones if unset.")
    policies_dir: Path | None = Field(None, description="Policy files; the shipped ones if unset.")
    token_issuer: str = Field("sde-gateway", description="Required `iss` of bearer tokens.")
    token_audience: str = Field("sde-gateway", description="Required `aud` of bearer tokens.")
    token_leeway_s: int = Field(30, ge=0, le=300,
                                description="Clock skew allowed on exp, nbf and iat.")
    token_keys_check_s: float = Field(
        1.0, ge=0, le=60,
        description="How often, at most, keys/jwks.json is checked for a change (rotation "
        "without restart); an unknown kid also re-reads it, as often at most.",
    )
    dev_allow_hs256: bool = Field(
        False, description="DEVELOPMENT ONLY, never in production: also accept HS256 tokens "
        f"with kid 'dev-hmac', signed with dev_hmac_secret (from ${DEV_HMAC_SECRET_ENV}).",
    )
    dev_hmac_secret: SecretStr | None = Field(
        None, description=f"DEVELOPMENT ONLY: the HS256 secret, at least {MIN_HMAC_SECRET_BYTES} "
        "bytes; ignored unless dev_allow_hs256 is on.",
    )
    max_body_bytes: int = Field(65_536, ge=1024, description="Largest request body accepted (413).")
    max_sql_chars: int = Field(20_000, ge=100, description="Longest SQL text accepted (400).")
    max_sql_depth: int = Field(64, ge=8, description="Deepest syntax tree accepted (400).")
    query_timeout_s: float = Field(
        30.0, gt=0, description="Time limit per request, shared by all its engine queries (504).")
    row_cap: int = Field(10_000, ge=1, description="Most rows a result may hold (413).")
    max_concurrent_queries: int = Field(
        4, ge=1, description="Queries in the engine at once; the rest wait for a slot.")
    queue_timeout_s: float = Field(
        10.0, gt=0, description="Longest wait for an engine slot before a 503.")
    rate_limit_per_minute: int = Field(
        600, ge=0, description="Requests a minute per subject before a 429 (0: no limit).")
    rate_limit_burst: int = Field(60, ge=1, description="Requests a subject may send at once.")
    memory_limit: str = Field("4GB", description="DuckDB memory limit.")
    threads: int = Field(2, ge=1, description="DuckDB worker threads.")
    today: date | None = Field(
        None, description="Decide policies as of this date instead of today (tests, replays)."
    )

    @model_validator(mode="after")
    def _dev_hmac_is_usable(self) -> Settings:
        if not self.dev_allow_hs256:
            return self
        if self.dev_hmac_secret is None:
            raise ValueError(f"dev_allow_hs256 needs dev_hmac_secret (set ${DEV_HMAC_SECRET_ENV})")
        if len(self.dev_hmac_secret.get_secret_value().encode()) < MIN_HMAC_SECRET_BYTES:
            raise ValueError(f"dev_hmac_secret must be at least {MIN_HMAC_SECRET_BYTES} bytes")
        return self

    @property
    def audit_path(self) -> Path:
        return self.state_dir / "audit" / "trail.jsonl"


def describe() -> list[tuple[str, str, str]]:
    """(name, default, description) for every setting, for the CLI and the docs."""
    rows = []
    for name, f in Settings.model_fields.items():
        default = "required" if f.is_required() else repr(f.default)
        rows.append((name, default, f.description or ""))
    return rows
