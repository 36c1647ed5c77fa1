"""A request travels the whole route on the real broker."""

from __future__ import annotations

import orjson
import pytest

from schemas.envelope import DEFAULT_ROUTE, Status, Tier
from schemas.response import DeadLetter, Response
from streams.clients.envelopes import new_envelope
from streams.clients.sdk import TollwayClient
from streams.runtime.codec import decode_as, encode
from streams.runtime.topics import topology
from streams.settings import Settings
from tests.kafka_helpers import produce_raw, read_until

pytestmark = pytest.mark.integration

N = 40


async def test_n_requests_give_n_responses_and_n_audit_records(pipeline: Settings) -> None:
    settings = pipeline
    envs = [new_envelope(f"question {i}", tenant="acme", tier=Tier.BATCH if i % 4 == 0 else Tier.STANDARD,
                         settings=settings) for i in range(N)]
    async with TollwayClient(settings) as submitter:
        responses = await submitter.complete_envelopes(envs, timeout_s=60)

    assert [r.request_id for r in responses] == [e.request_id for e in envs]
    for response in responses:
        assert response.status is Status.OK, response
        stages = [h.stage for h in response.hops]
        assert stages == list(DEFAULT_ROUTE[:-1]), "every hop up to the response, in route order"
        assert all(h.queue_ms >= 0 and h.service_ms >= 0 for h in response.hops)
        assert response.completed_at_ns >= response.created_at_ns

    topo = topology(settings)
    audit = await read_until(settings, topo.audit_log, lambda rs: len(rs) >= N)
    audited = [orjson.loads(r.value)["request_id"] for r in audit]
    assert sorted(audited) == sorted(e.request_id for e in envs)
    all_responses = await read_until(settings, topo.responses, lambda rs: len(rs) >= N, timeout_s=5)
    assert len({decode_as(r.value, Response).request_id for r in all_responses}) == N


async def test_monotonic_hop_times(pipeline: Settings) -> None:
    async with TollwayClient(pipeline) as submitter:
        (response,) = await submitter.complete_envelopes([new_envelope("hello", tenant="acme", settings=pipeline)])
    assert response.status is Status.OK


@pytest.mark.parametrize("stage", [*DEFAULT_ROUTE, "ingress"])
async def test_garbage_is_dead_lettered_and_the_stage_keeps_going(pipeline: Settings, stage: str) -> None:
    settings = pipeline
    topo = topology(settings)
    source = topo.stage(stage)
    await produce_raw(settings, source, [b"\x00garbage{", b'{"schema_version": 7}', None])
    letters = await read_until(settings, topo.deadletter, lambda rs: len(rs) >= 3)
    decoded = [decode_as(r.value, DeadLetter) for r in letters]
    assert {d.reason for d in decoded} == {"invalid_json", "unknown_schema_version", "empty"}
    assert all(d.source_topic == source and d.source_offset >= 0 for d in decoded)
    garbage = next(d for d in decoded if d.reason == "invalid_json")
    import base64

    assert base64.b64decode(garbage.original_b64) == b"\x00garbage{"
    # the stage is still alive: a real request still completes
    async with TollwayClient(settings) as submitter:
        still = new_envelope("still there?", tenant="acme", settings=settings)
        (response,) = await submitter.complete_envelopes([still])
    assert response.status is Status.OK


async def test_expired_request_is_not_worked(pipeline: Settings) -> None:
    env = new_envelope("too late", tenant="acme", budget_ms=1, settings=pipeline)
    env.deadline_at_ns = env.created_at_ns - 1
    async with TollwayClient(pipeline) as submitter:
        (response,) = await submitter.complete_envelopes([env])
    assert response.status is Status.DEADLINE_EXCEEDED
    assert [h.stage for h in response.hops] == ["retrieval"]


async def test_route_is_data_policy_first_for_a_remote_embedder(pipeline: Settings) -> None:
    env = new_envelope("route me", tenant="acme", settings=pipeline)
    env.route = ["policy", "retrieval", "cache", "model", "postprocess", "audit"]
    async with TollwayClient(pipeline) as submitter:
        (response,) = await submitter.complete_envelopes([env])
    assert response.status is Status.OK
    # the ingress consumer (the default route's first stage) hands it on untouched, then the route is followed
    assert [h.stage for h in response.hops] == ["retrieval", "policy", "retrieval", "cache", "model", "postprocess"]


async def test_a_request_answered_again_is_marked_as_a_replay(pipeline: Settings) -> None:
    env = new_envelope("answer me twice", tenant="acme", settings=pipeline)
    async with TollwayClient(pipeline) as submitter:
        (first,) = await submitter.complete_envelopes([env])
        (again,) = await submitter.complete_envelopes([env])  # what a redelivery after a crash looks like downstream
    assert first.status is Status.OK and not first.replay
    assert again.replay, "a second response for the same request says it is a replay"
    assert again.answer == first.answer  # (served from the cache the first answer filled)


async def test_an_envelope_without_outcome_on_the_audit_topic_is_audited_and_answered(pipeline: Settings) -> None:
    env = new_envelope("sneaked in", tenant="acme", settings=pipeline)
    env.route = ["audit"]
    async with TollwayClient(pipeline) as submitter:
        submitter.expect([env.request_id])
        await produce_raw(pipeline, topology(pipeline).stage("audit"), [encode(env)])
        response = await submitter.result(env.request_id, 30)
    assert (response.status, response.code) == (Status.DENIED, "unverified_decision")  # no sealed decision
    audit = await read_until(pipeline, topology(pipeline).audit_log,
                             lambda rs: env.request_id in {orjson.loads(r.value)["request_id"] for r in rs})
    assert env.request_id in {orjson.loads(r.value)["request_id"] for r in audit}
