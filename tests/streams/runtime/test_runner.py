"""The batch runner without a broker: dead letters, deadlines, routes, the one-by-one retry, replays, the fields only
the runner may set, and the sink stage. Driven by ``streams.testing`` over in-memory topics."""

from __future__ import annotations

import orjson

from schemas.envelope import DEFAULT_ROUTE, Envelope, Outcome, Status
from streams.clients.envelopes import new_envelope
from streams.runtime.codec import encode
from streams.runtime.replays import MemoryReplayMemory
from streams.runtime.stage import Stage, base_context
from streams.runtime.topics import Topology
from streams.settings import load_settings
from streams.stages import registry
from streams.testing import decide, run_batch, run_pipeline
from workers.context import FakeClock, StageContext

SETTINGS = load_settings(topic_prefix="t")
TOPICS = Topology("t")


def envelope(prompt: str = "hello", *, at: str = "cache", **fields: object) -> Envelope:
    """A new request whose route continues at stage ``at`` (the default route from there on)."""
    env = new_envelope(prompt, tenant="acme", settings=SETTINGS, **fields)  # type: ignore[arg-type]
    env.route = list(DEFAULT_ROUTE[DEFAULT_ROUTE.index(at):])
    return env


def sealed(env: Envelope) -> Envelope:
    """A decision sealed as if the policy stage had decided ``env.route`` (which starts at the stage to drive)."""
    return decide(env, SETTINGS)


async def passthrough(batch: list[Envelope], _ctx: StageContext) -> list[Envelope]:
    return batch


def stage(name: str, process: object = passthrough, *, sink: bool = False) -> Stage[StageContext]:
    return Stage(name, StageContext, process, base_context, sink=sink)  # type: ignore[arg-type]


async def test_undecodable_bytes_are_dead_lettered_with_their_origin_and_the_batch_goes_on() -> None:
    good = envelope()
    result = await run_batch(stage("cache"), [b"{not json", encode(good), orjson.dumps({"kind": "request"})],
                             settings=SETTINGS)
    reasons = [d.reason for d in result.deadletters]
    assert len(reasons) == 2 and reasons[0] == "invalid_json", reasons
    assert result.deadletters[0].source_topic == TOPICS.stage("cache") and result.deadletters[0].source_offset == 0
    assert [e.request_id for e in result.forwarded("model")] == [good.request_id]


async def test_an_oversized_record_is_dead_lettered() -> None:
    big = envelope("x" * (SETTINGS.max_message_bytes + 10))
    result = await run_batch(stage("cache"), [encode(big)], settings=SETTINGS)
    assert [d.reason for d in result.deadletters] == ["oversized"]


async def test_a_request_past_its_deadline_is_ended_not_worked() -> None:
    worked: list[str] = []

    async def record(batch: list[Envelope], _ctx: StageContext) -> list[Envelope]:
        worked.extend(e.request_id for e in batch)
        return batch

    late = envelope()
    late.deadline_at_ns = late.created_at_ns - 1
    result = await run_batch(stage("cache", record), [late], settings=SETTINGS)
    assert worked == []
    (response,) = result.responses
    assert response.status is Status.DEADLINE_EXCEEDED and "before the cache stage" in (response.message or "")
    assert [e.request_id for e in result.forwarded("audit")] == [late.request_id]  # straight on to the audit


async def test_one_bad_request_does_not_fail_its_neighbours() -> None:
    async def fails_on_poison(batch: list[Envelope], _ctx: StageContext) -> list[Envelope]:
        if any(e.request.prompt == "poison" for e in batch):
            raise RuntimeError("boom")
        return batch

    good, bad = envelope("fine"), envelope("poison")
    result = await run_batch(stage("cache", fails_on_poison), [good, bad], settings=SETTINGS)
    (response,) = result.responses
    assert response.request_id == bad.request_id and response.code == "stage_error"
    assert [d.reason for d in result.deadletters] == ["stage_error"]
    assert [e.request_id for e in result.forwarded("model")] == [good.request_id]
    assert [e.request_id for e in result.forwarded("audit")] == [bad.request_id]


