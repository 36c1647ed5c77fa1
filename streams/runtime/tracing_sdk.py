"""The OpenTelemetry side of tracing (imported only when ``TOLLWAY_OTEL_ENDPOINT`` is set; see
:mod:`streams.runtime.tracing`).

Spans are records of what happened, made after the fact from the runner's hop stamps (``ReadableSpan`` handed to the
SDK's span processor, as a span is when it ends): by then a hop's outcome is known, so sampling can keep every error
and every SLO miss at any sample rate, and an unsampled hop costs a few string operations, not an SDK span.

**Sampling, tail-aware.** A new trace is kept with probability ``TOLLWAY_OTEL_SAMPLE_RATE`` (by trace id, as the
SDK's ``TraceIdRatioBased``); a child follows its parent's sampled flag — except a hop that decided a failure or
ended past the deadline, which is always kept and sets the flag for the hops after it. The hops before it already
ran, perhaps in other processes, unexported: while a trace is not sampled, each hop appends its span id to the
``tollway`` entry of the W3C ``tracestate`` (``p:<id>`` for the producer, ``<hop index>:<id>`` per hop), so the hop
that keeps the trace re-creates those spans, with their ids, parents and attributes, from the envelope's hop stamps
— the whole trace, not its tail only.

Export: a batch span processor over OTLP/HTTP (protobuf), in a background thread.
"""

from __future__ import annotations

import atexit
import random
import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from schemas.envelope import Envelope, Hop, TraceContext
from streams.runtime.trace_attributes import (
    ERROR_STATUSES,
    KEEP,
    Attributes,
    TenantLabel,
    hop_attributes,
    keep_reason,
    model_call,
    submit_attributes,
)
from streams.settings import Settings

STATE_KEY = "tollway"  # our tracestate entry: the unexported ancestors of an unsampled trace
_MAX_LINKS = 128  # the SDK's default span link limit; a bigger batch links its first 128 traced members
_SAMPLED = TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID)
_LOW_64 = (1 << 64) - 1


def _span_id() -> int:
    return random.getrandbits(64) or 1


def _trace_id() -> int:
    return random.getrandbits(128) or 1


class Carried:
    """The trace context an envelope carries, read from its W3C strings (validated when the envelope was decoded)."""

    __slots__ = ("chain", "parent_id", "sampled", "state", "trace_id")

    def __init__(self, trace: TraceContext) -> None:
        parent = trace.traceparent
        self.trace_id = int(parent[3:35], 16)
        self.parent_id = int(parent[36:52], 16)
        self.sampled = bool(int(parent[53:55], 16) & 1)
        self.state = trace.tracestate
        self.chain: list[str] = []
        if STATE_KEY + "=" in self.state:
            for entry in self.state.split(","):
                key, _, value = entry.strip().partition("=")
                if key == STATE_KEY:
                    self.chain = value.split(".")


def _carry(trace_id: int, span_id: int, sampled: bool, state: str, chain: list[str]) -> TraceContext:
    """The context to hand on: ours in front of the other vendors' tracestate entries (W3C: at most 32 entries and
    512 characters, dropping from the right)."""
    others = [e.strip() for e in state.split(",") if e.strip() and not e.strip().startswith(STATE_KEY + "=")]
    if chain:
        others.insert(0, f"{STATE_KEY}={'.'.join(chain)}")
    others = others[:32]
    header = ",".join(others)
    while len(header) > 512:
        others.pop()
        header = ",".join(others)
    flags = 0x03 if sampled else 0x02
    # Constructed, not validated: both strings are made here in their valid form.
    return TraceContext.model_construct(traceparent=f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}",
                                        tracestate=header)


