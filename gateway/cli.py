"""The ``sde-gateway`` command line. The commands and options of the product contract are fixed,
because operators and test harnesses script them; output is for people (tables, progress)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

err_console = Console(stderr=True)
console = Console()

DEMO_TOKEN_TTL = 12 * 3600


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """sde-gateway: the secure data environment's query gateway."""


# -- data ---------------------------------------------------------------------------------


@main.command()
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Directory to write the Parquet files into.")
@click.option("--persons", required=True, type=click.IntRange(1, 29_999_999),
              help="Number of people to generate.")
@click.option("--seed", default=42, show_default=True, type=int)
def synth(out_dir: Path, persons: int, seed: int) -> None:
    """Write the catalogue's tables as Parquet files of synthetic, linked data."""
    _synth(out_dir, persons, seed)


def _synth(out_dir: Path, persons: int, seed: int) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from datasets.generator import generate

    started = time.perf_counter()
    with Progress(TextColumn("{task.description:<32}"), BarColumn(), TimeElapsedColumn(),
                  console=err_console, transient=False) as progress:
        task = progress.add_task(f"generating {persons:,} people", total=10)

        def report(step: int, total: int, name: str) -> None:
            progress.update(task, completed=step - 1, total=total, description=f"  {name}")

        reports = generate(out_dir, persons, seed=seed, progress=report)
        progress.update(task, completed=10, description="done")
    table = Table(title=f"{out_dir} ({persons:,} people, seed {seed})")
    table.add_column("table")
    table.add_column("rows", justify="right")
    table.add_column("seconds", justify="right")
    for r in reports:
        table.add_row(r.table, f"{r.rows:,}", f"{r.seconds:.2f}")
    err_console.print(table)
    err_console.print(f"generated in {time.perf_counter() - started:.1f} s")


# -- serving ------------------------------------------------------------------------------


def _settings(**kwargs):
    from gateway.settings import Settings

    return Settings(**{k: v for k, v in kwargs.items() if v is not None})


def _serve(settings, host: str, port: int) -> None:
    import sqlite3

    import uvicorn

    from gateway.app import create_app
    from policies import PolicyError

    try:
        app = create_app(settings)
    except PolicyError as exc:
        err_console.print("[red]cannot start: invalid policy files[/red]")
        for p in exc.problems:
            err_console.print(f"  {p}")
        sys.exit(2)
    except (RuntimeError, ValueError, OSError, sqlite3.Error) as exc:
        err_console.print(f"[red]cannot start:[/red] {exc}")
        sys.exit(2)
    err_console.print(f"serving on http://{host}:{port}  (OpenAPI at http://{host}:{port}/docs)")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


@main.command()
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path, exists=True,
              file_okay=False))
@click.option("--catalogue", "catalogue_dir", type=click.Path(path_type=Path, exists=True,
              file_okay=False), help="Catalogue directory (default: the shipped one).")
@click.option("--policies", "policies_dir", type=click.Path(path_type=Path, exists=True,
              file_okay=False), help="Policy directory (default: the shipped one).")
@click.option("--state-dir", required=True, type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--dev-allow-hs256", is_flag=True, envvar="SDE_DEV_ALLOW_HS256",
              help="DEVELOPMENT ONLY: also accept HS256 tokens (kid 'dev-hmac') signed with "
              "the secret in $SDE_DEV_HMAC_SECRET (32 bytes or more). Never with real data.")
@click.option("--set", "overrides", multiple=True, metavar="NAME=VALUE",
              help="Any other setting (see `sde-gateway settings`), e.g. --set "
              "rate_limit_per_minute=120 --set max_concurrent_queries=2.")
