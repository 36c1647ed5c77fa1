"""OpenTelemetry traces through the real runner over in-memory topics (``run_pipeline``), exported to memory: one
trace per request with every stage span, parentage, batch links, attributes, content never on a span, sampling that
keeps errors whole, the caller's trace continued, and nothing at all when tracing is off."""

from __future__ import annotations

import itertools
import uuid
from collections import defaultdict
from collections.abc import Iterable

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from schemas.envelope import DEFAULT_ROUTE as STAGES
from schemas.envelope import Status
from streams.clients.envelopes import EnvelopeFactory
from streams.runtime import tracing
from streams.runtime.tracing_sdk import traces_url, tracing_for
from streams.settings import Settings, load_settings
from streams.testing import run_pipeline

PROMPT = "What is the refund policy for annual plans?"
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


def traced(rate: float = 1.0, **overrides: object) -> tuple[Settings, InMemorySpanExporter]:
    settings = load_settings(topic_prefix="t", model_latency_scale=0.0, otel_endpoint=f"memory://{uuid.uuid4().hex}",
                             otel_sample_rate=rate, **overrides)
    exporter = InMemorySpanExporter()
    tracing_for(settings, exporter)
    return settings, exporter


def by_trace(spans: Iterable[ReadableSpan]) -> dict[int, list[ReadableSpan]]:
    traces: dict[int, list[ReadableSpan]] = defaultdict(list)
    for span in spans:
        assert span.context is not None
        traces[span.context.trace_id].append(span)
    return traces


