"""The project's demo MCP server (the official ``mcp`` SDK): a calculator, a search over a tenant's indexed documents
and a ticket desk (lookup, update) over Redis — the same logic as the built-ins, behind the Model Context Protocol.

Run it with ``python -m workers.tools.mcp_server`` (stdio, what a policy's ``mcp_servers`` entry with
``transport: stdio`` launches) or ``… --transport streamable-http --port 8765`` (loopback only), or
``tollway tools mcp-server``. It reads the ordinary ``TOLLWAY_*`` settings: Redis (the tickets, under the topic prefix)
and, for ``search``, the index topic (``tollway index add``) — or ``--documents FILE`` (JSON lines
``{"tenant", "doc_id", "text"}``) to search without Kafka.

The tenant is never the model's to choose: each tool takes a ``tenant`` argument that the tools stage fills in from
the request (``ToolSpec.tenant_argument``), overriding whatever the model sent.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from schemas.errors import ToolFailure
from workers.tools.builtins import Builtins, RedisTicketStore, TicketStore, calculate

_WORD = re.compile(r"[a-z0-9]+")
_INDEX_TTL_S = 30.0


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


@dataclass
class DocumentSearch:
    """Keyword search over each tenant's documents: chunks ranked by the share of the query's words they contain."""

    documents: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # tenant → [(doc_id, text)]

    def add(self, tenant: str, doc_id: str, text: str) -> None:
        self.documents.setdefault(tenant, []).append((doc_id, text))

    def search(self, tenant: str, query: str, k: int) -> list[dict[str, Any]]:
        wanted = _words(query)
        if not wanted:
            return []
        scored = []
        for doc_id, text in self.documents.get(tenant, []):
            share = len(wanted & _words(text)) / len(wanted)
            if share > 0:
                scored.append((share, doc_id, text))
        scored.sort(key=lambda hit: (-hit[0], hit[1]))
        return [{"doc_id": d, "score": round(s, 3), "text": t[:600]} for s, d, t in scored[:k]]


@dataclass
class DemoTools:
    """What the server's tools do, apart from the protocol (unit-tested directly)."""

    tickets: TicketStore
    documents_file: Path | None = None
    _index: DocumentSearch | None = None
    _index_read_at: float = 0.0
    _reading: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def index(self) -> DocumentSearch:
        async with self._reading:  # one read at a time: a search waits for the read under way
            return await self._read()

    async def _read(self) -> DocumentSearch:
        if self._index is not None and time.monotonic() - self._index_read_at < _INDEX_TTL_S:
            return self._index
        found = DocumentSearch()
        if self.documents_file is not None:
            for line in self.documents_file.read_text().splitlines():
                if line.strip():
                    row = orjson.loads(line)
                    found.add(str(row["tenant"]), str(row["doc_id"]), str(row["text"]))
        else:
            from streams.followers.index import read_index  # Kafka only when the index topic is searched
            from streams.settings import get_settings

            for chunk in (await read_index(get_settings())).values():
                found.add(chunk.tenant, chunk.chunk_id, chunk.text)
        self._index, self._index_read_at = found, time.monotonic()
        return found

    async def calculator(self, expression: str) -> dict[str, Any]:
        return {"expression": expression, "result": calculate(expression)}

    async def search(self, tenant: str, query: str, k: int = 3) -> dict[str, Any]:
        hits = (await self.index()).search(tenant, query, max(1, min(k, 10)))
        return {"query": query, "hits": hits}

    async def ticket_lookup(self, tenant: str, ticket_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await Builtins(self.tickets).run("ticket_lookup", {"ticket_id": ticket_id}, tenant,
                                                                   idempotency_key="")
        return result

    async def ticket_update(self, tenant: str, ticket_id: str, status: str) -> dict[str, Any]:
        result: dict[str, Any] = await Builtins(self.tickets).run(
            "ticket_update", {"ticket_id": ticket_id, "status": status}, tenant, idempotency_key="")
        return result


def build_server(tools: DemoTools, *, preload: bool = False) -> MCPServer[Any]:
    @asynccontextmanager
    async def lifespan(_: MCPServer[Any]) -> AsyncIterator[None]:
        # Read the index while the client connects, not inside the first search's deadline.
        task = asyncio.create_task(tools.index()) if preload else None
        yield
        if task is not None:
            task.cancel()

    server: MCPServer[Any] = MCPServer("tollway-demo-tools", version="1", log_level="WARNING", lifespan=lifespan,
                                       instructions="Demo tools of tollway: calculator, search, tickets.")

    # A ToolFailure travels as the tool's error result: "<code>: <message>" (the client maps it back to the code).
    def fail(exc: ToolFailure) -> ToolError:
        return ToolError(f"{exc.code}: {exc}")

    @server.tool(description="Evaluate an arithmetic expression (numbers, + - * / // % **, parentheses).")
    async def calculator(expression: str) -> dict[str, Any]:
        try:
            return await tools.calculator(expression)
        except ToolFailure as exc:
            raise fail(exc) from exc

    @server.tool(description="Search the tenant's indexed documents; returns the best matching passages.")
    async def search(tenant: str, query: str, k: int = 3) -> dict[str, Any]:
        try:
            return await tools.search(tenant, query, k)
        except ToolFailure as exc:
            raise fail(exc) from exc

    @server.tool(description="Look a support ticket up by id.")
    async def ticket_lookup(tenant: str, ticket_id: str) -> dict[str, Any]:
        try:
            return await tools.ticket_lookup(tenant, ticket_id)
        except ToolFailure as exc:
            raise fail(exc) from exc

    @server.tool(description="Set a support ticket's status (open, pending, resolved, closed).")
    async def ticket_update(tenant: str, ticket_id: str, status: str) -> dict[str, Any]:
        try:
            return await tools.ticket_update(tenant, ticket_id, status)
        except ToolFailure as exc:
            raise fail(exc) from exc

    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workers.tools.mcp_server", description=__doc__.split("\n")[0])
    parser.add_argument("--transport", choices=("stdio", "streamable-http"), default="stdio")
    parser.add_argument("--host", default="127.0.0.1", help="streamable-http: loopback only")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--documents", type=Path, default=None, help="JSON lines to search instead of the index topic")
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the demo MCP server listens on loopback only")
    from streams.runtime.connections import redis_client
    from streams.settings import get_settings

    settings = get_settings()
    client = redis_client(settings, timeout_ms=max(settings.redis_timeout_ms, 1000))
    server = build_server(DemoTools(RedisTicketStore(client, prefix=settings.topic_prefix), args.documents),
                          preload=True)
    if args.transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host=args.host, port=args.port)


if __name__ == "__main__":
    main()
