"""The model backend slot: one Protocol, batch-shaped, so a batch-capable backend serves many requests per call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from schemas.envelope import FunctionTool, Message, Passage, ToolCall, ToolCallRecord, Usage
from schemas.errors import BackendError
from workers.routing.catalog import LatencyProfile


@dataclass(frozen=True)
class ModelCall:
    """One request to a model. ``messages`` are the caller's chat; ``passages`` the retrieved context."""

    request_id: str
    model: str  # the name the backend knows the model by
    messages: list[Message]
    passages: list[Passage] = field(default_factory=list)
    max_tokens: int = 256
    temperature: float = 0.0
    timeout_s: float = 30.0  # what is left of the request's latency budget
    latency: LatencyProfile | None = None  # the catalog entry's profile (the local backend can emulate it)
    # Agent loops: the tools the model may ask for (names; empty: answer directly), and what earlier tool calls of
    # this request returned (their ``content``: a result's JSON, or a structured error).
    tools: list[str] = field(default_factory=list)
    tool_results: list[ToolCallRecord] = field(default_factory=list)
    # The session's earlier turns (conversation memory, oldest first), tool calls and results included.
    history: list[Message] = field(default_factory=list)
    # The offered tools' definitions for a backend that needs them (OpenAI's ``tools``): the caller's own, or the
    # registered tool's name alone (its arguments are checked against the registry by the tools stage).
    tool_definitions: list[FunctionTool] = field(default_factory=list)
    # Self-consistency (a verified cascade's check): how many samples to draw, and the seed of the first; the reply's
    # ``alternatives`` hold the samples after the first, and its usage covers them all (every sample is billed).
    samples: int = 1
    seed: int = 0


@dataclass(frozen=True)
class ModelReply:
    """The answer to one :class:`ModelCall`, or the error that call alone met (its neighbours may have passed)."""

    request_id: str
    text: str = ""
    usage: Usage = field(default_factory=Usage)
    finish_reason: str = "stop"  # "tool_calls" when the model asks for tools instead of answering
    error: BackendError | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    alternatives: list[str] = field(default_factory=list)  # the further samples when ``samples`` > 1

    @property
    def ok(self) -> bool:
        return self.error is None


class ModelBackend(Protocol):
    """Completes a list of calls; one reply per call, in order. Raises :class:`BackendError` when the whole call
    failed (connection refused, batch timeout); per-request failures come back as ``ModelReply.error``."""

    name: str

    async def complete(self, requests: list[ModelCall]) -> list[ModelReply]: ...

    async def aclose(self) -> None: ...


def context_prompt(passages: list[Passage]) -> str:
    """The system message that carries retrieved passages to a backend that takes chat messages."""
    lines = ["Answer from the context below when it is relevant; cite the [doc id]. Say so when it does not answer "
             "the question.", "", "Context:"]
    lines += [f"[{p.doc_id}] {p.text}" for p in passages]
    return "\n".join(lines)
