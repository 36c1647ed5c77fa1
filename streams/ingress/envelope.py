"""The request envelope an HTTP chat request becomes (one function, so a shared envelope factory can take its place).

Raises :class:`~streams.ingress.errors.HttpError` (messages OpenAI's way that we cannot take) or pydantic's
``ValidationError`` (a field the envelope refuses); the caller answers both with a 400.
"""

from __future__ import annotations

import time
import uuid

from schemas.envelope import CacheControl, Envelope, GenerationParams, Request, Tier
from streams.clients.principals import Identity
from streams.ingress.openai import ChatBody, to_messages
from streams.settings import Settings


def new_request_id() -> str:
    return uuid.uuid4().hex


def envelope_for(body: ChatBody, identity: Identity, tier: Tier, budget_ms: int, request_id: str | None,
                 settings: Settings) -> Envelope:
    """The unsigned envelope for ``body`` from ``identity``: deadline ``budget_ms`` from now, a fresh request id
    unless an idempotency key decided it. ``settings`` is for the shared factory's defaults (unused here)."""
    options = body.tollway
    params = GenerationParams(max_tokens=body.max_completion_tokens or body.max_tokens or 256,
                              temperature=body.temperature or 0.0, response_format=body.response_format)
    now = time.time_ns()
    return Envelope(
        request_id=request_id or new_request_id(), tenant=identity.tenant, tier=tier,
        created_at_ns=now, deadline_at_ns=now + budget_ms * 1_000_000,
        request=Request(messages=to_messages(body.messages), params=params,
                        model=None if body.model in ("auto", "") else body.model,
                        quality_tier=options.quality_tier, session_id=options.session_id,
                        task_id=options.task_id, cache=options.cache or CacheControl()),
    )