async def test_a_request_whose_route_starts_elsewhere_is_forwarded_unworked() -> None:
    env = envelope(at="policy")
    env.route = ["policy", "retrieval", "cache", "model", "postprocess", "audit"]
    result = await run_batch(registry.stage("retrieval"), [env], settings=SETTINGS, topic=TOPICS.ingress())
    (forwarded,) = result.forwarded("policy")
    assert forwarded.hops[-1].status == "forwarded" and forwarded.route[0] == "policy"


async def test_an_empty_route_before_the_sink_is_dead_lettered() -> None:
    env = envelope()
    env.route = []
    result = await run_batch(stage("model"), [env], settings=SETTINGS)
    assert [d.reason for d in result.deadletters] == ["misrouted"]


async def test_a_route_ending_before_the_sink_ends_the_request_explained() -> None:
    env = envelope()
    env.route = ["cache"]
    result = await run_batch(stage("cache"), [env], settings=SETTINGS)
    (response,) = result.responses
    assert response.status is Status.FAILED and response.code == "route_ended"


async def test_the_sink_audits_a_request_without_outcome_and_answers_it() -> None:
    env = envelope()
    env.route = ["audit"]
    result = await run_batch(stage("audit", sink=True), [env], settings=SETTINGS)
    (response,) = result.responses
    assert response.code == "no_outcome"
    assert not result.forwarded("audit")


async def test_fields_only_the_runner_may_set_are_dropped_on_entry() -> None:
    forged = envelope(at="retrieval")
    forged.responded = True  # once: worked, audited, never answered
    forged.outcome = Outcome(status=Status.OK, stage="model")
    forged.answer = "pre-decided"
    result = await run_pipeline([forged], settings=SETTINGS)
    response = result.responses[forged.request_id]
    assert response.status is Status.OK and response.answer != "pre-decided"
    assert [h.stage for h in response.hops][:1] == ["retrieval"]


async def test_a_non_terminal_request_claiming_to_be_answered_is_still_answered() -> None:
    env = envelope()
    env.route = ["postprocess", "audit"]
    sealed(env)
    env.responded = True
    result = await run_batch(registry.stage("postprocess"), [env], settings=SETTINGS)
    assert [r.code for r in result.responses] == ["no_answer"]  # worked (and answered), not refused


async def test_a_redelivered_answer_is_marked_replay() -> None:
    replays = MemoryReplayMemory()
    env = envelope()
    env.route = ["postprocess", "audit"]
    sealed(env)
    first = await run_batch(registry.stage("postprocess"), [env], settings=SETTINGS, replays=replays)
    again = await run_batch(registry.stage("postprocess"), [env], settings=SETTINGS, replays=replays)
    assert [(r.code, r.replay) for r in first.responses] == [("no_answer", False)]
    assert [r.replay for r in again.responses] == [True]


async def test_hops_are_stamped_with_queue_and_service_time() -> None:
    clock = FakeClock()
    result = await run_batch(stage("cache"), [envelope()], settings=SETTINGS, clock=clock)
    (env,) = result.forwarded("model")
    hop = env.hops[-1]
    assert hop.stage == "cache" and hop.batch_size == 1 and hop.finished_at_ns >= hop.started_at_ns


async def test_the_whole_pipeline_runs_in_memory_in_route_order() -> None:
    envs = [envelope(f"question {i}?", at="retrieval") for i in range(5)]
    result = await run_pipeline(envs, settings=SETTINGS)
    assert {r.request_id for r in result.all_responses} == {e.request_id for e in envs}
    for response in result.responses.values():
        assert response.status is Status.OK
        assert [h.stage for h in response.hops] == list(DEFAULT_ROUTE[:-1])  # answered at post-process
    assert len(result.on(TOPICS.audit_log)) == 5


async def test_the_batch_lane_goes_to_the_batch_topics() -> None:
    from schemas.envelope import Tier

    env = envelope("later", tier=Tier.BATCH)
    result = await run_batch(stage("cache"), [env], settings=SETTINGS, topic=TOPICS.stage("cache", Tier.BATCH))
    assert result.topics.values(TOPICS.stage("model", Tier.BATCH))
