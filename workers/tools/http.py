"""Plain HTTP tools: the arguments are POSTed as JSON to the tool's ``url``; a 2xx JSON reply is the result.

A side-effecting call carries ``Idempotency-Key`` (its effect key), so a service that honours it deduplicates too.
Every failure is a :class:`ToolFailure` with a code the model and the audit see: ``tool_timeout``,
``tool_unavailable`` (connection refused, 5xx), ``tool_error`` (4xx), ``invalid_result`` (not JSON),
``result_too_large``.
"""

from __future__ import annotations

from typing import Any, Protocol

import httpx
import orjson

from schemas.errors import ToolFailure
from schemas.policy import ToolSpec


class HttpTools(Protocol):
    async def run(self, spec: ToolSpec, arguments: dict[str, Any], *, timeout_s: float,
                  idempotency_key: str | None) -> Any: ...

    async def aclose(self) -> None: ...


class NoHttpTools:
    """The slot's default: HTTP tools are configured by the stage's wiring."""

    async def run(self, spec: ToolSpec, arguments: dict[str, Any], *, timeout_s: float,
                  idempotency_key: str | None) -> Any:
        raise ToolFailure("tool_unavailable", "no HTTP client is configured for tools in this worker")

    async def aclose(self) -> None:
        return None


class HttpxTools:
    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self.client = client or httpx.AsyncClient()

    async def run(self, spec: ToolSpec, arguments: dict[str, Any], *, timeout_s: float,
                  idempotency_key: str | None) -> Any:
        assert spec.url is not None  # validated by the policy document
        headers = {"content-type": "application/json"}
        if idempotency_key is not None:
            headers["idempotency-key"] = idempotency_key
        try:
            reply = await self.client.post(spec.url, content=orjson.dumps(arguments), headers=headers,
                                           timeout=timeout_s)
        except httpx.TimeoutException as exc:
            raise ToolFailure("tool_timeout", f"no reply within {timeout_s * 1000:.0f} ms") from exc
        except httpx.HTTPError as exc:
            raise ToolFailure("tool_unavailable", f"{type(exc).__name__}: {exc}") from exc
        if reply.status_code >= 500:
            raise ToolFailure("tool_unavailable", f"the tool answered HTTP {reply.status_code}")
        if reply.status_code >= 400:
            raise ToolFailure("tool_error", f"the tool answered HTTP {reply.status_code}: {reply.text[:200]}")
        if len(reply.content) > spec.max_result_chars:
            raise ToolFailure("result_too_large", f"the tool's reply has {len(reply.content)} bytes, over the "
                                                  f"{spec.max_result_chars} allowed")
        try:
            return orjson.loads(reply.content)
        except orjson.JSONDecodeError as exc:
            raise ToolFailure("invalid_result", f"the tool's reply is not JSON: {exc}") from exc

    async def aclose(self) -> None:
        await self.client.aclose()
