"""The one way a request envelope is made, for every producer (SDK, ``tollway submit``, the HTTP ingress, backfill,
the bench): the route for the policy in force, the tier's latency budget and the principal's signature.

The route is data: when the embedder is remote (the policy's ``embedder.remote`` or a non-local embedder in
settings), policy runs before retrieval so the prompt is redacted before it leaves the pipeline. The retrieval
stage enforces the same rule on its own (``workers/retrieval.py``), so a producer that gets the route wrong cannot
send a raw prompt to a remote embedder either.

Every envelope starts its trace here (``streams/runtime/tracing.py``): a child of ``parent_trace`` (the HTTP
caller's ``traceparent``) or of the calling application's active OpenTelemetry span; with tracing off, a given
parent is passed through as it is.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from schemas.envelope import Envelope, Message, Request, Tier, TraceContext
from streams.clients.principals import Identity, sign_envelope
from streams.runtime import tracing
from streams.settings import Settings, get_settings
from workers.policy import PolicySource, route_for


@dataclass(frozen=True)
class EnvelopeFactory:
    """Makes signed envelopes for one producer. ``policy`` is the producer's view of the policy in force (the
    ingress's and the SDK's follower); without one only settings decide the route."""

    settings: Settings
    policy: PolicySource | None = None
    identity: Identity | None = None

    def route(self) -> list[str]:
        return route_for(self.policy.current() if self.policy is not None else None, self.settings)

    def new(self, prompt: str | list[Message], *, tenant: str | None = None, tier: Tier = Tier.STANDARD,
            budget_ms: int | None = None, request_id: str | None = None, identity: Identity | None = None,
            parent_trace: TraceContext | None = None, **request_fields: Any) -> Envelope:
        """A new envelope; signed when the factory (or the call) has a verified identity, whose tenant it takes."""
        who = identity or self.identity
        tenant = who.tenant if who is not None else tenant
        if not tenant:
            raise ValueError("a request needs a tenant (or a verified identity)")
        messages = [Message(role="user", content=prompt)] if isinstance(prompt, str) else prompt
        now = time.time_ns()
        budget = budget_ms if budget_ms is not None else self.settings.budget_ms_for(tier)
        env = Envelope(
            route=self.route(),
            request_id=request_id or uuid.uuid4().hex,
            tenant=tenant,
            tier=tier,
            created_at_ns=now,
            deadline_at_ns=now + budget * 1_000_000,
            request=Request(messages=messages, **request_fields),
        )
        tracing.start_request(env, self.settings, parent_trace or tracing.current_context())
        if who is not None:
            sign_envelope(env, who, self.settings.principal_secret.get_secret_value())
        return env


def new_envelope(prompt: str | list[Message], *, tenant: str, tier: Tier = Tier.STANDARD,
                 budget_ms: int | None = None, settings: Settings | None = None, request_id: str | None = None,
                 policy: PolicySource | None = None, **request_fields: Any) -> Envelope:
    """An unsigned envelope for ``tenant`` (tests, the bench, the CLI's local tools): ``EnvelopeFactory.new``."""
    factory = EnvelopeFactory(settings or get_settings(), policy=policy)
    return factory.new(prompt, tenant=tenant, tier=tier, budget_ms=budget_ms, request_id=request_id,
                       **request_fields)
