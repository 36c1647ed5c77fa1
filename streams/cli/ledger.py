"""`tollway ledger …` and `tollway outcome …` (registered by streams/cli/main.py).

    tollway ledger [--tenant T] [--window day|hour] [--json|--csv] [--source worker|topic]
                                          cost per tenant × model × window, cost per 1k requests, the online
                                          evaluators' pass rates, and cost per task outcome
    tollway ledger worker                 the Faust ledger worker (tables + web server on TOLLWAY_LEDGER_PORT)
    tollway ledger status                 recovery time, table sizes, positions of the running worker
    tollway ledger reconcile              ledger vs an independent read of the responses topic and vs the audit
                                          log's costs; exit 1 unless both differences are zero
    tollway ledger reprice --prices F     old vs new cost per tenant from retained usage; writes a new version
    tollway outcome TASK_ID resolved|failed --tenant T [--source worker|topic] [--unseen]
                                          a task's verdict; refused (2) for a task id no request carried

``ledger`` reads the running worker's table over HTTP by default (``--source topic`` aggregates the responses topic
instead, with no worker). Exit codes: 0 ok, 1 reconciliation found a difference, 2 usage, 3 a service is down.
"""

from __future__ import annotations

import csv
import hashlib
import io
import sys
import time
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from schemas.errors import ConfigError, ServiceUnavailable
from schemas.ledger import CASCADE_PREFIX, TOOL_PREFIX, LedgerRow, LedgerSnapshot, OutcomeEvent, OutcomeRow, RepriceRow
from streams.cli.common import EXIT_UNAVAILABLE, EXIT_USAGE, err_console, exclusive, parse_time_ns, run_async
from streams.settings import Settings, get_settings

console = Console()
EXIT_DIFFERENCE = 1


class WindowChoice(StrEnum):
    HOUR = "hour"
    DAY = "day"


class Source(StrEnum):
    WORKER = "worker"
    TOPIC = "topic"


class Verdict(StrEnum):
    RESOLVED = "resolved"
    FAILED = "failed"


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


PASS_RATES = ("grounded", "structured_output", "no_refusal", "slo_met")


def row_view(row: LedgerRow) -> dict[str, Any]:
    """A row as printed by --json and --csv: its counters plus cost per 1k requests and the evaluators' pass rates."""
    rates = row.pass_rates()
    return {**row.model_dump(mode="json"), "cost_per_1k_requests_micros": row.cost_per_1k_requests_micros,
            **{f"{name}_pass_rate": rates[name] for name in PASS_RATES}}


def _rate(passed: int, judged: int) -> str:
    return f"{100 * passed / judged:.1f}% of {judged}" if judged else "—"


def ledger_table(rows: list[LedgerRow], title: str) -> Table:
    table = Table(title=title)
    for col in ("tenant", "model", "window start (UTC)", "requests", "tokens in", "cached in", "tokens out",
                "cost µ$", "µ$ / 1k req", "cache hits", "saved µ$", "denied", "failed", "deadline", "tool calls"):
        table.add_column(col, justify="left" if col in ("tenant", "model", "window start (UTC)") else "right")
    for r in rows:
        table.add_row(r.tenant, r.model, _when(r.window_start_ms), str(r.requests), str(r.input_tokens),
                      str(r.cached_input_tokens), str(r.output_tokens), str(r.cost_micros),
                      str(r.cost_per_1k_requests_micros), str(r.cache_hits), str(r.saved_micros), str(r.denials),
                      str(r.failures), str(r.deadline_misses), str(r.tool_calls))
    return table