def serve(data_dir, catalogue_dir, policies_dir, state_dir, host, port,
          dev_allow_hs256, overrides) -> None:
    """Serve the API. The state directory is created with its keys on first start; token keys
    are read from its keys/jwks.json, and edits to that file take effect without a restart."""
    from pydantic import ValidationError

    from gateway.settings import DEV_HMAC_SECRET_ENV

    try:
        extra = dict(o.split("=", 1) for o in overrides if "=" in o)
        if len(extra) != len(overrides):
            err_console.print("[red]cannot start:[/red] --set takes NAME=VALUE")
            sys.exit(2)
        settings = _settings(data_dir=data_dir, state_dir=state_dir,
                             catalogue_dir=catalogue_dir, policies_dir=policies_dir,
                             dev_allow_hs256=dev_allow_hs256,
                             dev_hmac_secret=os.environ.get(DEV_HMAC_SECRET_ENV) or None,
                             **extra)
    except ValidationError as exc:
        for e in exc.errors():
            where = '.'.join(str(p) for p in e['loc'])
            err_console.print(f"[red]cannot start:[/red] {where}: {e['msg']}")
        sys.exit(2)
    _serve(settings, host, port)


@main.command()
@click.option("--persons", default=100_000, show_default=True, type=click.IntRange(1000, 29_999_999))
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--dir", "base", default=".sde-demo", show_default=True,
              type=click.Path(path_type=Path), help="Where the demo data and state live.")
def demo(persons: int, port: int, base: Path) -> None:
    """Make synthetic data if missing, print a token for each demo user, and serve."""
    from gateway.auth import issue_token
    from gateway.state import ensure_state
    from policies.loader import load_demo_users

    data_dir = base / f"data-{persons}"
    state_dir = base / "state"
    if not (data_dir / "patients.parquet").exists():
        _synth(data_dir, persons, 42)
    settings = _settings(data_dir=data_dir, state_dir=state_dir)
    keys = ensure_state(state_dir)
    users = load_demo_users()
    table = Table(title="demo users (tokens valid 12 hours)")
    for col in ("sub", "org", "org type", "roles", "projects", "shows"):
        table.add_column(col)
    lines = []
    for u in users:
        token = issue_token(keys.token_private_pem, issuer=settings.token_issuer,
                            audience=settings.token_audience, sub=u.sub, org=u.org,
                            org_type=u.org_type, roles=list(u.roles), projects=list(u.projects),
                            ttl_s=DEMO_TOKEN_TTL)
        table.add_row(u.sub, u.org, u.org_type, ", ".join(u.roles), ", ".join(u.projects),
                      u.shows)
        var = "TOKEN_" + u.sub.upper().replace(".", "_")
        lines.append(f"export {var}='{token}'")
    console.print(table)
    (state_dir / "demo-tokens.env").write_text("\n".join(lines) + "\n")
    console.print("\n# paste these into your shell (also saved in "
                  f"{state_dir / 'demo-tokens.env'}):")
    for line in lines:
        print(line)
    console.print(
        f"\n# then, for example:\n"
        f"curl -s http://127.0.0.1:{port}/v1/queries -H \"Authorization: Bearer $TOKEN_P_JONES\" "
        "-H 'Content-Type: application/json' -d '{\"project\": \"JOINT-PLANNING\", "
        "\"purpose\": \"planning\", \"sql\": \"SELECT sex, COUNT(DISTINCT person_id) AS people "
        "FROM patients GROUP BY sex\"}'\n",
        soft_wrap=True, highlight=False,
    )
    _serve(settings, "127.0.0.1", port)


# -- tokens and clients -------------------------------------------------------------------


@main.command()
@click.option("--state-dir", required=True, type=click.Path(path_type=Path))
@click.option("--sub", required=True)
@click.option("--org", required=True)
@click.option("--org-type", required=True, type=click.Choice(
    ["local_authority", "icb", "nhs_trust", "university", "regulator", "commercial"]))
@click.option("--role", "roles", required=True, multiple=True,
              type=click.Choice(["researcher", "planner", "ig_auditor"]))
@click.option("--project", "projects", multiple=True)
@click.option("--ttl", default=3600, show_default=True, type=click.IntRange(1, 30 * 86400))
@click.option("--alg", "algorithm", default="RS256", show_default=True,
              type=click.Choice(["RS256", "ES256"]),
              help="Which demo key signs: RSA (kid 'demo') or EC P-256 (kid 'demo-es256').")
