"""Tools of MCP servers (the official ``mcp`` SDK), over stdio or streamable HTTP.

One connection per server and worker (:class:`McpSessions`): a stdio server is launched once and kept, not per call.
Each connection is owned by a task of its own, because the SDK's transports are anyio task groups that must be
entered and left by the same task; calls from the stage's tasks go through the open session. A connection that
fails (the server process died, the endpoint went away) is dropped and reopened by the next call.

Every failure is a :class:`ToolFailure` the model and the audit see: ``tool_unavailable`` (cannot connect, the
connection broke), ``tool_timeout`` (connecting or calling took longer than the call's deadline), ``tool_error``
(the tool reported an error; a ``code: message`` error from our own demo server keeps its code) and
``invalid_result`` (nothing usable in the reply).
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from typing import Any, Protocol

import orjson
from mcp import Client, MCPError, StdioServerParameters
from mcp_types import CONNECTION_CLOSED, CallToolResult, TextContent

from schemas.errors import ToolFailure
from schemas.policy import McpServerSpec

log = logging.getLogger(__name__)
# Codes our demo server puts in front of an error (workers/tools/mcp_server.py) that keep their meaning here.
_KEPT_CODES = frozenset({"invalid_arguments", "not_found", "tool_unavailable", "unknown_tool"})
_CODED = re.compile(r"^(?:Error executing tool [^:]+: )?([a-z_]+): (.*)$", re.DOTALL)


class McpTools(Protocol):
    async def run(self, name: str, server: McpServerSpec, tool: str, arguments: dict[str, Any], *,
                  timeout_s: float) -> Any: ...

    async def aclose(self) -> None: ...


class NoMcpTools:
    """The slot's default: MCP servers are connected by the stage's wiring."""

    async def run(self, name: str, server: McpServerSpec, tool: str, arguments: dict[str, Any], *,
                  timeout_s: float) -> Any:
        raise ToolFailure("tool_unavailable", "no MCP client is configured for tools in this worker")

    async def aclose(self) -> None:
        return None


def result_value(result: CallToolResult) -> Any:
    """What the model reads from an MCP tool's reply: its structured content, else its text (JSON when it parses)."""
    texts = [block.text for block in result.content if isinstance(block, TextContent)]
    if result.is_error:
        message = "\n".join(texts) or "the tool reported an error without a message"
        coded = _CODED.match(message)
        if coded and coded.group(1) in _KEPT_CODES:
            raise ToolFailure(coded.group(1), coded.group(2)[:500])
        raise ToolFailure("tool_error", message[:500])
    if result.structured_content is not None:
        return result.structured_content
    if not result.content:
        raise ToolFailure("invalid_result", "the MCP tool returned no content")
    if len(texts) != len(result.content):
        kinds = sorted({block.type for block in result.content})
        raise ToolFailure("invalid_result", f"the MCP tool returned content the model cannot read: {kinds}")
    if len(texts) == 1:
        try:
            return orjson.loads(texts[0])
        except orjson.JSONDecodeError:
            return texts[0]
    return texts


class _Connection:
    def __init__(self, name: str, spec: McpServerSpec, env: dict[str, str]) -> None:
        self.name = name
        self.spec = spec
        self.ready: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
        self.closing = asyncio.Event()
        self.dead = False
        self.task = asyncio.create_task(self._own(env), name=f"mcp:{name}")

    def _target(self, env: dict[str, str]) -> StdioServerParameters | str:
        if self.spec.transport == "streamable-http":
            assert self.spec.url is not None  # validated by the policy document
            return self.spec.url
        command, *args = self.spec.command
        return StdioServerParameters(command=sys.executable if command == "python" else command, args=args,
                                     env={**env, **self.spec.env})

    async def _own(self, env: dict[str, str]) -> None:
        try:
            async with Client(self._target(env)) as client:
                self.ready.set_result(client)
                await self.closing.wait()
        except BaseException as exc:  # any end of the transport ends this connection
            if not self.ready.done():
                self.ready.set_exception(ToolFailure("tool_unavailable", f"MCP server {self.name!r} could not be "
                                                                         f"reached: {type(exc).__name__}: {exc}"))
            elif not self.closing.is_set():
                log.warning("MCP server %r: the connection ended: %r", self.name, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self.dead = True

    async def call(self, tool: str, arguments: dict[str, Any], timeout_s: float) -> Any:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            client = await asyncio.wait_for(asyncio.shield(self.ready), timeout_s)
        except TimeoutError as exc:
            raise ToolFailure("tool_timeout", f"MCP server {self.name!r} was not connected within "
                                              f"{timeout_s * 1000:.0f} ms") from exc
        left_s = timeout_s - (loop.time() - started)
        if left_s <= 0:
            raise ToolFailure("tool_timeout", f"no result within {timeout_s * 1000:.0f} ms")
        try:
            result = await asyncio.wait_for(client.call_tool(tool, arguments, read_timeout_seconds=left_s), left_s)
        except TimeoutError as exc:
            raise ToolFailure("tool_timeout", f"no result within {timeout_s * 1000:.0f} ms") from exc
        except ToolFailure:
            raise
        except Exception as exc:
            if isinstance(exc, MCPError) and exc.error.code == CONNECTION_CLOSED:
                self.dead = True  # the server went away: the next call opens a new connection
                self.closing.set()
            if self.dead:
                raise ToolFailure("tool_unavailable", f"the connection to MCP server {self.name!r} broke: "
                                                      f"{type(exc).__name__}: {exc}") from exc
            raise ToolFailure("tool_error", f"{type(exc).__name__}: {exc}"[:500]) from exc
        return result_value(result)

    async def close(self) -> None:
        self.closing.set()
        try:
            await asyncio.wait_for(self.task, 5.0)
        except (TimeoutError, asyncio.CancelledError):
            self.task.cancel()
        except BaseException:  # ended already; its failure was logged
            pass


class McpSessions:
    """The worker's MCP connections by server name; ``env``: the variables a launched stdio server inherits (the
    worker's settings, so the server uses the same Redis and topic prefix)."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = dict(env or {})
        self.connections: dict[str, _Connection] = {}

    def connect(self, name: str, server: McpServerSpec) -> _Connection:
        """The open (or opening) connection to ``name``; a new one when the last one ended or its spec changed."""
        current = self.connections.get(name)
        if current is not None and not current.dead and current.spec == server:
            return current
        if current is not None:
            asyncio.get_running_loop().create_task(current.close())
        fresh = self.connections[name] = _Connection(name, server, self.env)
        return fresh

    async def run(self, name: str, server: McpServerSpec, tool: str, arguments: dict[str, Any], *,
                  timeout_s: float) -> Any:
        return await self.connect(name, server).call(tool, arguments, timeout_s)

    async def warm(self, servers: dict[str, McpServerSpec]) -> list[str]:
        """Connect to every server now (a worker's start), each within its ``connect_timeout_ms``, so the first
        call's deadline is not spent launching a process; returns the servers that could not be reached (their
        calls will try again)."""
        async def one(name: str, server: McpServerSpec) -> str | None:
            try:
                await asyncio.wait_for(asyncio.shield(self.connect(name, server).ready),
                                       server.connect_timeout_ms / 1000)
            except (TimeoutError, ToolFailure) as exc:
                log.warning("MCP server %r is not reachable yet: %s", name, exc or "timed out")
                return name
            return None

        failed = await asyncio.gather(*(one(n, s) for n, s in servers.items()))
        return [name for name in failed if name is not None]

    async def aclose(self) -> None:
        connections, self.connections = list(self.connections.values()), {}
        await asyncio.gather(*(c.close() for c in connections))
