"""OpenTelemetry traces across the stages (issue 23, docs/TRACING.md): the entry points, cheap when tracing is off.

A request is one trace. Its producer (``EnvelopeFactory``: the SDK, ``tollway submit``, backfill, the HTTP ingress
— which continues the caller's ``traceparent``) opens it with a ``tollway.submit`` span; every stage hop adds a
``tollway.<stage>`` span (service time; the queue time before it as an event and attributes), a child of the hop
before; the model hop adds a GenAI ``chat <model>`` span; each batch a stage works is a ``tollway.<stage>.batch`` span
linked both ways with its members' hop spans (a batch is not anyone's parent). The W3C context travels in the
envelope (``Envelope.trace``), so every path an envelope takes carries it.

Off (``TOLLWAY_OTEL_ENDPOINT`` unset, the default): :func:`tracer_for` returns None without importing OpenTelemetry,
the runner's and the factory's hooks are one ``is None`` check, and a caller's trace context is passed through
untouched, so a traced stage downstream can still continue it. The work is in :mod:`streams.runtime.tracing_sdk`.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from schemas.envelope import Envelope, TraceContext
from streams.runtime.trace_attributes import TRACEPARENT
from streams.settings import Settings

if TYPE_CHECKING:
    from streams.runtime.tracing_sdk import Tracing


def incoming(traceparent: str | None, tracestate: str | None = None) -> TraceContext | None:
    """A caller's W3C ``traceparent``/``tracestate`` as a trace context; None when absent or malformed (W3C: a
    receiver then starts a new trace — a bad header never fails the request)."""
    if not traceparent:
        return None
    parent = traceparent.strip().lower()
    found = TRACEPARENT.match(parent)
    if found is None or found[1] == "0" * 32 or found[2] == "0" * 16:
        return None
    state = (tracestate or "").strip()
    return TraceContext(traceparent=parent, tracestate=state if len(state) <= 512 else "")


def current_context() -> TraceContext | None:
    """The calling application's active OpenTelemetry span, so the SDK continues the caller's trace; free for an
    application that does not use OpenTelemetry (nothing is imported)."""
    if "opentelemetry.trace" not in sys.modules:
        return None
    from opentelemetry import trace

    span = trace.get_current_span().get_span_context()
    if not span.is_valid:
        return None
    return TraceContext(traceparent=f"00-{span.trace_id:032x}-{span.span_id:016x}-{int(span.trace_flags):02x}",
                        tracestate=span.trace_state.to_header())


def tracer_for(settings: Settings) -> Tracing | None:
    """The process's tracing for these settings (one per endpoint), or None when tracing is off."""
    if not settings.otel_endpoint:
        return None
    from streams.runtime.tracing_sdk import tracing_for

    return tracing_for(settings)


def start_request(env: Envelope, settings: Settings, parent: TraceContext | None) -> None:
    """Open ``env``'s trace (a producer span, child of ``parent`` when given); off: pass ``parent`` through."""
    tracing = tracer_for(settings)
    if tracing is None:
        env.trace = parent
    else:
        tracing.start_request(env, parent)
