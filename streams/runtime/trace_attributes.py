"""What a request's spans say, derived from its envelope and hop stamps — pure, no OpenTelemetry import.

Only identifiers, decisions, counts, times and money: never a prompt, a message, a passage or an answer, and no
free text a backend wrote (the router's reasons and outcome messages can quote errors; only codes go on spans).
Names follow the OpenTelemetry semantic conventions where one exists (``gen_ai.*`` for the model call,
``messaging.*``, ``error.type``), ``tollway.*`` otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from typing import Literal

from schemas.envelope import Envelope, Hop, Status

AttributeValue = str | bool | int | float | list[str]
Attributes = dict[str, AttributeValue]

# A W3C traceparent, version 00: trace id, parent span id, flags (https://www.w3.org/TR/trace-context/).
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
# Why a span not sampled by its head decision was kept anyway; also set on the hop that erred or missed the SLO.
KEEP = "tollway.trace.keep"
ERROR_STATUSES = frozenset({Status.FAILED, Status.DEAD_LETTERED, Status.DEADLINE_EXCEEDED})


class TenantLabel:
    """The tenant as it goes on spans: keyed-hashed (default: a tracing backend is often shared more widely than
    the pipeline), plain, or omitted."""

    def __init__(self, mode: Literal["hashed", "plain", "omit"], salt: str) -> None:
        self.mode = mode
        self._key = salt.encode()
        self._known: dict[str, str] = {}

    def __call__(self, tenant: str) -> str | None:
        if self.mode == "plain":
            return tenant
        if self.mode == "omit":
            return None
        label = self._known.get(tenant)
        if label is None:
            if len(self._known) > 10_000:
                self._known.clear()
            digest = hmac.new(self._key, tenant.encode(), hashlib.sha256).hexdigest()[:16]
            label = self._known[tenant] = f"h:{digest}"
        return label


def keep_reason(env: Envelope, hop: Hop) -> str | None:
    """``error`` when this hop decided a failed outcome, ``slo_miss`` when the request's deadline has passed by the
    end of this hop; such hops are traced whatever the sample rate."""
    outcome = env.outcome
    if outcome is not None and outcome.stage == hop.stage and outcome.status in ERROR_STATUSES:
        return "error"
    if hop.remaining_budget_ms < 0:
        return "slo_miss"
    return None


def request_attributes(env: Envelope, tenant: TenantLabel) -> Attributes:
    """On every span of the request: what a trace is searched by."""
    attrs: Attributes = {"tollway.request_id": env.request_id, "tollway.tier": env.tier.value}
    label = tenant(env.tenant)
    if label is not None:
        attrs["tollway.tenant"] = label
    return attrs


def submit_attributes(env: Envelope, tenant: TenantLabel) -> Attributes:
    """The producer span: the request as it enters (its route, the model asked for, the deadline)."""
    attrs = request_attributes(env, tenant)
    attrs.update({"messaging.system": "kafka", "messaging.operation.type": "send", "tollway.route": list(env.route),
                  "tollway.deadline.budget_ms": round((env.deadline_at_ns - env.created_at_ns) / 1e6, 3)})
    if env.request.model:
        attrs["tollway.request.model"] = env.request.model
    return attrs


def hop_attributes(env: Envelope, hop: Hop, tenant: TenantLabel) -> Attributes:
    """A stage hop. Each attribute costs encoding on every exported span, so what the span already says (its name is
    the stage, its duration the service time, the resource the worker) is not repeated."""
    attrs = request_attributes(env, tenant)
    attrs["tollway.hop.status"] = hop.status
    attrs["tollway.queue_ms"] = round(hop.queue_ms, 3)
    attrs["tollway.batch_size"] = hop.batch_size
    attrs["tollway.deadline.remaining_ms"] = hop.remaining_budget_ms
    if hop.budget_violation:
        attrs["tollway.budget_violation"] = True
    outcome = env.outcome
    if outcome is not None and hop.stage in (outcome.stage, "audit"):
        # Where the outcome was decided, and at the sink that sees every outcome.
        attrs["tollway.outcome.status"] = outcome.status.value
        attrs["tollway.outcome.code"] = outcome.code
        attrs["tollway.outcome.stage"] = outcome.stage
        if outcome.stage == hop.stage and outcome.status in ERROR_STATUSES:
            attrs["error.type"] = outcome.code or outcome.status.value
    section = _SECTIONS.get(hop.stage)
    if section is not None:
        attrs.update(section(env))
    return attrs


def _retrieval(env: Envelope) -> Attributes:
    r = env.retrieval
    if r is None:
        return {}
    attrs: Attributes = {"tollway.retrieval.passages": len(r.passages),
                         "tollway.retrieval.confidence": round(r.confidence, 4)}
    if r.skipped:
        attrs["tollway.retrieval.skipped"] = r.skipped
    return attrs


def _policy(env: Envelope) -> Attributes:
    p = env.policy
    if p is None:
        return {}
    return {"tollway.policy.version": p.policy_version, "tollway.policy.decisions": list(p.decisions),
            "tollway.policy.pii_found": [f"{kind}={n}" for kind, n in sorted(p.pii_found.items())],
            "tollway.policy.injection_score": round(p.injection_score, 4),
            "tollway.policy.reserved_micros": p.reserved_micros, "tollway.policy.cache_allowed": p.cache_allowed}


def _cache(env: Envelope) -> Attributes:
    c = env.cache
    if c is None:
        return {}
    attrs: Attributes = {"tollway.cache.outcome": c.outcome, "tollway.cache.saved_micros": c.saved_micros,
                         "tollway.cache.rejected_near_miss": c.rejected_near_miss}
    if c.kind is not None:
        attrs["tollway.cache.kind"] = c.kind
    if c.similarity is not None:
        attrs["tollway.cache.similarity"] = round(c.similarity, 4)
    return attrs


def _model(env: Envelope) -> Attributes:
    m = env.model
    if m is None:
        return {}
    attrs: Attributes = {"tollway.model.attempts": m.attempts, "tollway.cost_micros": m.cost_micros,
                         "tollway.usage.input_tokens": m.usage.input_tokens,
                         "tollway.usage.cached_input_tokens": m.usage.cached_input_tokens,
                         "tollway.usage.output_tokens": m.usage.output_tokens}
    if m.model:
        attrs["tollway.model"] = m.model
    if m.quality_tier:
        attrs["tollway.model.quality_tier"] = m.quality_tier
    return attrs


def _postprocess(env: Envelope) -> Attributes:
    p = env.postprocess
    if p is None:
        return {}
    attrs: Attributes = {"tollway.postprocess.actions": list(p.actions)}
    if p.structured_output_valid is not None:
        attrs["tollway.postprocess.structured_output_valid"] = p.structured_output_valid
    return attrs


def _audit(env: Envelope) -> Attributes:
    """The sink sees every outcome: its span carries the request's totals (model, tokens, cost, cache)."""
    attrs = _model(env)
    if env.cache is not None:
        attrs["tollway.cache.outcome"] = env.cache.outcome
    return attrs


