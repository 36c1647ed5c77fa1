"""OpenAI's chat-completions wire format on tollway's side: the request body, its messages, the completion, the
server-sent chunks and the error shape ``{"error": {"message", "type", "param", "code"}}``.

Tollway's extras travel where OpenAI clients ignore them: ``x-tollway-*`` and ``Server-Timing`` headers, and a
``tollway`` field in the body (request options in, request id, status, cost, cache, latency out).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from schemas.envelope import CacheControl, Message, Tier, ToolsMode
from schemas.response import Response
from streams.ingress.errors import HttpError, http_status_for
from streams.ingress.tools import (
    ToolCallPart,
    ToolChoice,
    ToolDefinition,
    to_tool_calls,
    tool_call_deltas,
    tool_calls_out,
)


# ---------------------------------------------------------------------------------------------- the request body
class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TollwayOptions(_Body):
    model_config = ConfigDict(extra="forbid")
    tier: Tier | None = None
    budget_ms: int | None = Field(default=None, ge=1, le=86_400_000)
    task_id: str | None = Field(default=None, max_length=200)
    session_id: str | None = Field(default=None, max_length=200)
    quality_tier: str | None = None
    cache: CacheControl | None = None
    tools_mode: ToolsMode | None = None  # who runs the tools (streams/ingress/tools.py); the header wins


_ROLES: dict[str, Literal["system", "user", "assistant", "tool"]] = {
    "system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool",
    "function": "tool"}
OpenAIRole = Literal["system", "developer", "user", "assistant", "tool", "function"]


def _text_of(content: Any) -> str:
    """A message's content as one text: a string, null (an assistant turn with tool calls only) or a list of text
    parts. Anything else is refused here, at parsing, before an idempotency key is claimed."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise PydanticCustomError("invalid_type", "must be a string, null or a list of text parts")
    texts = []
    for index, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            raise PydanticCustomError("invalid_value", "content[{index}]: only text content parts are supported",
                                      {"index": index})
        text = part.get("text")
        if not isinstance(text, str):
            raise PydanticCustomError("invalid_type", "content[{index}].text must be a string", {"index": index})
        texts.append(text)
    return "\n".join(texts)


class ChatMessage(_Body):
    """One OpenAI message; ``content`` arrives as the joined text (see :func:`_text_of`)."""

    role: OpenAIRole
    content: Annotated[str, BeforeValidator(_text_of)] = ""
    tool_calls: list[ToolCallPart] | None = Field(default=None, max_length=128)  # an assistant turn that asked
    tool_call_id: str | None = Field(default=None, max_length=128)  # a tool message: the call it answers


class ChatBody(_Body):
    model: str = "auto"
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=32_768)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=32_768)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    response_format: dict[str, Any] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(default=1, ge=1, le=1)
    tools: list[ToolDefinition] | None = Field(default=None, max_length=128)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None  # accepted; the model may ask for several calls per turn either way
    tollway: TollwayOptions = Field(default_factory=TollwayOptions)


def to_messages(raw: list[ChatMessage]) -> list[Message]:
    """OpenAI messages → ours: ``developer`` as ``system``, ``function`` as ``tool``, tool calls with their arguments
    parsed (parsing checked the rest)."""
    return [Message(role=_ROLES[item.role], content=item.content, tool_calls=to_tool_calls(item.tool_calls),
                    tool_call_id=item.tool_call_id) for item in raw]