def quality_table(rows: list[LedgerRow], title: str) -> Table:
    """Cost per 1k requests next to the evaluators' pass rates: what a routing policy is tuned on."""
    table = Table(title=title)
    for col in ("tenant", "model", "window start (UTC)", "requests", "µ$ / 1k req", "grounded", "structured ok",
                "no refusal", "SLO met"):
        table.add_column(col, justify="left" if col in ("tenant", "model", "window start (UTC)") else "right")
    for r in rows:
        if r.model.startswith((TOOL_PREFIX, CASCADE_PREFIX)):
            continue  # a tool's or a cascade's cheaper calls' row: calls and cost, nothing an evaluator judged
        table.add_row(r.tenant, r.model, _when(r.window_start_ms), str(r.requests),
                      str(r.cost_per_1k_requests_micros), _rate(r.grounded_passed, r.grounded_evaluated),
                      _rate(r.structured_passed, r.structured_evaluated),
                      _rate(r.refusal_evaluated - r.refusals, r.refusal_evaluated),
                      _rate(r.slo_passed, r.slo_evaluated))
    return table


def outcome_table(rows: list[OutcomeRow]) -> Table:
    table = Table(title="cost per task outcome")
    for col in ("tenant", "outcome", "tasks", "requests", "cost µ$", "µ$ per task"):
        table.add_column(col, justify="left" if col in ("tenant", "outcome") else "right")
    for r in rows:
        table.add_row(r.tenant, r.outcome, str(r.tasks), str(r.requests), str(r.cost_micros),
                      str(r.cost_per_task_micros))
    return table


