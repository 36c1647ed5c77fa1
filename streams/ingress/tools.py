"""OpenAI's tool calling on the ingress: ``tools`` / ``tool_choice`` in, ``tool_calls`` out, ``role: tool`` back.

Two modes (the pipeline decides, ``workers/tools/modes.py``; the caller may force one):

* **server-executed** — every tool the request names is a registered tool of the caller's tenant (or the request
  names none and the tenant has some): tollway runs the calls in its governed tools stage and answers with the
  final text, ``finish_reason: "stop"``; the calls are listed in the body's ``tollway.steps``;
* **client-executed** — the request defines tools tollway does not run: the answer is ``message.tool_calls`` with
  ``finish_reason: "tool_calls"``; the caller runs them and posts the conversation back with the assistant message
  and one ``role: "tool"`` message per call (``tool_call_id``); that request gets the final answer.

Force a mode with the ``X-Tollway-Tools: server|client`` header or ``{"tollway": {"tools_mode": ...}}`` in the body.
Everything here checks the request before it is published and answers a mistake with an OpenAI-shaped 400 naming the
parameter (``tools[1].function.parameters``, ``messages[3].tool_call_id``, …).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Annotated, Any, Literal

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from schemas.envelope import FunctionTool, Message, ToolCall, ToolsMode
from streams.ingress.errors import HttpError, invalid_request
from workers.tools.modes import conversation_problem

MODE_HEADER = "X-Tollway-Tools"


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore")


class FunctionDefinition(_Part):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str = Field(default="", max_length=4_000)
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _schema(cls, parameters: dict[str, Any]) -> dict[str, Any]:
        if parameters.get("type", "object") != "object":
            raise PydanticCustomError("invalid_value", "must be a JSON Schema of type object")
        try:
            Draft202012Validator.check_schema(parameters)
        except SchemaError as exc:
            raise PydanticCustomError("invalid_value", "is not a valid JSON Schema: {reason}",
                                      {"reason": exc.message}) from exc
        return parameters


class ToolDefinition(_Part):
    type: Literal["function"]
    function: FunctionDefinition


class CalledFunction(_Part):
    name: str = Field(min_length=1, max_length=128)
    arguments: str = "{}"

    @field_validator("arguments")
    @classmethod
    def _json_object(cls, arguments: str) -> str:
        try:
            parsed = orjson.loads(arguments or "{}")
        except orjson.JSONDecodeError as exc:
            raise PydanticCustomError("invalid_value", "must be a JSON object encoded as a string") from exc
        if not isinstance(parsed, dict):
            raise PydanticCustomError("invalid_value", "must be a JSON object encoded as a string")
        return arguments


class ToolCallPart(_Part):
    """One entry of an assistant message's ``tool_calls``."""

    id: str = Field(min_length=1, max_length=128)
    type: Literal["function"] = "function"
    function: CalledFunction


class NamedChoice(_Part):
    class _Name(_Part):
        name: str = Field(min_length=1, max_length=64)

    type: Literal["function"]
    function: _Name


def _choice(value: Any) -> str | NamedChoice:
    """``"none" | "auto" | "required"`` or ``{"type": "function", "function": {"name": …}}`` (one error, one param)."""
    if isinstance(value, str) and value in ("none", "auto", "required"):
        return value
    if isinstance(value, dict):
        try:
            return NamedChoice.model_validate(value)
        except ValidationError:
            pass
    raise PydanticCustomError("invalid_value", "must be 'none', 'auto', 'required' or a named function "
                              "(type 'function' and function.name)")


ToolChoice = Annotated[str | NamedChoice, PlainValidator(_choice)]


def choice_name(choice: ToolChoice | None) -> str:
    if choice is None:
        return "auto"
    return choice.function.name if isinstance(choice, NamedChoice) else choice


def function_tools(tools: list[ToolDefinition] | None) -> list[FunctionTool]:
    return [FunctionTool(name=t.function.name, description=t.function.description, parameters=t.function.parameters)
            for t in tools or []]


def to_tool_calls(parts: list[ToolCallPart] | None) -> list[ToolCall] | None:
    if not parts:
        return None
    return [ToolCall(id=p.id, name=p.function.name, arguments=orjson.loads(p.function.arguments or "{}"))
            for p in parts]


def check_tools(tools: list[ToolDefinition] | None, choice: ToolChoice | None, messages: list[Message], *,
                legacy: Collection[int] = ()) -> None:
    """What pydantic cannot see field by field: unique names, a named choice among them, sound tool messages."""
    seen: set[str] = set()
    for index, tool in enumerate(tools or []):
        if tool.function.name in seen:
            raise invalid_request(f"tools[{index}].function.name: the tool {tool.function.name!r} is defined twice",
                                  param=f"tools[{index}].function.name")
        seen.add(tool.function.name)
    if isinstance(choice, NamedChoice) and choice.function.name not in seen:
        raise invalid_request(f"tool_choice: the tool {choice.function.name!r} is not one of the request's tools",
                              param="tool_choice")
    if choice == "required" and not seen:
        raise invalid_request("tool_choice: 'required' needs tools", param="tool_choice")
    problem = conversation_problem(messages, legacy=legacy)
    if problem is not None:
        _, param, message = problem
        raise invalid_request(f"{param}: {message}", param=param, code="invalid_tool_message")


def mode_of(header: str | None, body_mode: ToolsMode | None) -> ToolsMode:
    """The header wins over the body's ``tollway.tools_mode``; default: decided by the pipeline (auto)."""
    if header is not None:
        value = header.strip().lower()
        if value not in ("auto", "server", "client"):
            raise invalid_request(f"{MODE_HEADER} must be server, client or auto, not {header!r}", param=MODE_HEADER)
        return value  # type: ignore[return-value]
    return body_mode or "auto"


def check_registered(tools: list[FunctionTool], mode: ToolsMode, registered: list[str] | None) -> None:
    """Server mode forced with a tool the tenant has not registered: a 400 now rather than a tool never offered."""
    if mode != "server" or registered is None:
        return
    for index, tool in enumerate(tools):
        if tool.name not in registered:
            raise HttpError(400, f"tools[{index}].function.name: {tool.name!r} is not a registered tool of this "
                            "tenant, so tollway cannot run it (send it client-executed instead)",
                            type_="invalid_request_error", code="unknown_tool",
                            param=f"tools[{index}].function.name")


# ---------------------------------------------------------------------------------------------- the answer
def tool_calls_out(calls: list[ToolCall]) -> list[dict[str, Any]]:
    """``message.tool_calls`` of a completion: arguments as a JSON string, as OpenAI sends them."""
    return [{"id": call.id, "type": "function",
             "function": {"name": call.name, "arguments": orjson.dumps(call.arguments).decode()}} for call in calls]


def tool_call_deltas(calls: list[ToolCall]) -> list[dict[str, Any]]:
    """The streamed form: one delta per call, each with its index."""
    return [{"tool_calls": [{"index": index, **call}]} for index, call in enumerate(tool_calls_out(calls))]
