"""`tollway policy apply|show|check` and `tollway keys create` (registered by streams/cli/main.py).

Exit codes: 0 ok (applying the document in force again publishes nothing), 2 the document is invalid (each error
names the path of the offending field) or changes the version in force without a new ``version``, 3 Kafka is down.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
import yaml
from rich.console import Console
from rich.table import Table

from schemas.errors import ConfigError
from schemas.policy import PolicyDocument, TenantPolicy, parse_policy
from streams.cli.common import run_async
from streams.followers.policy import PolicyStore, apply_policy, load_policy_file
from streams.settings import get_settings
from workers.keys import create_key
from workers.policy import route_for

EXIT_USAGE, EXIT_UNAVAILABLE = 2, 3

policy_app = typer.Typer(help="Governance as data: validate, publish and inspect the policy document.",
                         no_args_is_help=True)
keys_app = typer.Typer(help="API keys: only salted hashes are stored; the raw key is printed once.",
                       no_args_is_help=True)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)


def next_version(version: str) -> str:
    """The version after ``version``: its trailing number plus one (``2026-11-29.1`` → ``2026-11-29.2``, ``v9`` →
    ``v10``), else ``.2`` appended."""
    match = re.search(r"\d+$", version)
    if match is None:
        return f"{version}.2"
    return version[:match.start()] + str(int(match.group()) + 1)


def _load_or_exit(path: Path) -> PolicyDocument:
    try:
        return load_policy_file(path)
    except ConfigError as exc:
        err_console.print(f"[red]{path}: {exc}[/]", highlight=False)
        raise typer.Exit(EXIT_USAGE) from exc


@policy_app.command("check")
def check(file: Annotated[Path, typer.Argument(help="policy YAML")]) -> None:
    """Validate a policy document without publishing it."""
    doc = _load_or_exit(file)
    console.print(f"[green]valid[/] policy {doc.version}: {len(doc.tenants)} tenant(s), {len(doc.models)} model(s)")


@policy_app.command("apply")
def apply(
    file: Annotated[Path, typer.Argument(help="policy YAML")],
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Validate FILE and publish it to the compacted policy topic; every worker reloads it without restart."""
    doc = _load_or_exit(file)
    settings = get_settings()
    offset, published = run_async(apply_policy(settings, doc))  # a changed document under its version: exit 2
    if as_json:
        sys.stdout.write(orjson.dumps({"version": doc.version, "offset": offset, "published": published}).decode()
                         + "\n")
    elif not published:
        console.print(f"policy [b]{doc.version}[/] is already in force (offset {offset}), identical: nothing "
                      "published")
    else:
        console.print(f"published policy [b]{doc.version}[/] ({len(doc.tenants)} tenant(s)) at offset {offset}; "
                      f"route: {' → '.join(route_for(doc, settings))}")


async def _current() -> PolicyDocument | None:
    store = PolicyStore(get_settings())
    await store.start()
    await store.stop()
    return store.current()


def _limits(tenant: TenantPolicy) -> str:
    parts = []
    if tenant.rate_limits.requests_per_minute:
        parts.append(f"{tenant.rate_limits.requests_per_minute} rpm")
    if tenant.rate_limits.tokens_per_minute:
        parts.append(f"{tenant.rate_limits.tokens_per_minute} tpm")
    if tenant.budgets.daily_micros is not None:
        parts.append(f"${tenant.budgets.daily_micros / 1e6:,.2f}/day")
    if tenant.budgets.monthly_micros is not None:
        parts.append(f"${tenant.budgets.monthly_micros / 1e6:,.2f}/month")
    return ", ".join(parts) or "-"