def _print_snapshot(snapshot: LedgerSnapshot, *, window: str, as_json: bool, as_csv: bool) -> None:
    if as_json:
        document = {**snapshot.model_dump(mode="json"), "rows": [row_view(row) for row in snapshot.rows]}
        sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()
                         + "\n")
    elif as_csv:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=[*LedgerRow.model_fields, "cost_per_1k_requests_micros",
                                                 *(f"{name}_pass_rate" for name in PASS_RATES)])
        writer.writeheader()
        for row in snapshot.rows:
            writer.writerow(row_view(row))
        sys.stdout.write(out.getvalue())
    else:
        console.print(ledger_table(snapshot.rows, f"cost ledger — tenant × model × {window}"))
        console.print(quality_table(snapshot.rows, f"quality beside cost — evaluators' pass rates × {window}"))
        if snapshot.outcomes:
            console.print(outcome_table(snapshot.outcomes))


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main `tollway` app."""
    ledger = typer.Typer(help="The cost ledger: per tenant × model × window, exact, reconciled, re-priceable.",
                         invoke_without_command=True)
    app.add_typer(ledger, name="ledger")

    @ledger.callback()
    def show(
        ctx: typer.Context,
        tenant: Annotated[str | None, typer.Option(help="only this tenant")] = None,
        window: Annotated[WindowChoice, typer.Option(help="tumbling window")] = WindowChoice.DAY,
        as_json: Annotated[bool, typer.Option("--json", help="print the snapshot as JSON")] = False,
        as_csv: Annotated[bool, typer.Option("--csv", help="print the rows as CSV")] = False,
        source: Annotated[Source, typer.Option(help="worker: the Faust table over HTTP; topic: aggregate "
                                                    "the responses topic here")] = Source.WORKER,
        url: Annotated[str | None, typer.Option(help="ledger worker URL (default from TOLLWAY_LEDGER_*)")] = None,
    ) -> None:
        """Print the cost ledger (the default when no subcommand is given)."""
        if ctx.invoked_subcommand is not None:
            return
        exclusive({"--json": as_json, "--csv": as_csv})
        exclusive({"--url": url is not None, "--source topic": source is Source.TOPIC})  # --url names the worker
        from streams.ledger.aggregate import ledger_snapshot
        from streams.ledger.client import fetch_snapshot, ledger_url

        settings = get_settings()
        if source is Source.WORKER:
            coro = fetch_snapshot(url or ledger_url(settings), tenant=tenant, window=window.value)
        else:
            coro = ledger_snapshot(settings, tenant=tenant, window=window.value)
        _print_snapshot(run_async(coro), window=window.value, as_json=as_json, as_csv=as_csv)

    @ledger.command("worker")
    def worker(
        port: Annotated[int | None, typer.Option(help="web server port (default TOLLWAY_LEDGER_PORT)")] = None,
        loglevel: Annotated[str, typer.Option(help="crit, error, warn, info or debug")] = "warn",
    ) -> None:
        """Run the Faust ledger worker in the foreground: consumes responses and outcomes, serves /ledger/."""
        from streams.ledger.app import run_worker

        settings = get_settings()
        if port is not None:
            settings = settings.model_copy(update={"ledger_port": port})
        try:
            run_worker(settings, loglevel=loglevel)
        except ServiceUnavailable as exc:
            console.print(f"[red]service unavailable:[/] {exc}", soft_wrap=True)
            raise typer.Exit(EXIT_UNAVAILABLE) from exc

    @ledger.command("status")
    def status(url: Annotated[str | None, typer.Option(help="ledger worker URL")] = None) -> None:
        """The running worker's recovery time, table sizes and applied positions (JSON)."""
        from streams.ledger.client import fetch_status, ledger_url

        status = run_async(fetch_status(url or ledger_url(get_settings())))
        sys.stdout.write(orjson.dumps(status, option=orjson.OPT_NON_STR_KEYS).decode() + "\n")

    @ledger.command("reconcile")
    def reconcile_cmd(
        url: Annotated[str | None, typer.Option(help="ledger worker URL")] = None,
        as_json: Annotated[bool, typer.Option("--json")] = False,
        require_audited: Annotated[bool, typer.Option(
            "--require-audited", help="also fail while a counted request is not audited yet (a drained pipeline)",
        )] = False,
    ) -> None:
        """Compare the ledger with an independent aggregation of the responses topic and with the audited costs of
        the audit log; print the differences (exit 1 unless zero)."""
        from streams.ledger.reconcile import Reconciliation, reconcile

        result: Reconciliation = run_async(reconcile(get_settings(), url))
        tenants = sorted(result.ledger_totals.keys() | result.source_totals.keys())
        rows: list[dict[str, Any]] = []
        for tenant in tenants:
            mine, theirs = result.ledger_totals.get(tenant), result.source_totals.get(tenant)
            rows.append({"tenant": tenant,
                         "ledger_requests": mine.requests if mine else 0,
                         "source_requests": theirs.requests if theirs else 0,
                         "ledger_cost_micros": mine.cost_micros if mine else 0,
                         "source_cost_micros": theirs.cost_micros if theirs else 0})
        for row in rows:
            row["difference_micros"] = row["ledger_cost_micros"] - row["source_cost_micros"]
        total_difference = sum(abs(d.difference) for d in result.differences)
        ok = result.ok and not (require_audited and result.unaudited)
        audit_rows = [{"tenant": a.tenant, "requests": a.requests, "ledger_cost_micros": a.ledger_cost_micros,
                       "audited_requests": a.audited_requests, "audited_cost_micros": a.audited_cost_micros,
                       "unaudited_requests": a.unaudited_requests, "unaudited_cost_micros": a.unaudited_cost_micros,
                       "mismatched_requests": a.mismatched, "audited_not_in_ledger": a.audited_elsewhere,
                       "difference_micros": a.difference_micros} for a in result.audit]
        if as_json:
            sys.stdout.write(orjson.dumps({"ok": ok, "difference": total_difference, "tenants": rows,
                                           "cells_differing": len(result.differences),
                                           "audit_difference": result.audit_difference_micros,
                                           "audit": audit_rows, "unaudited": result.unaudited,
                                           "positions": result.positions},
                                          option=orjson.OPT_NON_STR_KEYS).decode() + "\n")
        else:
            table = Table(title="reconciliation: ledger vs responses topic (day cells, same offsets)")
            for col in ("tenant", "requests ledger", "requests source", "cost µ$ ledger", "cost µ$ source",
                        "difference µ$"):
                table.add_column(col, justify="left" if col == "tenant" else "right")
            for row in rows:
                table.add_row(*(str(v) for v in row.values()))
            console.print(table)
            for diff in result.differences[:20]:
                console.print(f"[red]{diff.tenant} {diff.model} {_when(diff.window_start_ms)} {diff.field}: "
                              f"ledger {diff.ledger} vs source {diff.source}[/]")
            console.print(f"difference: {total_difference}")
            audit_table = Table(title="reconciliation: ledger vs audited costs (the requests the ledger counted)")
            for col in ("tenant", "requests", "cost µ$ ledger", "audited", "cost µ$ audited", "not audited yet",
                        "cost µ$ not audited", "mismatched", "difference µ$"):
                audit_table.add_column(col, justify="left" if col == "tenant" else "right")
            for a in result.audit:
                audit_table.add_row(a.tenant, str(a.requests), str(a.ledger_cost_micros), str(a.audited_requests),
                                    str(a.audited_cost_micros), str(a.unaudited_requests),
                                    str(a.unaudited_cost_micros), str(a.mismatched), str(a.difference_micros))
            console.print(audit_table)
            console.print(f"audit difference: {result.audit_difference_micros}"
                          + (f" ({result.unaudited} request(s) not audited yet)" if result.unaudited else ""))
        if not ok:
            raise typer.Exit(EXIT_DIFFERENCE)

    @ledger.command("reprice")
    def reprice_cmd(
        prices: Annotated[Path, typer.Option(help="YAML: model → micro-dollars per million input / "
                                                  "cached_input / output tokens")],
        since: Annotated[str | None, typer.Option(help="ISO 8601 or epoch seconds (inclusive)")] = None,
        until: Annotated[str | None, typer.Option(help="ISO 8601 or epoch seconds (exclusive)")] = None,
        out: Annotated[Path | None, typer.Option(help="directory for the new ledger version "
                                                      "(default $TOLLWAY_STATE_DIR/ledger/versions)")] = None,
        as_json: Annotated[bool, typer.Option("--json")] = False,
    ) -> None:
        """Recompute costs from the retained usage with a new price table; print old vs new per tenant."""
        settings = get_settings()
        try:
            since_ns, until_ns = parse_time_ns(since), parse_time_ns(until)
            if since_ns is not None and until_ns is not None and since_ns >= until_ns:
                raise ConfigError(f"--since {since} is not before --until {until}: the window is empty")
            rows, path = reprice_to_version(settings, prices, since=since_ns, until=until_ns, out=out)
        except ConfigError as exc:
            console.print(f"[red]configuration error:[/] {exc}")
            raise typer.Exit(EXIT_USAGE) from exc
        if as_json:
            sys.stdout.write(orjson.dumps({"version": str(path), "tenants": [
                {**r.model_dump(mode="json"), "delta_micros": r.delta_micros} for r in rows]}).decode() + "\n")
            return
        table = Table(title=f"re-priced with {prices.name}")
        for col in ("tenant", "requests", "old cost µ$", "new cost µ$", "delta µ$", "unpriced"):
            table.add_column(col, justify="left" if col == "tenant" else "right")
        for r in rows:
            table.add_row(r.tenant, str(r.requests), str(r.old_cost_micros), str(r.new_cost_micros),
                          f"{r.delta_micros:+d}", str(r.unpriced_requests))
        console.print(table)
        console.print(f"new ledger version written to {path}")

    @app.command("outcome")
    def outcome(
        task_id: Annotated[str, typer.Argument(help="the task the requests carried as task_id")],
        verdict: Annotated[Verdict, typer.Argument(help="resolved or failed")],
        tenant: Annotated[str, typer.Option(help="tenant id")] = "acme",
        source: Annotated[Source, typer.Option(help="where to check that a request carried the task: worker (the "
                                                    "ledger's tables over HTTP) or topic (read the responses topic "
                                                    "here)")] = Source.WORKER,
        url: Annotated[str | None, typer.Option(help="ledger worker URL (default from TOLLWAY_LEDGER_*)")] = None,
        unseen: Annotated[bool, typer.Option("--unseen", help="publish without the check (a task whose requests "
                                             "are not answered yet)")] = False,
    ) -> None:
        """Publish a task's outcome, so the ledger can answer cost per resolved task.

        Refused (exit 2) when no request ever carried TASK_ID for the tenant: a mistyped id or tenant would be a
        verdict on nothing, counted nowhere."""
        exclusive({"--url": url is not None, "--source topic": source is Source.TOPIC})
        exclusive({"--unseen": unseen, "--source topic": source is Source.TOPIC})
        settings = get_settings()
        requests = None if unseen else run_async(_task_requests(settings, tenant=tenant, task_id=task_id,
                                                                source=source, url=url))
        if requests == 0:
            where = "the responses topic" if source is Source.TOPIC else "the ledger"
            err_console.print(f"[red]task {task_id!r} of tenant {tenant!r} is unknown:[/] no request carried it "
                              f"({where} counted none); check the id and --tenant, or publish anyway with --unseen",
                              soft_wrap=True, highlight=False)
            raise typer.Exit(EXIT_USAGE)
        event = OutcomeEvent(tenant=tenant, task_id=task_id, outcome=verdict.value, at_ns=time.time_ns())
        run_async(publish_outcome(settings, event))
        counted = "" if requests is None else f" ({requests} request(s))"
        console.print(f"task {task_id} ({tenant}): {verdict.value}{counted}")