def token(state_dir, sub, org, org_type, roles, projects, ttl, algorithm) -> None:
    """Print a token signed with the state directory's demo key, and nothing else."""
    from gateway.auth import issue_token
    from gateway.settings import Settings
    from gateway.state import DEMO_KEYS, ensure_state

    keys = ensure_state(state_dir)
    defaults = Settings.model_fields
    click.echo(issue_token(
        keys.demo_private_pems[algorithm], issuer=defaults["token_issuer"].default,
        audience=defaults["token_audience"].default, sub=sub, org=org, org_type=org_type,
        roles=list(roles), projects=list(projects), ttl_s=ttl, algorithm=algorithm,
        kid=DEMO_KEYS[algorithm].kid,
    ))


@main.command()
@click.option("--url", required=True, help="The gateway's base URL.")
@click.option("--token", "token_", required=True, envvar="SDE_TOKEN")
@click.option("--project", required=True)
@click.option("--purpose", required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON response.")
@click.argument("sql")
def query(url, token_, project, purpose, as_json, sql) -> None:
    """Submit SQL and print the released table, with suppressed cells marked."""
    import httpx

    try:
        resp = httpx.post(f"{url.rstrip('/')}/v1/queries",
                          headers={"Authorization": f"Bearer {token_}"},
                          json={"sql": sql, "project": project, "purpose": purpose},
                          timeout=120)
    except httpx.HTTPError as exc:
        err_console.print(f"[red]cannot reach {url}:[/red] {exc}")
        sys.exit(2)
    try:
        body = resp.json()
    except ValueError:
        err_console.print(f"[red]HTTP {resp.status_code}[/red]: {resp.text[:500]}")
        sys.exit(1)
    if as_json:
        print(json.dumps(body, indent=2))
        sys.exit(0 if resp.is_success else 1)
    if not resp.is_success:
        e = body.get("error", {})
        err_console.print(f"[red]{resp.status_code} {e.get('code')}[/red]: {e.get('message')}")
        for r in e.get("reasons") or []:
            err_console.print(f"  - {r.get('message', r) if isinstance(r, dict) else r}")
        if e.get("hint"):
            err_console.print(f"  hint: {e['hint']}")
        sys.exit(1)
    _print_result(body)


def _print_result(body: dict) -> None:
    d = body["disclosure"]
    suppressed = {(s["row"], s["column"]) for s in d.get("suppressed", [])}
    table = Table(title=f"query {body['query_id']} ({body['status']}, policy "
                  f"{body['policy']['id']})")
    for col in body["columns"]:
        table.add_column(col, justify="right")
    for i, row in enumerate(body["rows"]):
        table.add_row(*["[dim]suppressed[/dim]" if (i, c) in suppressed else
                        ("" if v is None else str(v)) for c, v in zip(body["columns"], row,
                                                                       strict=True)])
    console.print(table)
    notes = [f"regime {d['regime']}"]
    if "min_people" in d:
        notes.append(f"cells of fewer than {d['min_people']} people suppressed "
                     f"({len(suppressed)} here)")
    if d.get("epsilon_spent"):
        notes.append(f"epsilon {d['epsilon_spent']:.4g} spent, {d.get('epsilon_left', 0):.4g} "
                     "left")
    if d.get("held_because"):
        notes.append(f"held for review: {d['held_because']}")
    if d.get("rounded_columns"):
        # counts of rows where one person adds several are rounded to a larger base
        bases: dict[int, list[str]] = {}
        for col in d["rounded_columns"]:
            base = (d.get("column_rounding_bases") or {}).get(col, d["rounding_base"])
            bases.setdefault(base, []).append(col)
        notes.append("counts rounded " + ", ".join(
            f"to {b} ({', '.join(cols)})" for b, cols in sorted(bases.items())))
    widened = (d.get("perturbation") or {}).get("column_max") or {}
    if widened:
        notes.append("rows perturbed by at most " + ", ".join(
            f"{m} ({col})" for col, m in widened.items()))
    console.print("; ".join(notes))
    console.print(f"audit entry {body['audit']['seq']} ({body['audit']['hash'][:16]}...)")


@main.command("settings")
def show_settings() -> None:
    """Show every setting with its default (the same table as docs/architecture.md)."""
    from gateway.settings import describe

    table = Table(title="settings")
    for col in ("name", "default", "what it is"):
        table.add_column(col)
    for row in describe():
        table.add_row(*row)
    console.print(table)


# -- governance ---------------------------------------------------------------------------


@main.group()
def policy() -> None:
    """Policy files."""


@policy.command("check")
@click.argument("directory", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--catalogue", "catalogue_dir", type=click.Path(path_type=Path, exists=True,
              file_okay=False))