class Tracing:
    """One process's tracing for one endpoint: producer spans (:meth:`start_request`) and the runner's per-batch hook
    (:meth:`batch`); spans go to ``processor`` (a batch span processor over OTLP/HTTP)."""

    def __init__(self, processor: SpanProcessor, resource: Resource, rate: float, tenant: TenantLabel) -> None:
        self.processor = processor
        self.resource = resource
        self.scope = InstrumentationScope("tollway")
        self.bound = round(rate * (1 << 64))
        self.tenant = tenant

    def head_sampled(self, trace_id: int) -> bool:
        """The SDK's ``TraceIdRatioBased`` decision for a new trace."""
        return (trace_id & _LOW_64) < self.bound

    def emit(self, name: str, kind: SpanKind, trace_id: int, span_id: int, parent_id: int | None, start_ns: int,
             end_ns: int, attributes: Attributes, *, events: Sequence[Event] = (), links: Sequence[Link] = (),
             error: str | None = None) -> None:
        parent = SpanContext(trace_id, parent_id, is_remote=False, trace_flags=_SAMPLED) if parent_id else None
        self.processor.on_end(ReadableSpan(
            name, SpanContext(trace_id, span_id, is_remote=False, trace_flags=_SAMPLED), parent, self.resource,
            attributes, events, links, kind, status=Status(StatusCode.ERROR, error) if error else Status(),
            start_time=start_ns, end_time=max(start_ns, end_ns), instrumentation_scope=self.scope))

    def start_request(self, env: Envelope, parent: TraceContext | None) -> None:
        carried = Carried(parent) if parent is not None else None
        trace_id = carried.trace_id if carried else _trace_id()
        sampled = carried.sampled if carried else self.head_sampled(trace_id)
        span_id = _span_id()
        if sampled:
            self.emit("tollway.submit", SpanKind.PRODUCER, trace_id, span_id, carried.parent_id if carried else None,
                      env.created_at_ns, env.created_at_ns, submit_attributes(env, self.tenant))
        env.trace = _carry(trace_id, span_id, sampled, carried.state if carried else "",
                           [] if sampled else [f"p:{span_id:016x}"])

    def batch(self, stage: str, started_ns: int, finished_ns: int, size: int) -> BatchTrace:
        return BatchTrace(self, stage, started_ns, finished_ns, size)

    def force_flush(self, timeout_ms: int = 30_000) -> bool:
        return self.processor.force_flush(timeout_ms)


