"""The request envelope an HTTP chat request becomes, made by the shared :class:`EnvelopeFactory` (the route for
the policy in force — policy before retrieval when the embedder is remote —, the tier's budget, the signature).

Raises :class:`~streams.ingress.errors.HttpError` (messages OpenAI's way that we cannot take) or pydantic's
``ValidationError`` (a field the envelope refuses); the caller answers both with a 400.
"""

from __future__ import annotations

import uuid

from schemas.envelope import CacheControl, Envelope, GenerationParams, Tier, ToolsMode, TraceContext
from streams.clients.envelopes import EnvelopeFactory
from streams.clients.principals import Identity
from streams.ingress.openai import ChatBody, to_messages
from streams.ingress.tools import choice_name, function_tools


def new_request_id() -> str:
    return uuid.uuid4().hex


def envelope_for(body: ChatBody, identity: Identity, tier: Tier, budget_ms: int, request_id: str | None,
                 factory: EnvelopeFactory, parent_trace: TraceContext | None = None,
                 tools_mode: ToolsMode = "auto") -> Envelope:
    """The signed envelope for ``body`` from ``identity``: deadline ``budget_ms`` from now, a fresh request id
    unless an idempotency key decided it; its trace continues the caller's (``parent_trace``)."""
    options = body.tollway
    params = GenerationParams(max_tokens=body.max_completion_tokens or body.max_tokens or 256,
                              temperature=body.temperature or 0.0, response_format=body.response_format)
    return factory.new(to_messages(body.messages), identity=identity, tier=tier, budget_ms=budget_ms,
                       request_id=request_id or new_request_id(), params=params,
                       model=None if body.model in ("auto", "") else body.model,
                       quality_tier=options.quality_tier, session_id=options.session_id, task_id=options.task_id,
                       cache=options.cache or CacheControl(), parent_trace=parent_trace,
                       tools=function_tools(body.tools), tool_choice=choice_name(body.tool_choice),
                       tools_mode=tools_mode)
