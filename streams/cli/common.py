"""What every ``tollway`` subcommand shares: exit codes, running a coroutine with clear errors, reading times."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

import typer
from rich.console import Console

from schemas.errors import ConfigError, ServiceUnavailable

EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 1, 2, 3
T = TypeVar("T")

err_console = Console(stderr=True)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro``; a service that is down exits 3 and a bad configuration exits 2, each with one clear line."""
    try:
        return asyncio.run(coro)
    except ServiceUnavailable as exc:
        err_console.print(f"[red]service unavailable:[/] {exc}  (start the stack with `make up`)")
        raise typer.Exit(EXIT_UNAVAILABLE) from exc
    except ConfigError as exc:
        err_console.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(EXIT_USAGE) from exc


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