def param_of(loc: tuple[int | str, ...]) -> str | None:
    """A pydantic error location as OpenAI names a parameter: ``messages[0].content``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def invalid_body(exc: ValidationError) -> HttpError:
    """The first thing wrong with a request body or the envelope it became, as a 400."""
    first = exc.errors()[0]
    param = param_of(tuple(first["loc"]))
    message = f"{param}: {first['msg']}" if param else f"invalid request body: {first['msg']}"
    return HttpError(400, message, type_="invalid_request_error", code="invalid_request", param=param)


def parse_body(raw: bytes) -> ChatBody:
    try:
        return ChatBody.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid_body(exc) from exc


# ---------------------------------------------------------------------------------------------- errors
def error_body(status: int, message: str, type_: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code or None}}


def json_response(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)


def error_response(exc: HttpError) -> web.Response:
    headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))} if exc.retry_after_s else None
    return json_response(error_body(exc.status, exc.message, exc.type, exc.code, exc.param), status=exc.status,
                         headers=headers)


def error_from_response(response: Response) -> web.Response:
    status, type_ = http_status_for(response)
    message = response.message or f"request {response.status.value}" + (f" ({response.code})" if response.code else "")
    body = error_body(status, message, type_, response.code or response.status.value)
    body["tollway"] = tollway_extension(response)
    return json_response(body, status=status, headers=tollway_headers(response))


# ---------------------------------------------------------------------------------------------- the answer
def tollway_headers(response: Response) -> dict[str, str]:
    total_ms = max(0, response.completed_at_ns - response.created_at_ns) / 1e6
    headers = {
        "x-tollway-request-id": response.request_id,
        "x-tollway-status": response.status.value + (f"; code={response.code}" if response.code else ""),
        "x-tollway-cost-micros": str(response.cost_micros),
        "x-tollway-latency-ms": f"{total_ms:.2f}",
        "x-tollway-stage-latency": ", ".join(f"{h.stage};queue={h.queue_ms:.2f};service={h.service_ms:.2f}"
                                             for h in response.hops),
        "Server-Timing": ", ".join(f"{h.stage};dur={h.queue_ms + h.service_ms:.2f}" for h in response.hops),
    }
    if response.cache:
        headers["x-tollway-cache"] = response.cache
    if response.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(response.retry_after_s)))
    return headers


def tollway_extension(response: Response) -> dict[str, Any]:
    return {"request_id": response.request_id, "status": response.status.value, "code": response.code or None,
            "cost_micros": response.cost_micros, "saved_micros": response.saved_micros, "cache": response.cache,
            "latency_ms": round(max(0, response.completed_at_ns - response.created_at_ns) / 1e6, 3),
            "hops": [h.model_dump() for h in response.hops],
            **({"steps": [s.model_dump() for s in response.steps]} if response.steps else {})}


def usage_of(response: Response) -> dict[str, Any]:
    usage = response.usage
    return {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens}}


def message_of(response: Response) -> dict[str, Any]:
    """The assistant message: the answer, or (client-executed tools) the calls the caller is to run."""
    if response.requested_tool_calls:
        return {"role": "assistant", "content": None, "tool_calls": tool_calls_out(response.requested_tool_calls)}
    return {"role": "assistant", "content": response.answer or ""}


def completion_body(response: Response, body: ChatBody) -> dict[str, Any]:
    """A ``chat.completion`` object for a successful response."""
    return {
        "id": f"chatcmpl-{response.request_id}", "object": "chat.completion",
        "created": response.created_at_ns // 1_000_000_000, "model": response.model or body.model,
        "choices": [{"index": 0, "message": message_of(response), "logprobs": None,
                     "finish_reason": response.finish_reason}],
        "usage": usage_of(response), "system_fingerprint": None, "tollway": tollway_extension(response),
    }


SSE_CHUNK_WORDS = 8


def sse_events(response: Response, body: ChatBody) -> list[dict[str, Any]]:
    """The final answer as ``chat.completion.chunk`` events: role, the content in word chunks (or one delta per
    requested tool call), the finish reason, [usage]."""
    base = {"id": f"chatcmpl-{response.request_id}", "object": "chat.completion.chunk",
            "created": response.created_at_ns // 1_000_000_000, "model": response.model or body.model,
            "system_fingerprint": None}

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}

    words = (response.answer or "").split(" ")
    pieces = [" ".join(words[i:i + SSE_CHUNK_WORDS]) + (" " if i + SSE_CHUNK_WORDS < len(words) else "")
              for i in range(0, len(words), SSE_CHUNK_WORDS)]
    if response.requested_tool_calls:
        events = [chunk({"role": "assistant", "content": None})]
        events += [chunk(delta) for delta in tool_call_deltas(response.requested_tool_calls)]
    else:
        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": piece}) for piece in pieces if piece]
    events.append(chunk({}, response.finish_reason, tollway=tollway_extension(response)))
    if (body.stream_options or {}).get("include_usage"):
        events.append({**base, "choices": [], "usage": usage_of(response)})
    return events