_SECTIONS: dict[str, Callable[[Envelope], Attributes]] = {
    "retrieval": _retrieval, "policy": _policy, "cache": _cache, "model": _model, "postprocess": _postprocess,
    "audit": _audit,
}


def model_call(env: Envelope) -> Attributes | None:
    """The GenAI semantic conventions for the model call of a request that reached a model (None: no call)."""
    m = env.model
    if m is None or m.attempts == 0:
        return None
    params = env.request.params
    attrs: Attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": m.backend or "tollway",
        "gen_ai.request.max_tokens": params.max_tokens,
        "gen_ai.request.temperature": params.temperature,
        "gen_ai.usage.input_tokens": m.usage.input_tokens,
        "gen_ai.usage.output_tokens": m.usage.output_tokens,
        "gen_ai.usage.cache_read.input_tokens": m.usage.cached_input_tokens,
        "tollway.cost_micros": m.cost_micros,
        "tollway.model.attempts": m.attempts,
    }
    if m.model:
        # The router picks the model: what tollway asked the backend for is what answered.
        attrs["gen_ai.request.model"] = attrs["gen_ai.response.model"] = m.model
    elif env.request.model:
        attrs["gen_ai.request.model"] = env.request.model
    if m.region:
        attrs["tollway.model.region"] = m.region
    outcome = env.outcome
    if outcome is not None and outcome.stage == "model" and outcome.status in ERROR_STATUSES:
        attrs["error.type"] = outcome.code or outcome.status.value
    return attrs