class BatchTrace:
    """The spans of one batch a stage worked: :meth:`hop` per envelope (before it is forwarded: it rewrites
    ``env.trace``), then :meth:`close`."""

    def __init__(self, tracing: Tracing, stage: str, started_ns: int, finished_ns: int, size: int) -> None:
        self.tracing = tracing
        self.stage = stage
        self.started_ns = started_ns
        self.finished_ns = finished_ns
        self.size = size
        self.trace_id, self.span_id = _trace_id(), _span_id()
        self.link = Link(SpanContext(self.trace_id, self.span_id, is_remote=False, trace_flags=_SAMPLED),
                         {"tollway.link": "batch"})
        self.members: list[tuple[int, int]] = []
        self.seen: set[str] = set()

    def hop(self, env: Envelope, hop: Hop) -> None:
        self.seen.add(env.request_id)
        carried = Carried(env.trace) if env.trace is not None else None
        keep = keep_reason(env, hop)
        trace_id = carried.trace_id if carried else _trace_id()
        span_id = _span_id()
        sampled = bool(keep) or (carried.sampled if carried else self.tracing.head_sampled(trace_id))
        if not sampled:  # the common case at low rates: no span, our id joins the chain of unexported ancestors
            chain = carried.chain if carried else []
            env.trace = _carry(trace_id, span_id, False, carried.state if carried else "",
                               [*chain, f"{len(env.hops) - 1}:{span_id:016x}"])
            return
        parent_id = carried.parent_id if carried else None
        if carried is not None and not carried.sampled and carried.chain:
            self._recreate(env, carried.chain, trace_id)  # kept for an error or an SLO miss: its ancestors first
        self._hop_span(env, hop, trace_id, span_id, parent_id, keep=keep)
        self.members.append((trace_id, span_id))
        env.trace = _carry(trace_id, span_id, True, carried.state if carried else "", [])

    def close(self, worked: Sequence[Envelope] = ()) -> None:
        """Spans for the envelopes of ``worked`` that :meth:`hop` did not see (a sink stage forwards nothing), then
        the batch span, linked to its traced members."""
        for env in worked:
            if env.request_id not in self.seen and env.hops and env.hops[-1].stage == self.stage:
                hop = env.hops[-1]
                if hop.remaining_budget_ms == 0.0:  # only forwarded hops get it from the runner
                    hop.remaining_budget_ms = round(env.remaining_budget_ms(hop.finished_at_ns), 3)
                self.hop(env, hop)
        if not self.members:
            return  # nothing traced in this batch: no batch span either
        links = [Link(SpanContext(tid, sid, is_remote=False, trace_flags=_SAMPLED), {"tollway.link": "member"})
                 for tid, sid in self.members[:_MAX_LINKS]]
        self.tracing.emit(f"tollway.{self.stage}.batch", SpanKind.CONSUMER, self.trace_id, self.span_id, None,
                          self.started_ns, self.finished_ns,
                          {"tollway.stage": self.stage, "messaging.system": "kafka", KEEP: "members",
                           "messaging.operation.type": "process", "messaging.batch.message_count": self.size,
                           "tollway.batch.traced_members": len(self.members)}, links=links)

    def _hop_span(self, env: Envelope, hop: Hop, trace_id: int, span_id: int, parent_id: int | None, *,
                  keep: str | None, recreated: bool = False) -> None:
        attrs = hop_attributes(env, hop, self.tracing.tenant)
        if keep:
            attrs[KEEP] = keep
        if recreated:
            attrs["tollway.trace.recreated"] = True
        outcome = env.outcome
        error = None
        if outcome is not None and outcome.stage == hop.stage and outcome.status in ERROR_STATUSES:
            error = outcome.code or outcome.status.value
        dequeued = Event("dequeued", {"tollway.queue_ms": round(hop.queue_ms, 3)}, hop.started_at_ns)
        self.tracing.emit(f"tollway.{hop.stage}", SpanKind.CONSUMER, trace_id, span_id, parent_id, hop.started_at_ns,
                          hop.finished_at_ns, attrs, events=(dequeued,), links=() if recreated else (self.link,),
                          error=error)
        if hop.stage == "model":
            self._model_call(env, hop, trace_id, span_id)

    def _model_call(self, env: Envelope, hop: Hop, trace_id: int, parent_id: int) -> None:
        attrs = model_call(env)
        if attrs is None or env.model is None:
            return
        end = max(hop.started_at_ns, hop.finished_at_ns)
        start = max(hop.started_at_ns, end - int(env.model.latency_ms * 1e6))
        error = attrs.get("error.type")
        self.tracing.emit(f"chat {attrs.get('gen_ai.request.model', 'unknown')}", SpanKind.CLIENT, trace_id,
                          _span_id(), parent_id, start, end, attrs, error=str(error) if error else None)

    def _recreate(self, env: Envelope, chain: list[str], trace_id: int) -> None:
        """Re-create the unexported ancestors named in ``chain`` (oldest first) with their ids, each a child of the
        one before; the first is a root (the caller's span, if any, was not sampled either)."""
        parent_id: int | None = None
        for entry in chain:
            label, _, hex_id = entry.partition(":")
            try:
                span_id = int(hex_id, 16)
                hop = None if label == "p" else env.hops[int(label)]
            except (ValueError, IndexError):
                continue  # not ours to read: skip it, its child then hangs from the one before
            if hop is None:
                self.tracing.emit("tollway.submit", SpanKind.PRODUCER, trace_id, span_id, parent_id,
                                  env.created_at_ns, env.created_at_ns,
                                  {"tollway.trace.recreated": True, KEEP: "ancestor",
                                   **submit_attributes(env, self.tracing.tenant)})
            else:
                self._hop_span(env, hop, trace_id, span_id, parent_id, keep="ancestor", recreated=True)
            parent_id = span_id


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
    processor (flushed when the process exits), or ``exporter`` behind a simple one (tests), which then replaces
    the one registered."""
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
            atexit.register(processor.shutdown)
        else:
            processor = SimpleSpanProcessor(exporter)
        resource = Resource.create({"service.name": settings.otel_service_name,
                                    "service.instance.id": settings.worker_id})
        tenant = TenantLabel(settings.otel_tenant, settings.otel_tenant_salt.get_secret_value())
        tracing = _REGISTRY[key] = Tracing(processor, resource, settings.otel_sample_rate, tenant)
        return tracing


def flush_all(timeout_ms: int = 30_000) -> None:
    """Export every span ended so far (tests; a worker's processor also flushes when the process exits)."""
    with _LOCK:
        tracings = list(_REGISTRY.values())
    for tracing in tracings:
        tracing.force_flush(timeout_ms)
