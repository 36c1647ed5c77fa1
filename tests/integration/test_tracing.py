"""Traces end to end: every stage running in-process against the real broker and Redis, exporting over OTLP/HTTP to a
real receiver on loopback (aiohttp, decoding the protobuf export with opentelemetry-proto). Requests come from the SDK
and through the HTTP ingress with a caller's ``traceparent``; each must be one trace with every stage span."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from schemas.envelope import DEFAULT_ROUTE as STAGES
from schemas.envelope import Status
from streams.clients.sdk import TollwayClient
from streams.ingress.server import serving
from streams.runtime.tracing_sdk import flush_all
from streams.settings import Settings
from tests.conftest import delete_topics_with_prefix

pytestmark = pytest.mark.integration

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CALLER = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", "tracestate": "caller=1"}


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any]
    links: list[tuple[str, str]]
    events: list[str]
    status_code: int
    service: str


@dataclass
class Receiver:
    url: str
    spans: list[Span] = field(default_factory=list)
    exports: int = 0


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


@pytest.fixture
async def otlp() -> AsyncIterator[Receiver]:
    """An OTLP/HTTP traces receiver on a loopback port."""
    receiver = Receiver(url="")

    async def traces(request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest.FromString(await request.read())
        for resource_spans in export.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for s in scope.spans:
                    receiver.spans.append(Span(
                        name=s.name, trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex(), kind=s.kind,
                        attributes={a.key: _value(a.value) for a in s.attributes},
                        links=[(lk.trace_id.hex(), lk.span_id.hex()) for lk in s.links],
                        events=[e.name for e in s.events], status_code=s.status.code,
                        service=str(resource.get("service.name"))))
        receiver.exports += 1
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    receiver.url = f"http://127.0.0.1:{port}"
    yield receiver
    await runner.cleanup()


@pytest.fixture
async def settings(tmp_path: Path, otlp: Receiver) -> AsyncIterator[Settings]:
    """The shared fixture's settings, traced to the receiver (every trace kept), the ingress in dev mode."""
    isolated = Settings(topic_prefix=f"t{uuid.uuid4().hex[:10]}", partitions=2, state_dir=tmp_path,
                        model_latency_scale=0.0, kafka_credentials_file=Settings().kafka_credentials_path,
                        otel_endpoint=otlp.url, otel_sample_rate=1.0, otel_service_name="tollway-it",
                        ingress_dev_mode=True)
    yield isolated
    await delete_topics_with_prefix(isolated)


def request_trace(receiver: Receiver, rid: str) -> list[Span]:
    trace_ids = {s.trace_id for s in receiver.spans if s.attributes.get("tollway.request_id") == rid}
    return [s for s in receiver.spans if s.trace_id in trace_ids]


def complete(spans: list[Span]) -> bool:
    names = {s.name for s in spans}
    return {"tollway.submit", *(f"tollway.{stage}" for stage in STAGES)} <= names


async def wait_for_traces(receiver: Receiver, ids: list[str], timeout_s: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not all(complete(request_trace(receiver, rid)) for rid in ids):
        if loop.time() > deadline:
            raise AssertionError(f"traces incomplete after {timeout_s} s: "
                                 f"{ {rid: sorted(s.name for s in request_trace(receiver, rid)) for rid in ids} }")
        # The exporter posts from its own thread to this loop's receiver: flush off the loop.
        await asyncio.to_thread(flush_all, 5_000)
        await asyncio.sleep(0.2)


async def test_one_trace_per_request_across_every_stage_from_the_sdk_and_the_http_ingress(
        otlp: Receiver, pipeline: Settings) -> None:
    async with TollwayClient(pipeline) as client:
        ids = [await client.submit(f"How do I rotate an API key? ({i})", tenant="acme") for i in range(3)]
        responses = await asyncio.gather(*(client.result(rid, timeout=60) for rid in ids))
    assert {r.status for r in responses} == {Status.OK}

    async with serving(pipeline, port=0, wait_ready_s=30) as (_, port), aiohttp.ClientSession() as http:
        resp = await http.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                               json={"model": "auto", "messages": [{"role": "user", "content": "What is the SLA?"}]},
                               headers={"X-Tollway-Tenant": "acme", **CALLER}, timeout=aiohttp.ClientTimeout(total=60))
        assert resp.status == 200, await resp.text()
        http_rid = resp.headers["x-tollway-request-id"]

    await wait_for_traces(otlp, [*ids, http_rid])
    by_id = {s.span_id: s for s in otlp.spans}
    for rid in [*ids, http_rid]:
        spans = request_trace(otlp, rid)
        assert len({s.trace_id for s in spans}) == 1, "one trace per request"
        named = {s.name: s for s in spans}
        stage_spans = [named[f"tollway.{stage}"] for stage in STAGES]
        assert len(spans) == 2 + len(STAGES), sorted(s.name for s in spans)  # + submit, + the model call
        assert all(s.service == "tollway-it" for s in spans)
        # Parentage: submit → retrieval → policy → cache → model → postprocess → audit; the model call under model.
        chain = [named["tollway.submit"], *stage_spans]
        for before, after in itertools.pairwise(chain):
            assert after.parent_id == before.span_id, (after.name, before.name)
        (chat,) = [s for s in spans if s.name.startswith("chat ")]
        assert chat.parent_id == named["tollway.model"].span_id
        assert chat.attributes["gen_ai.operation.name"] == "chat"
        assert chat.name == f"chat {chat.attributes['gen_ai.request.model']}"
        assert chat.attributes["gen_ai.usage.input_tokens"] > 0 and chat.attributes["gen_ai.usage.output_tokens"] > 0
        # Each hop links to its batch span (a root of its own), which links back.
        for hop in stage_spans:
            ((batch_trace, batch_span),) = hop.links
            batch = by_id[batch_span]
            assert batch.name == f"{hop.name}.batch" and batch.trace_id == batch_trace and not batch.parent_id
            assert (hop.trace_id, hop.span_id) in batch.links
            assert hop.events == ["dequeued"] and hop.attributes["tollway.queue_ms"] >= 0
            assert hop.attributes["tollway.tenant"].startswith("h:") and hop.attributes["tollway.tier"] == "standard"
            assert hop.attributes["tollway.deadline.remaining_ms"] > 0
        assert named["tollway.cache"].attributes["tollway.cache.outcome"] in {"miss", "hit", "bypass"}
        assert named["tollway.policy"].attributes["tollway.policy.version"]
        audit = named["tollway.audit"].attributes
        assert audit["tollway.outcome.status"] == "ok" and audit["tollway.cost_micros"] >= 0
        assert "tollway.model" in audit and audit["tollway.usage.output_tokens"] > 0
        assert all(s.status_code != 2 for s in spans)  # no error
    # The HTTP caller's trace is continued: same trace id, our producer span a child of the caller's span.
    http_submit = next(s for s in request_trace(otlp, http_rid) if s.name == "tollway.submit")
    assert (http_submit.trace_id, http_submit.parent_id) == (CALLER_TRACE, CALLER_SPAN)
    sdk_submits = [next(s for s in request_trace(otlp, rid) if s.name == "tollway.submit") for rid in ids]
    assert all(not s.parent_id for s in sdk_submits) and len({s.trace_id for s in sdk_submits}) == 3