@policy_app.command("show")
def show(as_json: Annotated[bool, typer.Option("--json", help="print the document as JSON")] = False) -> None:
    """Print the policy in force (read from the policy topic)."""
    doc = run_async(_current())
    if doc is None:
        console.print("no policy published: stages allow every request (policy_version \"none\")")
        raise typer.Exit(0)
    assert isinstance(doc, PolicyDocument)
    if as_json:
        # Key hashes are not secrets, but nobody needs them on a screen.
        data = doc.model_dump(mode="json")
        for tenant in data["tenants"].values():
            tenant["keys"] = [{k: v for k, v in key.items() if k not in ("salt", "hash")} for key in tenant["keys"]]
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    table = Table(title=f"policy {doc.version} — route {' → '.join(route_for(doc, get_settings()))}")
    for col in ("tenant", "principal", "regions", "models", "pii", "injection", "limits", "cache", "keys"):
        table.add_column(col)
    for name, tenant in sorted(doc.tenants.items()):
        pii = ", ".join([f"default {tenant.pii.default}"] + [
            f"{e} {getattr(tenant.pii, e)}" for e in ("email", "phone", "credit_card", "iban", "us_ssn",
                                                       "ip_address", "secret") if getattr(tenant.pii, e)])
        keys = ", ".join(k.key_id + (" (revoked)" if k.revoked else "") for k in tenant.keys) or "-"
        cache = "no" if not tenant.cache.allowed else f"yes ≥{tenant.cache.semantic_threshold or '-'}"
        table.add_row(name, "required" if tenant.require_principal else "optional", ", ".join(tenant.regions) or "any",
                      ", ".join(tenant.allowed_models) or "any", pii,
                      f"{tenant.injection.action} ≥{tenant.injection.threshold}", _limits(tenant), cache, keys)
    console.print(table)


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="tenant the key belongs to")],
    add_to: Annotated[Path | None, typer.Option(help="policy YAML to add the key's record to (then apply it)")] = None,
    description: Annotated[str, typer.Option(help="what the key is for")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="print the key and its record as JSON")] = False,
) -> None:
    """Create an API key: prints the raw key ONCE, and the record (id + salted hash) the policy stores."""
    doc: dict[str, Any] | None = None
    bumped = ""
    if add_to is not None:
        _load_or_exit(add_to)
        doc = yaml.safe_load(add_to.read_text())
        assert isinstance(doc, dict)
        if tenant not in (doc.get("tenants") or {}):
            err_console.print(f"[red]tenant {tenant!r} is not in {add_to}[/]")
            raise typer.Exit(EXIT_USAGE)
    raw_key, record = create_key(tenant, description=description)
    record_data = record.model_dump(mode="json", exclude_defaults=True)
    if doc is not None and add_to is not None:
        tenant_doc = doc["tenants"][tenant]
        tenant_doc["keys"] = [*(tenant_doc.get("keys") or []), record_data]
        # A changed document needs its own version (`policy apply` refuses a change under the version in force).
        new_version = next_version(str(doc["version"]))
        bumped, doc["version"] = f"version {doc['version']} → {new_version}", new_version
        try:
            parse_policy(doc)
        except ConfigError as exc:
            err_console.print(f"[red]{exc}[/]")
            raise typer.Exit(EXIT_USAGE) from exc
        add_to.write_text(yaml.safe_dump(doc, sort_keys=False))
    if as_json:
        sys.stdout.write(orjson.dumps({"tenant": tenant, "key": raw_key, "record": record_data}).decode() + "\n")
        return
    console.print(f"[b]{raw_key}[/]", highlight=False)
    console.print("[yellow]This is the only time the key is shown; tollway stores only its salted hash.[/]")
    if add_to is not None:
        console.print(f"added key {record.key_id} to tenant {tenant} in {add_to}, {bumped} (comments in the file "
                      f"are not kept); publish it with `tollway policy apply {add_to}`")
    else:
        console.print(f"add this record under tenants.{tenant}.keys in the policy document, then apply it:")
        console.print(yaml.safe_dump([record_data], sort_keys=False), highlight=False)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main `tollway` app."""
    app.add_typer(policy_app, name="policy")
    app.add_typer(keys_app, name="keys")
