"""The OpenTelemetry side of tracing (imported only when ``TOLLWAY_OTEL_ENDPOINT`` is set; see
:mod:`streams.runtime.tracing`).

Spans are made after the fact, from the runner's hop stamps, with explicit start and end times: by then a hop's
outcome is known, so the sampler can keep every error and every SLO miss at any sample rate.

**Sampling, tail-aware.** A new trace is kept with probability ``TOLLWAY_OTEL_SAMPLE_RATE`` (by trace id); a child
follows its parent's sampled flag — except a hop that decided a failure or ended past the deadline, which is always
kept and sets the flag for the hops after it. The hops before it already ran, perhaps in other processes, unexported:
while a trace is not sampled, each span appends its id to the ``tollway`` entry of the W3C ``tracestate``
(``p:<id>`` for the producer, ``<hop index>:<id>`` per hop), so the hop that keeps the trace re-creates those spans,
with their ids, parents and attributes, from the envelope's hop stamps — the whole trace, not its tail only.

Export: a batch span processor over OTLP/HTTP (protobuf), in a background thread.
"""

from __future__ import annotations

import contextvars
import random
import threading
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult, TraceIdRatioBased
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    TraceState,
    get_current_span,
    set_span_in_context,
)
from opentelemetry.util.types import Attributes as OtelAttributes

from schemas.envelope import Envelope, Hop, TraceContext
from streams.runtime.trace_attributes import (
    KEEP,
    TRACEPARENT,
    TenantLabel,
    hop_attributes,
    keep_reason,
    model_call,
    request_attributes,
)
from streams.settings import Settings

STATE_KEY = "tollway"  # our tracestate entry: the unexported ancestors of an unsampled trace
_MAX_LINKS = 128  # the SDK's default span link limit; a bigger batch links its first 128 traced members


