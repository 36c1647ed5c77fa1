"""The ``openai`` backend: any OpenAI-compatible ``/v1/chat/completions`` (vLLM, TGI, Ollama, llama.cpp, OpenAI).

One HTTP request per call (the chat API takes one conversation), all of a batch's calls in flight at once on one
pooled aiohttp session (httpx's pool scanned every connection on every request: ~16 % of a co-located worker's CPU
at 40 req/s in bench/gateway_bench.py's profile, py-spy). Each request's timeout is the call's ``timeout_s`` (what
is left of its latency budget).
Errors are converted where they enter: 429 → :class:`RateLimitedByBackend` with Retry-After (seconds or an HTTP
date), 5xx / timeouts / broken or malformed bodies → retryable :class:`BackendError`, other 4xx → non-retryable.
Usage comes from the response (``prompt_tokens``, ``prompt_tokens_details.cached_tokens``, ``completion_tokens``).
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from dataclasses import replace
from typing import Any

import aiohttp
import orjson
from pydantic import SecretStr

from schemas.envelope import FunctionTool, Message, ToolCall, Usage
from schemas.errors import BackendError, ConfigError, RateLimitedByBackend
from workers.backends.base import ModelCall, ModelReply, context_prompt


def parse_retry_after(value: str | None, *, now_s: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now_s is None else now_s))


class OpenAICompatBackend:
    def __init__(self, name: str, base_url: str, *, api_key: SecretStr | None = None, api_key_required: bool = False,
                 timeout_s: float = 60.0, session: aiohttp.ClientSession | None = None) -> None:
        if api_key_required and api_key is None:
            raise ConfigError(f"model backend {name!r} needs an API key: set TOLLWAY_MODEL_API_KEY")
        self.name = name
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key.get_secret_value()}"
        self._session = session  # made on first use: a session belongs to the running event loop
        self._owns_session = session is None
        self._timeout_s = timeout_s

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256, ttl_dns_cache=300),
                                                  raise_for_status=False)
            self._owns_session = True
        return self._session

    async def complete(self, requests: list[ModelCall]) -> list[ModelReply]:
        return list(await asyncio.gather(*(self._one(call) for call in requests)))

    async def aclose(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()

    async def _one(self, call: ModelCall) -> ModelReply:
        try:
            reply = await self._post(call)
            # Self-consistency: ``n`` asked for the further samples; a server that ignores ``n`` gets one more call
            # per missing sample (a different seed), each billed.
            for k in range(len(reply["alternatives"]) + 1, call.samples):
                extra = await self._post(replace(call, samples=1, seed=call.seed + k))
                reply["alternatives"].append(extra["text"])
                reply["usage"] = reply["usage"] + extra["usage"]
            return ModelReply(call.request_id, **reply)
        except BackendError as exc:
            return ModelReply(call.request_id, error=exc)

    async def _post(self, call: ModelCall) -> dict[str, Any]:
        messages = chat_messages(call)
        if call.passages:
            messages.insert(0, {"role": "system", "content": context_prompt(call.passages)})
        body: dict[str, Any] = {"model": call.model, "messages": messages, "max_tokens": call.max_tokens,
                                "temperature": call.temperature}
        if call.samples > 1:
            body["n"] = call.samples
        if call.samples > 1 or call.seed:
            body["seed"] = call.seed
        if call.tools:
            body["tools"] = [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                               "parameters": t.parameters}}
                             for t in call.tool_definitions or [FunctionTool(name=n) for n in call.tools]]
        timeout = min(call.timeout_s, self._timeout_s)
        try:
            async with self._client().post(self.url, data=orjson.dumps(body), headers=self._headers,
                                           timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                status, content = response.status, await response.read()
                retry_after_header = response.headers.get("retry-after")
        except TimeoutError as exc:
            raise BackendError(f"{self.name}: no reply within {timeout * 1000:.0f} ms") from exc
        except aiohttp.ClientError as exc:  # connection refused, reset, truncated body (ClientPayloadError) …
            raise BackendError(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        if status == 429:
            retry_after = parse_retry_after(retry_after_header)
            raise RateLimitedByBackend(f"{self.name}: HTTP 429 (rate limited)", retry_after_s=retry_after)
        if status >= 500:
            raise BackendError(f"{self.name}: HTTP {status}")
        if status >= 400:
            raise BackendError(f"{self.name}: HTTP {status}: {content[:200].decode(errors='replace')}",
                               retryable=False)
        return _parse_completion(self.name, content)


def _wire(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["content"] = message.content or None
        out["tool_calls"] = [{"id": c.id, "type": "function",
                              "function": {"name": c.name, "arguments": orjson.dumps(c.arguments).decode()}}
                             for c in message.tool_calls]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def chat_messages(call: ModelCall) -> list[dict[str, Any]]:
    """The chat in OpenAI's shape: the session's memory, the caller's messages, then the tools stage's results of
    this request (per step, the assistant turn that asked and one tool message per call) that are not already in
    the caller's messages (client-executed results are)."""
    messages = [_wire(m) for m in [*call.history, *call.messages]]
    answered = {m.tool_call_id for m in call.messages if m.tool_call_id}
    pending = [r for r in call.tool_results if r.call_id not in answered]
    for step in sorted({r.step for r in pending}):
        records = [r for r in pending if r.step == step]
        messages.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": r.call_id, "type": "function", "function": {"name": r.name, "arguments": "{}"}}
            for r in records]})
        messages += [{"role": "tool", "tool_call_id": r.call_id, "content": r.content} for r in records]
    return messages


def _tool_calls(message: dict[str, Any]) -> list[ToolCall]:
    calls = []
    for raw in message.get("tool_calls") or []:
        arguments = orjson.loads(raw["function"].get("arguments") or "{}")
        if not isinstance(arguments, dict):
            raise ValueError("tool call arguments are not a JSON object")
        calls.append(ToolCall(id=str(raw["id"]), name=str(raw["function"]["name"]), arguments=arguments))
    return calls


def _parse_completion(name: str, content: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(content)
        choice = data["choices"][0]
        text = choice["message"]["content"] or ""
        usage = data.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        return {
            "text": str(text),
            "alternatives": [str(c["message"]["content"] or "") for c in data["choices"][1:]],
            "tool_calls": _tool_calls(choice["message"]),
            "finish_reason": str(choice.get("finish_reason") or "stop"),
            "usage": Usage(input_tokens=int(usage.get("prompt_tokens", 0)),
                           cached_input_tokens=int(details.get("cached_tokens") or 0),
                           output_tokens=int(usage.get("completion_tokens", 0))),
        }
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise BackendError(f"{name}: malformed completion ({type(exc).__name__}: {str(exc)[:100]})") from exc
