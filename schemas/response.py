"""Events published at the edges: the response a producer waits for, and the dead-letter record."""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from schemas.envelope import (
    SCHEMA_VERSION,
    Envelope,
    Evaluation,
    RouteRecord,
    Status,
    ToolCall,
    Usage,
    document_of,
    json_fields,
)


class HopSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stage: str
    queue_ms: float
    service_ms: float
    remaining_budget_ms: float = 0.0
    batch_size: int = 1


def _empty(value: object) -> bool:
    return value == []  # fields added after v1 stay out of a response that does not use them


class StepSummary(BaseModel):
    """One step of an agent loop: a model turn (``kind="model"``, its cost) or one tool call (its decision, cost and
    latency). Model turn ``n`` asked for the tool calls of step ``n``."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["model", "tool"]
    step: int
    name: str
    status: str = "ok"
    code: str = ""
    cost_micros: int = 0
    latency_ms: float = 0.0
    call_id: str | None = None


def agent_steps(env: Envelope) -> list[StepSummary]:
    """The model turns and tool calls of an agent loop, in the order they happened (empty without one)."""
    if env.tools is None or not (env.tools.calls or env.tools.pending):
        return []  # no tool was asked for: not an agent step, however many tools were offered
    turns = env.model.step_cost_micros if env.model is not None else []
    model_name = env.model.model if env.model is not None else ""
    steps: list[StepSummary] = []
    for index, cost in enumerate(turns):
        steps.append(StepSummary(kind="model", step=index + 1, name=model_name, cost_micros=cost))
        steps += [StepSummary(kind="tool", step=c.step, name=c.name, status=c.status, code=c.code,
                              cost_micros=c.cost_micros, latency_ms=c.latency_ms, call_id=c.call_id)
                  for c in env.tools.calls if c.step == index + 1]
    return steps


class Response(BaseModel):
    """The answer (or the reason there is none) for one request, keyed by request_id on ``tollway.responses``."""

    model_config = ConfigDict(extra="forbid")
    schema_version: Literal[1] = SCHEMA_VERSION
    kind: Literal["response"] = "response"
    request_id: str
    tenant: str
    status: Status
    code: str = ""
    message: str = ""
    retry_after_s: float | None = None
    answer: str | None = None
    model: str | None = None
    usage: Usage = Field(default_factory=Usage)
    cost_micros: int = 0  # everything the request cost: the model's turns plus its tool calls
    tool_cost_micros: int = 0  # of which tool calls (an agent loop's tools, priced per call)
    tool_calls: int = 0
    saved_micros: int = 0
    cache: str | None = None
    hops: list[HopSummary] = Field(default_factory=list)
    created_at_ns: int = 0
    completed_at_ns: int = 0
    replay: bool = False  # true when this response repeats one already delivered (redelivery after a crash)
    task_id: str | None = None  # the task (agent run, ticket) the request belongs to: the ledger's cost per outcome
    deadline_at_ns: int = 0  # the request's deadline: the ledger's "SLO met" is completed_at_ns <= deadline_at_ns
    evaluation: Evaluation | None = None  # online evaluators' verdicts, when the request was sampled
    # the auto tier's features and choice: what the learning router learns from
    route: RouteRecord | None = Field(default=None, exclude_if=lambda v: v is None)
    stage: str = ""  # the stage that ended the request
    # The deciding stage's signature over what the ledger counts (workers/decisions.py): the ledger counts only
    # responses whose signature verifies.
    key_id: str | None = None
    signature: str | None = None
    # Client-executed tools: the calls the model asked for, which the caller runs and answers with ``role: tool``
    # messages (OpenAI's finish_reason "tool_calls"); empty otherwise.
    requested_tool_calls: list[ToolCall] = Field(default_factory=list, exclude_if=_empty)
    steps: list[StepSummary] = Field(default_factory=list, exclude_if=_empty)  # an agent loop's turns and calls
    # A verified cascade whose cheaper answer failed: that call's model and cost (part of cost_micros), booked on
    # the ledger's ``cascade:<model>`` row.
    cascade_model: str | None = Field(default=None, exclude_if=lambda v: v is None)
    cascade_cost_micros: int = Field(default=0, exclude_if=lambda v: v == 0)

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.requested_tool_calls else "stop"

    @classmethod
    def from_envelope(cls, env: Envelope, *, completed_at_ns: int) -> Response:
        return cls.model_validate(response_fields(env, completed_at_ns=completed_at_ns))


def response_fields(env: Envelope, *, completed_at_ns: int) -> dict[str, Any]:
    """The response to ``env`` as plain data: every field of :class:`Response`, in its order, each value of the type
    the response holds (hops as dicts in HopSummary's order) — validating it gives ``Response.from_envelope``, writing
    it (``response_bytes``) gives that response's bytes (tests/streams/runtime/test_codec_fast_path.py)."""
    outcome = env.outcome
    assert outcome is not None, "a response needs a terminal outcome"
    model, tools, cache = env.model, env.tools, env.cache
    hops = []
    for h in env.hops:
        queue_ms, service_ms = h.rounded_ms()
        hops.append({"stage": h.stage, "queue_ms": queue_ms, "service_ms": service_ms,
                     "remaining_budget_ms": round(h.remaining_budget_ms, 1), "batch_size": h.batch_size})
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "response",
        "request_id": env.request_id,
        "tenant": env.tenant,
        "status": outcome.status,
        "code": outcome.code,
        "message": outcome.message,
        "retry_after_s": outcome.retry_after_s,
        "answer": env.answer,
        "model": model.model if model else None,
        "usage": model.usage if model else Usage(),
        "cost_micros": (model.cost_micros if model else 0) + (tools.cost_micros if tools else 0),
        "tool_cost_micros": tools.cost_micros if tools else 0,
        "tool_calls": len(tools.calls) if tools else 0,
        "saved_micros": cache.saved_micros if cache else 0,
        "cache": cache.outcome if cache else None,
        "hops": hops,
        "created_at_ns": env.created_at_ns,
        "completed_at_ns": completed_at_ns,
        "replay": False,
        "task_id": env.request.task_id,
        "deadline_at_ns": env.deadline_at_ns,
        "evaluation": env.postprocess.evaluation if env.postprocess else None,
        "route": model.learn if model else None,
        "stage": outcome.stage,
        "key_id": outcome.key_id,
        "signature": outcome.signature,
        "requested_tool_calls": list(tools.pending) if tools is not None and tools.mode == "client" else [],
        "steps": agent_steps(env),
        "cascade_model": model.cascade_model if model else None,
        "cascade_cost_micros": model.cascade_cost_micros if model else 0,
    }


def response_bytes(env: Envelope, *, completed_at_ns: int) -> bytes:
    """The runner's path: the bytes of ``Response.from_envelope(env, …)`` written from its fields, without validating
    the response (its values come from the validated envelope; validating ~30 fields and every hop again cost more
    than writing them)."""
    fields = response_fields(env, completed_at_ns=completed_at_ns)
    try:
        return orjson.dumps(document_of(Response, fields), default=json_fields)
    except orjson.JSONEncodeError:
        response = Response.from_envelope(env, completed_at_ns=completed_at_ns)
        return response.__pydantic_serializer__.to_json(response)


class DeadLetter(BaseModel):
    """What a stage could not process: the reason, where it came from, and the original bytes (base64)."""

    model_config = ConfigDict(extra="forbid")
    schema_version: Literal[1] = SCHEMA_VERSION
    kind: Literal["deadletter"] = "deadletter"
    reason: str
    error: str
    stage: str
    worker_id: str
    source_topic: str
    source_partition: int
    source_offset: int
    request_id: str | None = None
    tenant: str | None = None
    original_b64: str
    original_size: int
    dead_lettered_at_ns: int