def request_traces(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    """Each request's trace (its spans carry tollway.request_id), batch spans left out."""
    out: dict[str, list[ReadableSpan]] = {}
    for spans in by_trace(exporter.get_finished_spans()).values():
        ids = {s.attributes.get("tollway.request_id") for s in spans if s.attributes}
        if not spans[0].name.endswith(".batch"):
            (rid,) = ids - {None}
            out[str(rid)] = spans
    return out


def named(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    (span,) = [s for s in spans if s.name == name]
    return span


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_one_trace_per_request_with_every_stage_span_chained_and_linked_to_its_batch() -> None:
    settings, exporter = traced()
    factory = EnvelopeFactory(settings)
    envs = [factory.new(f"{PROMPT} ({i})", tenant="acme") for i in range(3)]
    result = await run_pipeline(envs, settings=settings)
    assert {r.status for r in result.responses.values()} == {Status.OK}

    traces = request_traces(exporter)
    assert set(traces) == {env.request_id for env in envs}
    spans_by_id = {s.context.span_id: s for s in exporter.get_finished_spans() if s.context is not None}
    for spans in traces.values():
        model_name = (named(spans, "tollway.model").attributes or {})["tollway.model"]
        assert sorted(s.name for s in spans) == sorted(["tollway.submit", *(f"tollway.{stage}" for stage in STAGES),
                                                        f"chat {model_name}"])
        chain = [named(spans, "tollway.submit"), *(named(spans, f"tollway.{stage}") for stage in STAGES)]
        assert chain[0].parent is None
        for before, after in itertools.pairwise(chain):
            assert after.parent is not None and after.parent.span_id == before.context.span_id  # type: ignore[union-attr]
            assert after.start_time >= before.start_time  # type: ignore[operator]
        model = named(spans, "tollway.model")
        chat = named(spans, f"chat {model_name}")
        assert parent_id(chat) == model.context.span_id  # type: ignore[union-attr]
        for hop in chain[1:]:
            (link,) = hop.links
            batch = spans_by_id[link.context.span_id]  # the batch span exists and links back to this hop
            assert batch.name == f"{hop.name}.batch" and batch.parent is None
            assert hop.context.span_id in {lk.context.span_id for lk in batch.links}  # type: ignore[union-attr]
            assert [e.name for e in hop.events] == ["dequeued"]


async def test_attributes_follow_the_conventions_and_never_carry_content() -> None:
    settings, exporter = traced()
    env = EnvelopeFactory(settings).new(PROMPT, tenant="acme")
    result = await run_pipeline([env], settings=settings)
    answer = result.responses[env.request_id].answer
    assert answer
    spans = request_traces(exporter)[env.request_id]
    common = named(spans, "tollway.retrieval").attributes
    assert common is not None
    assert str(common["tollway.tenant"]).startswith("h:") and common["tollway.tenant"] != "acme"
    assert common["tollway.tier"] == "standard" and common["tollway.request_id"] == env.request_id
    submit = named(spans, "tollway.submit").attributes
    assert submit is not None and list(submit["tollway.route"]) == list(STAGES)  # type: ignore[arg-type]
    assert 0 < float(common["tollway.deadline.remaining_ms"]) <= 10_000  # type: ignore[arg-type]
    policy = named(spans, "tollway.policy").attributes
    assert policy is not None and policy["tollway.policy.version"] == "none"  # no policy document in memory
    assert list(policy["tollway.policy.decisions"]) == ["allow: no policy loaded"]  # type: ignore[arg-type]
    cache = named(spans, "tollway.cache").attributes
    assert cache is not None and cache["tollway.cache.outcome"] == "miss"
    chat = next(s for s in spans if s.name.startswith("chat "))
    gen_ai = chat.attributes
    assert gen_ai is not None
    assert gen_ai["gen_ai.operation.name"] == "chat"
    assert gen_ai["gen_ai.request.model"] == gen_ai["gen_ai.response.model"]
    assert int(gen_ai["gen_ai.usage.input_tokens"]) > 0 and int(gen_ai["gen_ai.usage.output_tokens"]) > 0  # type: ignore[arg-type]
    audit = named(spans, "tollway.audit").attributes
    assert audit is not None and audit["tollway.cost_micros"] == result.responses[env.request_id].cost_micros
    assert audit["tollway.outcome.status"] == "ok"
    # Never the prompt or the answer, in any attribute or event of any span.
    words = {PROMPT, answer, "refund", "annual", *(s.strip() for s in answer.split(".") if len(s.strip()) > 20)}
    for span in exporter.get_finished_spans():
        values = [*(span.attributes or {}).values(), *(v for e in span.events for v in (e.attributes or {}).values())]
        text = " ".join(str(v) for v in values)
        assert not any(word in text for word in words), (span.name, text)


async def test_plain_or_omitted_tenant() -> None:
    for mode, expected in (("plain", "acme"), ("omit", None)):
        settings, exporter = traced(otel_tenant=mode)
        env = EnvelopeFactory(settings).new(PROMPT, tenant="acme")
        await run_pipeline([env], settings=settings)
        submit = named(request_traces(exporter)[env.request_id], "tollway.submit")
        assert (submit.attributes or {}).get("tollway.tenant") == expected


async def test_the_callers_trace_is_continued() -> None:
    settings, exporter = traced(rate=0.0)  # the caller's sampled flag wins over the rate
    caller = tracing.incoming(f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", "vendor=abc")
    env = EnvelopeFactory(settings).new(PROMPT, tenant="acme", parent_trace=caller)
    await run_pipeline([env], settings=settings)
    spans = request_traces(exporter)[env.request_id]
    assert len(spans) == 2 + len(STAGES)
    assert {s.context.trace_id for s in spans} == {int(CALLER_TRACE, 16)}  # type: ignore[union-attr]
    assert parent_id(named(spans, "tollway.submit")) == int(CALLER_SPAN, 16)


async def test_at_rate_zero_only_failed_requests_are_traced_and_their_whole_trace_is_kept() -> None:
    settings, exporter = traced(rate=0.0)
    factory = EnvelopeFactory(settings)
    fine = factory.new(PROMPT, tenant="acme")
    late = factory.new(PROMPT, tenant="acme", budget_ms=0)  # its deadline has passed when retrieval sees it
    result = await run_pipeline([fine, late], settings=settings)
    assert result.responses[late.request_id].status == Status.DEADLINE_EXCEEDED
    traces = request_traces(exporter)
    assert set(traces) == {late.request_id}
    spans = traces[late.request_id]
    assert sorted(s.name for s in spans) == ["tollway.audit", "tollway.retrieval", "tollway.submit"]
    submit, retrieval, audit = (named(spans, n) for n in ("tollway.submit", "tollway.retrieval", "tollway.audit"))
    assert (submit.attributes or {}).get("tollway.trace.recreated") is True  # made again, with its original id
    assert parent_id(retrieval) == submit.context.span_id  # type: ignore[union-attr]
    assert parent_id(audit) == retrieval.context.span_id  # type: ignore[union-attr]
    assert retrieval.status.status_code == StatusCode.ERROR
    assert (retrieval.attributes or {})["error.type"] == "deadline_exceeded"
    assert {s.name for s in exporter.get_finished_spans() if s.name.endswith(".batch")} == {
        "tollway.retrieval.batch", "tollway.audit.batch"}


async def test_off_by_default_nothing_is_traced_and_a_callers_context_passes_through() -> None:
    settings = load_settings(topic_prefix="t", model_latency_scale=0.0)
    assert settings.otel_endpoint is None and tracing.tracer_for(settings) is None
    factory = EnvelopeFactory(settings)
    assert factory.new(PROMPT, tenant="acme").trace is None
    caller = tracing.incoming(f"00-{CALLER_TRACE}-{CALLER_SPAN}-01")
    env = factory.new(PROMPT, tenant="acme", parent_trace=caller)
    result = await run_pipeline([env], settings=settings)
    assert result.responses[env.request_id].status == Status.OK
    assert env.trace == caller


@pytest.mark.parametrize("header", [None, "", "garbage", f"01-{CALLER_TRACE}-{CALLER_SPAN}-01",
                                    f"00-{'0' * 32}-{CALLER_SPAN}-01", f"00-{CALLER_TRACE}-{'0' * 16}-01",
                                    f"00-{CALLER_TRACE}-{CALLER_SPAN}"])
def test_a_malformed_traceparent_is_ignored(header: str | None) -> None:
    assert tracing.incoming(header) is None


def test_a_traceparent_is_normalised() -> None:
    found = tracing.incoming(f" 00-{CALLER_TRACE.upper()}-{CALLER_SPAN}-01 ", "a=b")
    assert found is not None and found.traceparent == f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    assert found.tracestate == "a=b"


def test_traces_url() -> None:
    assert traces_url("http://127.0.0.1:4318") == "http://127.0.0.1:4318/v1/traces"
    assert traces_url("http://127.0.0.1:4318/") == "http://127.0.0.1:4318/v1/traces"
    assert traces_url("http://collector/custom/v1/traces") == "http://collector/custom/v1/traces"


def test_a_hop_that_ends_past_the_deadline_is_kept_as_an_slo_miss() -> None:
    from schemas.envelope import Hop
    from streams.runtime.trace_attributes import keep_reason

    env = EnvelopeFactory(load_settings(topic_prefix="t")).new(PROMPT, tenant="acme")
    hop = Hop(stage="model", worker_id="w", produced_at_ns=1, received_at_ns=2, started_at_ns=3, finished_at_ns=4,
              remaining_budget_ms=-5.0)
    assert keep_reason(env, hop) == "slo_miss"
    hop.remaining_budget_ms = 5.0
    assert keep_reason(env, hop) is None
    env.finish(Status.FAILED, code="model_error", stage="model")
    assert keep_reason(env, hop) == "error"
    env.outcome.stage = "policy"  # type: ignore[union-attr]
    assert keep_reason(env, hop) is None  # an error decided elsewhere is that hop's to keep


async def test_a_caller_tracestate_near_the_limit_still_leaves_a_valid_envelope() -> None:
    settings, _exporter = traced(rate=0.0)
    crowded = ",".join(f"v{i}={'x' * 40}" for i in range(11))  # 505 characters of other vendors' entries
    caller = tracing.incoming(f"00-{CALLER_TRACE}-{CALLER_SPAN}-00", crowded)
    env = EnvelopeFactory(settings).new(PROMPT, tenant="acme", parent_trace=caller)
    result = await run_pipeline([env], settings=settings)  # every hop re-validates the envelope it decodes
    assert result.responses[env.request_id].status == Status.OK and not result.deadletters
