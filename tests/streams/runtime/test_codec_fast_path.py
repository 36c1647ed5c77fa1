"""The codec's fast paths (pydantic-core JSON in and out) give exactly what the orjson paths gave."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import orjson
import pytest

from schemas.envelope import (
    CacheResult,
    Envelope,
    Evaluation,
    Hop,
    Message,
    ModelResult,
    PolicyDecision,
    PostprocessResult,
    Principal,
    RouteRecord,
    Status,
    ToolCall,
    ToolCallRecord,
    ToolsResult,
    Usage,
)
from schemas.errors import BadEvent, UnknownSchemaVersion
from schemas.response import DeadLetter, HopSummary, Response, response_bytes, response_fields
from streams.runtime.codec import decode, decode_as, encode


def _full(make_envelope: Callable[..., Envelope]) -> Envelope:
    env = make_envelope("Refund for order 7 — ¿qué? 🙂", session_id="s1")
    env.principal = Principal(key_id="k1", signature="sig")
    env.request.messages.insert(0, Message(role="system", content="be brief"))
    env.request.params.response_format = {"type": "json_object", "nested": [1, 2.5, None, {"a": True}]}
    env.hops.append(Hop(stage="retrieval", worker_id="w", produced_at_ns=1, received_at_ns=2, started_at_ns=3,
                        finished_at_ns=4, remaining_budget_ms=1234.567, budget_violation=True))
    env.policy = PolicyDecision(policy_version="v3", pii_found={"email": 2}, injection_score=0.125,
                                reserved_micros=1500, decisions=["allow"])
    env.cache = CacheResult(outcome="miss", similarity=0.8125, rejected_near_miss=True)
    env.model = ModelResult(model="m", backend="local", usage=Usage(input_tokens=5, output_tokens=7),
                            cost_micros=42, latency_ms=1e-7, routing=["cheapest"])
    env.answer = "ok"
    env.finish(Status.OK, stage="postprocess")
    return env


def test_encode_is_the_orjson_document(make_envelope: Callable[..., Envelope]) -> None:
    env = _full(make_envelope)
    response = Response.from_envelope(env, completed_at_ns=99)
    letter = DeadLetter(reason="invalid_json", error="x", stage="policy", worker_id="w", source_topic="t",
                        source_partition=0, source_offset=1, original_b64="AA==", original_size=1,
                        dead_lettered_at_ns=5)
    for event in (env, response, letter):
        assert orjson.loads(encode(event)) == orjson.loads(orjson.dumps(event.model_dump(mode="json")))


def test_fast_and_slow_decode_agree(make_envelope: Callable[..., Envelope]) -> None:
    env = _full(make_envelope)
    raw = encode(env)
    assert raw.startswith(b'{"schema_version":1,')  # the fast path's entry condition
    # The same document with its keys in another order takes the orjson path.
    reordered = orjson.dumps(dict(reversed(list(orjson.loads(raw).items()))))
    assert decode(raw) == decode(reordered) == env


def test_a_record_without_its_version_is_still_refused(make_envelope: Callable[..., Envelope]) -> None:
    data = orjson.loads(encode(make_envelope()))
    del data["schema_version"]
    with pytest.raises(UnknownSchemaVersion):
        decode(orjson.dumps(data))
    with pytest.raises(UnknownSchemaVersion):  # a nested schema_version does not count
        decode(orjson.dumps({"request": {"schema_version": 1}, **data}))


def test_fast_path_refusals_keep_their_reasons(make_envelope: Callable[..., Envelope]) -> None:
    raw = encode(make_envelope())
    cases = {
        raw[:-5]: "invalid_json",
        raw.replace(b'"tenant":"acme"', b'"tenant":"ac\\ud800me"'): "invalid_json",
        raw.replace(b'"max_tokens":256', b'"max_tokens":"lots"'): "schema_violation",
        raw.replace(b'"kind":"request"', b'"kind":"request","extra":1'): "schema_violation",
    }
    for bad, reason in cases.items():
        with pytest.raises(BadEvent) as info:
            decode(bad)
        assert info.value.reason == reason, bad


def test_other_events_decode_on_the_fast_path(make_envelope: Callable[..., Envelope]) -> None:
    response = Response.from_envelope(_full(make_envelope), completed_at_ns=99)
    assert decode_as(encode(response), Response) == response


def _agent(make_envelope: Callable[..., Envelope], *, mode: Literal["server", "client"]) -> Envelope:
    env = _full(make_envelope)
    assert env.model is not None
    env.model.step_cost_micros = [20, 22]
    env.model.learn = RouteRecord(kind="qa", features=[0.5, 1.0], tier="small", probe=True)
    env.model.cascade_model, env.model.cascade_cost_micros = "small", 5
    env.postprocess = PostprocessResult(evaluation=Evaluation(grounded_share=0.5, grounded=False, refusal=False))
    env.tools = ToolsResult(offered=["calculator"], mode=mode, steps=1, cost_micros=9,
                            pending=[ToolCall(id="c2", name="calculator", arguments={"x": [1, 2.5]})],
                            calls=[ToolCallRecord(call_id="c1", name="calculator", step=1, status="ok", cost_micros=9,
                                                  latency_ms=0.5)])
    return env


def test_the_runners_response_bytes_are_the_validated_responses(make_envelope: Callable[..., Envelope]) -> None:
    bare = make_envelope("hello")
    bare.finish(Status.DENIED, code="no", message="why", stage="policy", retry_after_s=2.5)
    shapes = [bare, _full(make_envelope), _agent(make_envelope, mode="server"), _agent(make_envelope, mode="client")]
    for env in shapes:
        fields = response_fields(env, completed_at_ns=99)
        assert list(fields) == list(Response.model_fields)
        assert list(fields["hops"][0] if fields["hops"] else HopSummary.model_fields) == list(HopSummary.model_fields)
        response = Response.from_envelope(env, completed_at_ns=99)
        assert response_bytes(env, completed_at_ns=99) == encode(response)
        assert Response.model_validate_json(response_bytes(env, completed_at_ns=99)) == response
