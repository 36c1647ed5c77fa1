"""`tollway` subcommands for the ingress area (registered by streams/cli/main.py): ``serve`` and ``backfill``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Annotated

import typer

from schemas.envelope import Tier

log = logging.getLogger(__name__)


def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on (0: any free port)", min=0, max=65535)] = 8080,
    reply_topic: Annotated[str | None, typer.Option(help="read replies from this per-instance topic instead of "
                                                    "the shared responses topic")] = None,
) -> None:
    """OpenAI-compatible HTTP ingress: POST /v1/chat/completions, GET /v1/models, /healthz, /metrics."""
    from streams.cli.common import EXIT_USAGE, console, err_console, run_async, setup_logging
    from streams.ingress.server import serving
    from streams.settings import get_settings

    settings = get_settings()
    setup_logging(settings.log_level)

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        async with serving(settings, host=host, port=port, reply_topic=reply_topic) as (_, bound):
            console.print(f"tollway ingress on http://{host}:{bound}/v1 (Kafka {settings.bootstrap_servers})")
            await stop.wait()

    try:
        run_async(go(), event_loop=settings.ingress_event_loop)
    except OSError as exc:  # the address is in use or not this host's (Kafka and Redis errors arrive converted)
        err_console.print(f"[red]cannot listen on {host}:{port}:[/] {exc.strerror or exc}", soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from exc


def backfill(
    input_file: Annotated[Path, typer.Argument(help="JSONL requests: {prompt|messages, id?, tenant?, model?, ...} "
                                               "or OpenAI batch lines {custom_id, body}", exists=True,
                                               dir_okay=False, readable=True)],
    out: Annotated[Path, typer.Option(help="JSONL results (appended; rerun to resume)")] = Path("results.jsonl"),
    rate: Annotated[str, typer.Option(help="publish rate, e.g. 200/s or 6000/m")] = "200/s",
    tier: Annotated[Tier, typer.Option(help="SLO tier (batch travels on the batch lane)")] = Tier.BATCH,
    tenant: Annotated[str, typer.Option(help="tenant for lines that name none")] = "acme",
    api_key: Annotated[str | None, typer.Option(envvar="TOLLWAY_API_KEY", help="API key (signs each request)")]
    = None,
    job: Annotated[str | None, typer.Option(help="job name in the request ids (default: the output file name)")]
    = None,
    max_in_flight: Annotated[int, typer.Option(help="requests published but not yet answered, at most")] = 2000,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="validate the input and exit")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Publish a JSONL file of requests on the batch lane at a steady rate; resumable, nothing charged twice."""
    from streams.cli.common import EXIT_FAILED, EXIT_USAGE, console, run_async, setup_logging
    from streams.clients.backfill import BackfillOptions, parse_rate, print_summary, run_backfill
    from streams.settings import get_settings

    settings = get_settings()
    setup_logging("WARNING")
    try:
        per_second = parse_rate(rate)
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(EXIT_USAGE) from exc
    options = BackfillOptions(input_file=input_file, out=out, rate_per_s=per_second, tier=tier, tenant=tenant,
                              api_key=api_key, job=job, max_in_flight=max_in_flight, dry_run=dry_run)
    summary = run_async(run_backfill(settings, options, console=console, progress=not as_json))
    print_summary(summary, console, as_json=as_json)
    if summary.bad_lines and dry_run:
        raise typer.Exit(EXIT_USAGE)
    if summary.failed:
        raise typer.Exit(EXIT_FAILED)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main `tollway` app."""
    app.command()(serve)
    app.command()(backfill)
