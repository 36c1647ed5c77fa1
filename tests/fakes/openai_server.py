"""A local fake OpenAI-compatible server (aiohttp) with scriptable failures, for the ``openai`` backend's tests.

Behaviours are scripted per model name, one per request, in order; when a model's script runs out it answers
``ok``. ``ok`` echoes the last user message and reports usage (prompt_tokens, cached_tokens, completion_tokens);
``tool_calls`` asks for the request's first tool with ``{"q": <last user message>}``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
import pytest
from aiohttp import web

Behaviour = Literal["ok", "500", "429", "429-date", "slow", "malformed", "truncated", "400", "tool_calls"]


@dataclass
class FakeOpenAI:
    retry_after: str = "1"
    slow_s: float = 5.0
    cached_tokens: int = 0
    scripts: dict[str, deque[Behaviour]] = field(default_factory=lambda: defaultdict(deque))
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    base_url: str = ""
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    def script(self, model: str, *behaviours: Behaviour) -> None:
        self.scripts[model].extend(behaviours)

    def calls_for(self, model: str) -> int:
        return sum(1 for body in self.received if body.get("model") == model)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.received.append(body)
        self.headers.append(dict(request.headers))
        script = self.scripts[body["model"]]
        behaviour: Behaviour = script.popleft() if script else "ok"
        if behaviour == "500":
            return web.Response(status=500, text="upstream exploded")
        if behaviour == "400":
            return web.json_response({"error": {"message": "bad request"}}, status=400)
        if behaviour == "429":
            return web.json_response({"error": {"message": "slow down"}}, status=429,
                                     headers={"Retry-After": self.retry_after})
        if behaviour == "429-date":
            return web.json_response({"error": {"message": "slow down"}}, status=429,
                                     headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
        if behaviour == "slow":
            with contextlib.suppress(TimeoutError):  # released at teardown so the server can stop
                await asyncio.wait_for(self._release.wait(), self.slow_s)
        if behaviour == "malformed":
            return web.Response(status=200, body=b'{"choices": "not a list"', content_type="application/json")
        if behaviour == "truncated":
            response = web.StreamResponse(status=200, headers={"Content-Type": "application/json",
                                                               "Content-Length": "4096"})
            await response.prepare(request)
            await response.write(b'{"choices": [{"message": {"content": "cut')
            assert request.transport is not None
            request.transport.close()
            return response
        prompt = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
        answer = f"fake answer to: {prompt}"
        if behaviour == "tool_calls":
            call = {"id": "call_fake", "type": "function",
                    "function": {"name": body["tools"][0]["function"]["name"],
                                 "arguments": orjson.dumps({"q": prompt}).decode()}}
            return web.json_response({
                "id": "chatcmpl-fake", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                             "finish_reason": "tool_calls"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})
        return web.json_response({
            "id": "chatcmpl-fake", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10 * len(body["messages"]), "completion_tokens": len(answer.split()),
                      "total_tokens": 0, "prompt_tokens_details": {"cached_tokens": self.cached_tokens}},
        })

    def release(self) -> None:
        self._release.set()


@pytest.fixture
async def openai_server() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.base_url = f"http://127.0.0.1:{port}/v1"
    yield fake
    fake.release()
    await runner.cleanup()
