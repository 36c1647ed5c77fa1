"""What every ``tollway`` subcommand shares: exit codes, the consoles and logging set-up, running a coroutine with clear
errors, reading times, printing a response with its per-stage latency."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from schemas.errors import ConfigError, ServiceUnavailable
from schemas.response import Response

EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 1, 2, 3
T = TypeVar("T")

# Piped output (make demo | tee, CI logs) gets room for the wide tables instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.WARNING)


def run_async(coro: Coroutine[Any, Any, T], *, event_loop: str = "asyncio") -> T:
    """Run ``coro`` (on uvloop when ``event_loop`` is ``"uvloop"``); a service that is down exits 3 and a bad
    configuration exits 2, each with one clear line (never wrapped: a script or a test reads it whole)."""
    try:
        if event_loop == "uvloop":
            import uvloop

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(coro)
        return asyncio.run(coro)
    except ServiceUnavailable as exc:
        from streams.ledger.client import LedgerUnreachable

        # A missing ledger worker is not fixed by starting Kafka and Redis: its message says what is.
        hint = "" if isinstance(exc, LedgerUnreachable) else "  (start the stack with `make up`)"
        err_console.print(f"[red]service unavailable:[/] {escape(str(exc))}{hint}", soft_wrap=True)
        raise typer.Exit(EXIT_UNAVAILABLE) from exc
    except ConfigError as exc:
        err_console.print(f"[red]configuration error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from exc


def exclusive(given: dict[str, bool]) -> None:
    """Refuse options that exclude each other (``{"--json": as_json, "--csv": as_csv}``) when more than one is
    given: a usage error (exit 2) naming them, instead of one silently winning (typer has no exclusive groups)."""
    named = [option for option, on in given.items() if on]
    if len(named) > 1:
        raise typer.BadParameter(f"{' and '.join(named)} are mutually exclusive: give one of them")


def parse_time_ns(text: str | None) -> int | None:
    """ISO 8601 (naive means UTC) or epoch seconds → epoch nanoseconds."""
    if text is None:
        return None
    try:
        return int(float(text) * 1e9)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"{text!r} is neither ISO 8601 nor epoch seconds") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def latency_table(response: Response) -> Table:
    table = Table(title=f"request {response.request_id} — per-stage latency", show_lines=False)
    for col in ("stage", "queue ms", "service ms", "budget left ms", "batch"):
        table.add_column(col, justify="right" if col != "stage" else "left")
    for hop in response.hops:
        table.add_row(hop.stage, f"{hop.queue_ms:.2f}", f"{hop.service_ms:.2f}", f"{hop.remaining_budget_ms:.0f}",
                      str(hop.batch_size))
    total = (response.completed_at_ns - response.created_at_ns) / 1e6
    table.add_row("[b]end to end[/]", "", f"[b]{total:.2f}[/]", "", "")
    return table


def agent_table(response: Response, *, width: int = 32) -> Table:
    """An agent task's waterfall: each hop in order (a bar from where it started to where it ended, queue then
    service), the model turn or tool calls it made, their decisions and cost, and the task's total."""
    table = Table(title=f"agent task {response.request_id} — per-step latency and cost")
    for col in ("hop", "step", "what", "decision", "queue ms", "service ms", "waterfall", "cost µ$"):
        table.add_column(col, justify="right" if col in ("queue ms", "service ms", "cost µ$") else "left")
    total_ms = max(sum(h.queue_ms + h.service_ms for h in response.hops), 1e-9)
    models = [s for s in response.steps if s.kind == "model"]
    tool_steps = sorted({s.step for s in response.steps if s.kind == "tool"})
    at_ms = 0.0
    for hop in response.hops:
        start = round(at_ms / total_ms * width)
        queue = round(hop.queue_ms / total_ms * width)
        service = max(1, round(hop.service_ms / total_ms * width))
        bar = " " * start + "·" * queue + "█" * service
        at_ms += hop.queue_ms + hop.service_ms
        rows: list[tuple[str, str, str, str]] = []
        if hop.stage == "model" and models:
            turn = models.pop(0)
            # The last turn of a client-executed answer asked for the caller's tools: no tools hop follows it.
            asked = turn.step in tool_steps or (not models and bool(response.requested_tool_calls))
            rows.append((str(turn.step), f"model {turn.name}", "asked for tools" if asked else "answered",
                         str(turn.cost_micros)))
        elif hop.stage == "tools" and tool_steps:
            step = tool_steps.pop(0)
            rows += [(str(c.step), f"tool {c.name}", c.status + (f" ({c.code})" if c.code else ""),
                      str(c.cost_micros)) for c in response.steps if c.kind == "tool" and c.step == step]
        first = rows[0] if rows else ("", "", "", "")
        table.add_row(hop.stage, first[0], first[1], first[2], f"{hop.queue_ms:.2f}", f"{hop.service_ms:.2f}", bar,
                      first[3])
        for row in rows[1:]:
            table.add_row("", row[0], row[1], row[2], "", "", "", row[3])
    total = (response.completed_at_ns - response.created_at_ns) / 1e6
    table.add_row("[b]task[/]", "", f"{sum(s.kind == 'model' for s in response.steps)} model turns, "
                  f"{response.tool_calls} tool calls", "", "", f"[b]{total:.2f}[/]", "",
                  f"[b]{response.cost_micros}[/]")
    return table


def print_response(response: Response) -> None:
    status = response.status.value + (f" ({response.code})" if response.code else "")
    console.print(f"[b]{status}[/]  model={response.model or '-'}  cost={response.cost_micros} µ$  "
                  f"tokens in/cached/out={response.usage.input_tokens}/{response.usage.cached_input_tokens}/"
                  f"{response.usage.output_tokens}")
    if response.answer:
        console.print(response.answer)
    if response.message:
        console.print(f"[yellow]{response.message}[/]")
    for call in response.requested_tool_calls:  # client-executed: the caller runs these and posts the results back
        console.print(f"tool call [b]{call.id}[/]: {call.name}({orjson.dumps(call.arguments).decode()})")
    console.print(agent_table(response) if response.steps else latency_table(response))