class KeepErrorsSampler(Sampler):
    """Head sampling by trace id for new traces, the parent's flag for children, and always a span whose attributes
    carry :data:`~streams.runtime.trace_attributes.KEEP` (an error, an SLO miss, a batch with traced members)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._ratio = TraceIdRatioBased(rate)

    def should_sample(self, parent_context: Context | None, trace_id: int, name: str, kind: SpanKind | None = None,
                      attributes: OtelAttributes = None, links: Sequence[Link] | None = None,
                      trace_state: TraceState | None = None) -> SamplingResult:
        parent = get_current_span(parent_context).get_span_context()
        state = parent.trace_state if parent.is_valid else trace_state
        if attributes and attributes.get(KEEP):
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, state)
        if parent.is_valid:
            if parent.trace_flags.sampled:
                return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, state)
            return SamplingResult(Decision.DROP, None, state)
        return self._ratio.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"KeepErrorsSampler{{rate={self.rate}}}"


_FORCED_IDS: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar("tollway_forced_ids",
                                                                                      default=None)


class _Ids(RandomIdGenerator):
    """Random ids, except for the spans whose ids were handed out before they were made (a batch span its members
    already link to; re-created ancestors)."""

    def generate_trace_id(self) -> int:
        forced = _FORCED_IDS.get()
        return forced[0] if forced is not None else super().generate_trace_id()

    def generate_span_id(self) -> int:
        forced = _FORCED_IDS.get()
        if forced is not None:
            _FORCED_IDS.set(None)
            return forced[1]
        return super().generate_span_id()


def _parent(trace: TraceContext | None) -> tuple[Context, SpanContext | None, list[str]]:
    """The span context an envelope carries, as an OpenTelemetry parent, and its unexported ancestors."""
    if trace is None:
        return Context(), None, []
    found = TRACEPARENT.match(trace.traceparent)
    if found is None:
        return Context(), None, []
    state = TraceState.from_header([trace.tracestate]) if trace.tracestate else TraceState()
    span = SpanContext(int(found[1], 16), int(found[2], 16), is_remote=True, trace_flags=TraceFlags(int(found[3], 16)),
                       trace_state=state)
    chain = state.get(STATE_KEY)
    return set_span_in_context(NonRecordingSpan(span)), span, chain.split(".") if chain else []


def _carry(span: SpanContext, chain: list[str]) -> TraceContext:
    state = span.trace_state
    if chain:
        value = ".".join(chain)
        state = state.update(STATE_KEY, value) if STATE_KEY in state else state.add(STATE_KEY, value)
    elif STATE_KEY in state:
        state = state.delete(STATE_KEY)
    return TraceContext(traceparent=f"00-{span.trace_id:032x}-{span.span_id:016x}-{int(span.trace_flags):02x}",
                        tracestate=state.to_header())


class Tracing:
    """One process's tracer for one endpoint: producer spans (:meth:`start_request`) and the runner's per-batch
    hook (:meth:`batch`)."""

    def __init__(self, provider: TracerProvider, tenant: TenantLabel) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("tollway")
        self.tenant = tenant

    def start_request(self, env: Envelope, parent: TraceContext | None) -> None:
        context, _span, _chain = _parent(parent)
        span = self.tracer.start_span("tollway.submit", context=context, kind=SpanKind.PRODUCER,
                                      start_time=env.created_at_ns)
        if span.is_recording():
            span.set_attributes({"messaging.system": "kafka", "messaging.operation.type": "send",
                                 **request_attributes(env, self.tenant)})
        span.end(end_time=max(env.created_at_ns, time.time_ns()))
        sc = span.get_span_context()
        env.trace = _carry(sc, [] if sc.trace_flags.sampled else [f"p:{sc.span_id:016x}"])

    def batch(self, stage: str, started_ns: int, finished_ns: int, size: int) -> BatchTrace:
        return BatchTrace(self, stage, started_ns, finished_ns, size)

    def force_flush(self, timeout_ms: int = 30_000) -> bool:
        return self.provider.force_flush(timeout_ms)

    def shutdown(self) -> None:
        self.provider.shutdown()


class BatchTrace:
    """The spans of one batch a stage worked: :meth:`hop` per envelope (before it is forwarded: it rewrites
    ``env.trace``), then :meth:`close`."""

    def __init__(self, tracing: Tracing, stage: str, started_ns: int, finished_ns: int, size: int) -> None:
        self.tracing = tracing
        self.stage = stage
        self.started_ns = started_ns
        self.finished_ns = finished_ns
        self.size = size
        self.ids = (random.getrandbits(128) or 1, random.getrandbits(64) or 1)
        self.link = Link(SpanContext(*self.ids, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED)),
                         {"tollway.link": "batch"})
        self.members: list[SpanContext] = []
        self.seen: set[str] = set()

    def hop(self, env: Envelope, hop: Hop) -> None:
        self.seen.add(env.request_id)
        context, parent, chain = _parent(env.trace)
        keep = keep_reason(env, hop)
        tracer = self.tracing.tracer
        span = tracer.start_span(f"tollway.{hop.stage}", context=context, kind=SpanKind.CONSUMER,
                                 attributes={KEEP: keep} if keep else None, links=(self.link,),
                                 start_time=hop.started_at_ns)
        sc = span.get_span_context()
        if span.is_recording():
            if chain and parent is not None and not parent.trace_flags.sampled:
                self._recreate(env, chain, parent)  # kept for an error or an SLO miss: its ancestors first
            self._describe(span, env, hop)
            self.members.append(sc)
            onward: list[str] = []
        else:
            onward = [*chain, f"{len(env.hops) - 1}:{sc.span_id:016x}"]
        span.end(end_time=max(hop.started_at_ns, hop.finished_at_ns))
        env.trace = _carry(sc, onward)

    def close(self, worked: Sequence[Envelope] = ()) -> None:
        """Spans for the envelopes of ``worked`` that :meth:`hop` did not see (a sink stage forwards nothing), then
        the batch span."""
        for env in worked:
            if env.request_id not in self.seen and env.hops and env.hops[-1].stage == self.stage:
                hop = env.hops[-1]
                if hop.remaining_budget_ms == 0.0:  # only forwarded hops get it from the runner
                    hop.remaining_budget_ms = round(env.remaining_budget_ms(hop.finished_at_ns), 3)
                self.hop(env, hop)
        if not self.members:
            return  # nothing traced in this batch: no batch span either
        token = _FORCED_IDS.set(self.ids)
        try:
            span = self.tracing.tracer.start_span(
                f"tollway.{self.stage}.batch", context=Context(), kind=SpanKind.CONSUMER,
                attributes={KEEP: "members"}, links=[Link(sc, {"tollway.link": "member"})
                                                     for sc in self.members[:_MAX_LINKS]],
                start_time=self.started_ns)
        finally:
            _FORCED_IDS.reset(token)
        span.set_attributes({"tollway.stage": self.stage, "messaging.system": "kafka",
                             "messaging.operation.type": "process", "messaging.batch.message_count": self.size,
                             "tollway.batch.traced_members": len(self.members)})
        span.end(end_time=max(self.started_ns, self.finished_ns))

    def _describe(self, span: Span, env: Envelope, hop: Hop, *, recreated: bool = False) -> None:
        span.set_attributes(hop_attributes(env, hop, self.tracing.tenant))
        if recreated:
            span.set_attribute("tollway.trace.recreated", True)
        span.add_event("dequeued", {"tollway.queue_ms": round(hop.queue_ms, 3),
                                    "tollway.produced_at_ns": hop.produced_at_ns}, timestamp=hop.started_at_ns)
        outcome = env.outcome
        if outcome is not None and outcome.stage == hop.stage and keep_reason(env, hop) == "error":
            span.set_status(StatusCode.ERROR, outcome.code or outcome.status.value)
        if hop.stage == "model":
            self._model_call(span, env, hop)

    def _model_call(self, parent: Span, env: Envelope, hop: Hop) -> None:
        attrs = model_call(env)
        if attrs is None or env.model is None:
            return
        end = max(hop.started_at_ns, hop.finished_at_ns)
        start = max(hop.started_at_ns, end - int(env.model.latency_ms * 1e6))
        name = f"chat {attrs.get('gen_ai.request.model', 'unknown')}"
        span = self.tracing.tracer.start_span(name, context=set_span_in_context(parent), kind=SpanKind.CLIENT,
                                              attributes=attrs, start_time=start)
        if "error.type" in attrs:
            span.set_status(StatusCode.ERROR, str(attrs["error.type"]))
        span.end(end_time=end)

    def _recreate(self, env: Envelope, chain: list[str], parent: SpanContext) -> None:
        """Re-create the unexported ancestors named in ``chain`` (oldest first) with their ids, each a child of the
        one before; the first is a root (the caller's span, if any, was not sampled either)."""
        context: Context = Context()
        tracer = self.tracing.tracer
        for entry in chain:
            label, _, hex_id = entry.partition(":")
            try:
                span_id = int(hex_id, 16)
                hop = None if label == "p" else env.hops[int(label)]
            except (ValueError, IndexError):
                continue  # not ours to read: skip it, its child then hangs from the one before
            token = _FORCED_IDS.set((parent.trace_id, span_id))
            try:
                if hop is None:
                    span = tracer.start_span("tollway.submit", context=context, kind=SpanKind.PRODUCER,
                                             attributes={KEEP: "ancestor"}, start_time=env.created_at_ns)
                else:
                    span = tracer.start_span(f"tollway.{hop.stage}", context=context, kind=SpanKind.CONSUMER,
                                             attributes={KEEP: "ancestor"}, start_time=hop.started_at_ns)
            finally:
                _FORCED_IDS.reset(token)
            if hop is None:
                span.set_attributes({"tollway.trace.recreated": True, **request_attributes(env, self.tracing.tenant)})
                span.end(end_time=env.created_at_ns)
            else:
                self._describe(span, env, hop, recreated=True)
                span.end(end_time=max(hop.started_at_ns, hop.finished_at_ns))
            context = set_span_in_context(span)


_REGISTRY: dict[tuple[Any, ...], Tracing] = {}
_LOCK = threading.Lock()


def _key(settings: Settings) -> tuple[Any, ...]:
    return (settings.otel_endpoint, settings.otel_sample_rate, settings.otel_service_name, settings.worker_id,
            settings.otel_tenant, settings.otel_tenant_salt.get_secret_value())


def traces_url(endpoint: str) -> str:
    """``http://host:4318`` → ``http://host:4318/v1/traces``; a URL with a path is taken as it is."""
    _scheme, sep, rest = endpoint.partition("://")
    return endpoint.rstrip("/") + "/v1/traces" if sep and "/" not in rest.rstrip("/") else endpoint


def tracing_for(settings: Settings, exporter: SpanExporter | None = None) -> Tracing:
    """The process's tracing for ``settings`` (made once per endpoint and sampling): OTLP/HTTP behind a batch span
    processor, or ``exporter`` behind a simple one (tests), which then replaces the one registered."""
    key = _key(settings)
    with _LOCK:
        found = _REGISTRY.get(key)
        if found is not None and exporter is None:
            return found
        processor: SpanProcessor
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            assert settings.otel_endpoint is not None
            processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(settings.otel_endpoint)))
        else:
            processor = SimpleSpanProcessor(exporter)
        resource = Resource.create({"service.name": settings.otel_service_name,
                                    "service.instance.id": settings.worker_id})
        provider = TracerProvider(resource=resource, sampler=KeepErrorsSampler(settings.otel_sample_rate),
                                  id_generator=_Ids())
        provider.add_span_processor(processor)
        tracing = _REGISTRY[key] = Tracing(provider, TenantLabel(settings.otel_tenant,
                                                                  settings.otel_tenant_salt.get_secret_value()))
        return tracing


def flush_all(timeout_ms: int = 30_000) -> None:
    """Export every span ended so far (tests; a worker's provider also flushes when the process exits)."""
    with _LOCK:
        tracings = list(_REGISTRY.values())
    for tracing in tracings:
        tracing.force_flush(timeout_ms)
