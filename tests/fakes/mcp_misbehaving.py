"""An MCP server whose tools misbehave, for the tools stage's bad-output tests (stdio; ``python -m
tests.fakes.mcp_misbehaving``): slow, raising, oversized, unreadable (an image), text that is not JSON, and one that
kills its own process mid-call."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp_types import ImageContent

server: MCPServer[Any] = MCPServer("tollway-misbehaving", version="1", log_level="CRITICAL")


@server.tool()
async def slow(seconds: float) -> dict[str, Any]:
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@server.tool()
async def raising(text: str) -> dict[str, Any]:
    raise RuntimeError(f"the tool broke on {text!r}")


@server.tool()
async def huge(chars: int) -> dict[str, Any]:
    return {"blob": "x" * chars}


@server.tool()
async def picture(text: str) -> ImageContent:
    return ImageContent(type="image", data="iVBORw0KGgo=", mime_type="image/png")


@server.tool()
async def prose(text: str) -> str:
    return f"not JSON: {text}"


@server.tool()
async def die(text: str) -> dict[str, Any]:
    os._exit(9)


if __name__ == "__main__":
    server.run("stdio")