def policy_check(directory: Path, catalogue_dir: Path | None) -> None:
    """Validate policy files; exit non-zero naming the file and field at fault."""
    from datasets import load_catalogue
    from policies import PolicyError, load_policies

    try:
        policies = load_policies(directory, load_catalogue(catalogue_dir))
    except PolicyError as exc:
        for p in exc.problems:
            err_console.print(f"[red]error[/red] {p}")
        sys.exit(1)
    table = Table(title=f"{len(policies.policies)} valid policies in {directory}")
    for col in ("id", "project", "basis", "status", "in force", "opt-out", "regime"):
        table.add_column(col)
    for p in policies.policies:
        span = f"{p.effective_start or '-'} to {p.effective_end or 'open'}"
        table.add_row(p.id, p.project, p.legal_basis.type.value, p.legal_basis.status.value,
                      span, "applied" if p.opt_out_applies else "not applied", p.output.regime)
    console.print(table)


@main.group()
def audit() -> None:
    """The audit trail."""


@audit.command("verify")
@click.option("--state-dir", required=True, type=click.Path(path_type=Path, exists=True))
@click.option("--expect-head", metavar="SEQ:HASH",
              help="A head recorded earlier (from GET /v1/audit/verify): the trail must reach it.")
@click.argument("file", required=False, type=click.Path(path_type=Path, exists=True,
                dir_okay=False))
def audit_verify(state_dir: Path, expect_head: str | None, file: Path | None) -> None:
    """Verify a trail offline: exit 0 if intact, 1 naming the first bad entry if not."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from rich.progress import Progress

    from audit import verify_trail

    key_file = state_dir / "keys" / "audit-mac.key"
    if not key_file.exists():
        err_console.print(f"[red]no audit key at {key_file}[/red]")
        sys.exit(2)
    key = bytes.fromhex(key_file.read_text().strip())
    pub_file = state_dir / "keys" / "audit-checkpoint-key.pub.pem"
    public_key = load_pem_public_key(pub_file.read_bytes()) if pub_file.exists() else None
    head = None
    if expect_head:
        seq, _, digest = expect_head.partition(":")
        if not seq.isdigit() or len(digest) != 64:
            err_console.print("[red]--expect-head takes SEQ:HASH (a 64-hex-digit hash)[/red]")
            sys.exit(2)
        head = (int(seq), digest)
    path = file or state_dir / "audit" / "trail.jsonl"
    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task("verifying", total=max(path.stat().st_size, 1))
        result = verify_trail(path, key, lambda done, total: progress.update(task, completed=done),
                              public_key=public_key, expect_head=head)
    checked = (f"; signed head checkpoint at entry {result.checkpoint_seq}"
               if result.checkpoint_seq else "; no head checkpoint found")
    if result.ok:
        print(f"intact: {result.entries} entries, head {result.head_hash}{checked}")
        sys.exit(0)
    kind = "torn last line" if result.torn_tail else "not intact"
    where = f"line {result.first_bad_line} " if result.first_bad_line else ""
    print(f"{kind}: {where}(seq {result.first_bad_seq}): {result.reason}; "
          f"{result.entries} entries verified before it")
    sys.exit(1)


if __name__ == "__main__":
    main()
