"""Asking a running ledger worker over HTTP (``GET /ledger/``, ``/ledger/task/``, ``/ledger/status/``).

When no worker answers, :class:`LedgerUnreachable` says so in one line: the URL tried and how to start one.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
from pydantic import ValidationError

from schemas.errors import ServiceUnavailable
from schemas.ledger import LedgerSnapshot
from streams.settings import Settings

CONNECT_TIMEOUT_S = 3.0  # a loopback or LAN worker accepts at once; a snapshot may take longer to answer
START_ONE = ("start one with `tollway ledger worker` (port: TOLLWAY_LEDGER_PORT), point --url at a running one, "
             "or read the responses topic instead with `--source topic`")


class LedgerUnreachable(ServiceUnavailable):
    """No ledger worker answers at the URL (its message says which, and how to start one)."""


def ledger_url(settings: Settings) -> str:
    return f"http://{settings.ledger_host}:{settings.ledger_port}"


def _why(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "nothing accepts connections there"
    if isinstance(exc, httpx.TimeoutException):
        return "no answer in time"
    return " ".join(str(exc).split()) or type(exc).__name__


async def _get(url: str, path: str, params: dict[str, str], timeout_s: float) -> httpx.Response:
    """``GET url + path`` from a ledger worker; anything but its 200 is a one-line :class:`LedgerUnreachable`."""
    base = url.rstrip("/")
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S)) as client:
            reply = await client.get(f"{base}{path}", params=params)
    except httpx.HTTPError as exc:
        raise LedgerUnreachable(f"no ledger worker at {base} ({_why(exc)}): {START_ONE}") from exc
    if reply.status_code == 503:
        raise LedgerUnreachable(f"the ledger worker at {base} is still recovering its tables: try again in a few "
                                f"seconds (`tollway ledger status` shows when it is ready)")
    if reply.status_code != 200:
        raise LedgerUnreachable(f"{base} answered {reply.status_code} to {path}, so it is not a tollway ledger "
                                f"worker: {START_ONE}")
    return reply


async def fetch_snapshot(url: str, *, tenant: str | None = None, window: str = "day",
                         timeout_s: float = 30.0) -> LedgerSnapshot:
    """Ask a running ledger worker (``GET {url}/ledger/``)."""
    params = {"window": window, **({"tenant": tenant} if tenant else {})}
    reply = await _get(url, "/ledger/", params, timeout_s)
    try:
        return LedgerSnapshot.model_validate_json(reply.content)
    except ValidationError as exc:
        raise LedgerUnreachable(f"{url.rstrip('/')} answered /ledger/ with something other than a ledger "
                                f"snapshot, so it is not a tollway ledger worker: {START_ONE}") from exc


async def fetch_status(url: str, *, timeout_s: float = 10.0) -> dict[str, Any]:
    """A running ledger worker's recovery times, table sizes and positions (``GET {url}/ledger/status/``)."""
    reply = await _get(url, "/ledger/status/", {}, timeout_s)
    try:
        status: dict[str, Any] = orjson.loads(reply.content)
    except orjson.JSONDecodeError as exc:
        raise LedgerUnreachable(f"{url.rstrip('/')} answered /ledger/status/ with something other than JSON, so it "
                                f"is not a tollway ledger worker: {START_ONE}") from exc
    return status


async def fetch_task(url: str, *, tenant: str, task_id: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """One task's counted requests, cost and outcome from a running ledger worker (``GET {url}/ledger/task/``)."""
    reply = await _get(url, "/ledger/task/", {"tenant": tenant, "task_id": task_id}, timeout_s)
    try:
        task: dict[str, Any] = orjson.loads(reply.content)
        int(task["requests"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise LedgerUnreachable(f"{url.rstrip('/')} answered /ledger/task/ with something other than a task, so it "
                                f"is not a tollway ledger worker (or one older than this CLI): {START_ONE}") from exc
    return task
