"""Asking a running ledger worker over HTTP (``GET /ledger/``)."""

from __future__ import annotations

import httpx

from schemas.errors import ServiceUnavailable
from schemas.ledger import LedgerSnapshot
from streams.settings import Settings


def ledger_url(settings: Settings) -> str:
    return f"http://{settings.ledger_host}:{settings.ledger_port}"


async def fetch_snapshot(url: str, *, tenant: str | None = None, window: str = "day",
                         timeout_s: float = 30.0) -> LedgerSnapshot:
    """Ask a running ledger worker (``GET {url}/ledger/``)."""
    params = {"window": window, **({"tenant": tenant} if tenant else {})}
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            reply = await client.get(f"{url.rstrip('/')}/ledger/", params=params)
    except httpx.HTTPError as exc:
        raise ServiceUnavailable(f"no ledger worker answers at {url} ({exc}); start one with "
                                 f"`tollway ledger worker`, or read the topic with `--source topic`") from exc
    if reply.status_code != 200:
        raise ServiceUnavailable(f"ledger worker at {url} answered {reply.status_code}: {reply.text[:200]}")
    return LedgerSnapshot.model_validate_json(reply.content)