async def _task_requests(settings: Settings, *, tenant: str, task_id: str, source: Source, url: str | None) -> int:
    """How many answered requests carried ``task_id`` for ``tenant``: the ledger worker's count, or a read of the
    responses topic (every record: slow on a long one, and needs no worker)."""
    if source is Source.TOPIC:
        return sum(1 for _p, _o, response in await read_responses(settings)
                   if response.tenant == tenant and response.task_id == task_id)
    from streams.ledger.client import fetch_task, ledger_url

    task = await fetch_task(url or ledger_url(settings), tenant=tenant, task_id=task_id)
    return int(task["requests"])


async def publish_outcome(settings: Settings, event: OutcomeEvent) -> None:
    """Send one outcome event to ``<prefix>.outcomes`` keyed by task_id (idempotent producer, acks=all)."""

    from streams.runtime.codec import encode
    from streams.runtime.connections import new_producer, start
    from streams.runtime.topics import ensure_topics, topology

    await ensure_topics(settings)
    producer = new_producer(settings, role="producer")
    await start(producer, settings, "outcome publisher")
    try:
        await producer.send_and_wait(topology(settings).outcomes, encode(event), key=event.task_id.encode())
    finally:
        await producer.stop()


async def read_responses(settings: Settings) -> list[tuple[int, int, Any]]:
    from streams.ledger.reader import decoded_responses, read_topic
    from streams.runtime.topics import ensure_topics, topology

    await ensure_topics(settings)
    return decoded_responses(await read_topic(settings, topology(settings).responses))


def reprice_to_version(settings: Settings, prices_file: Path, *, since: int | None, until: int | None,
                       out: Path | None = None) -> tuple[list[RepriceRow], Path]:
    """Re-price the retained responses; the new ledger version (rows + price file digest) is written as JSON."""
    from workers.ledger.reprice import load_prices, reprice

    prices = load_prices(prices_file)
    records = run_async(read_responses(settings))
    rows, version = reprice(records, prices, since_ns=since, until_ns=until)
    digest = hashlib.sha256(prices_file.read_bytes()).hexdigest()[:12]
    directory = out or settings.state_dir / "ledger" / "versions"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{settings.topic_prefix}-{digest}-{since or 0}-{until or 0}.json"
    path.write_bytes(orjson.dumps({
        "prices_file": str(prices_file), "prices_sha256": digest, "since_ns": since, "until_ns": until,
        "tenants": [r.model_dump(mode="json") for r in rows],
        "rows": [r.model_dump(mode="json") for r in version.rows(window=None)],
    }, option=orjson.OPT_INDENT_2))
    return rows, path
