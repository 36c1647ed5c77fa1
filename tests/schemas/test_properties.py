"""Properties of the events and the codec (hypothesis): round trips, one error type for any bytes, and the codec
agreeing with the reference decoding (orjson + ``model_validate``) whatever path it takes inside."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from schemas.envelope import (
    DEFAULT_ROUTE,
    CacheControl,
    Envelope,
    GenerationParams,
    Hop,
    Message,
    Outcome,
    Principal,
    Request,
    Status,
    Tier,
    Usage,
)
from schemas.errors import BadEvent
from schemas.response import DeadLetter, Response
from streams.runtime.codec import decode, decode_as, encode

# Any Unicode a JSON string can carry (hypothesis' text() already leaves out lone surrogates): RTL, zero-width,
# emoji, NUL and other control characters included.
texts = st.text(max_size=200)
ids = st.text(min_size=1, max_size=128)
ns = st.integers(min_value=0, max_value=2**63 - 1)
small_ints = st.integers(min_value=0, max_value=2**31)

messages = st.builds(Message, role=st.sampled_from(["system", "user", "assistant", "tool"]), content=texts)
params = st.builds(GenerationParams, max_tokens=st.integers(1, 32_768),
                   temperature=st.floats(0.0, 2.0, allow_nan=False),
                   response_format=st.none() | st.just({"type": "json_object"}))
requests = st.builds(Request, messages=st.lists(messages, min_size=1, max_size=4), params=params,
                     model=st.none() | st.sampled_from(["auto", "nano-us", "lite-eu"]),
                     session_id=st.none() | st.text(max_size=200), task_id=st.none() | st.text(max_size=200),
                     cache=st.builds(CacheControl, read=st.booleans(), write=st.booleans(),
                                     ttl_s=st.none() | st.integers(1, 10**6), no_store=st.booleans()),
                     reply_to=st.none() | st.text(min_size=1, max_size=249))
hops = st.builds(Hop, stage=st.sampled_from(DEFAULT_ROUTE), worker_id=texts, produced_at_ns=ns, received_at_ns=ns,
                 started_at_ns=ns, finished_at_ns=ns, batch_size=st.integers(1, 5000),
                 remaining_budget_ms=st.floats(-1e9, 1e9, allow_nan=False), budget_violation=st.booleans())
outcomes = st.builds(Outcome, status=st.sampled_from(Status), code=texts, message=texts,
                     retry_after_s=st.none() | st.floats(0, 1e6, allow_nan=False), stage=texts)


@st.composite
def envelopes(draw: st.DrawFn) -> Envelope:
    start = draw(st.integers(0, len(DEFAULT_ROUTE)))
    return Envelope(request_id=draw(ids), tenant=draw(ids),
                    principal=draw(st.none() | st.builds(Principal, key_id=texts, signature=texts)),
                    tier=draw(st.sampled_from(Tier)), created_at_ns=draw(ns), deadline_at_ns=draw(ns),
                    request=draw(requests), route=list(DEFAULT_ROUTE[start:]), hops=draw(st.lists(hops, max_size=3)),
                    answer=draw(st.none() | texts), outcome=draw(st.none() | outcomes), responded=draw(st.booleans()))


responses = st.builds(Response, request_id=ids, tenant=ids, status=st.sampled_from(Status), code=texts,
                      message=texts, answer=st.none() | texts,
                      usage=st.builds(Usage, input_tokens=small_ints, cached_input_tokens=small_ints,
                                      output_tokens=small_ints),
                      cost_micros=small_ints, created_at_ns=ns, completed_at_ns=ns, replay=st.booleans())
dead_letters = st.builds(DeadLetter, reason=texts, error=texts, stage=texts, worker_id=texts, source_topic=texts,
                         source_partition=small_ints, source_offset=small_ints, request_id=st.none() | ids,
                         original_b64=st.binary(max_size=64).map(lambda b: b.hex()), original_size=small_ints,
                         dead_lettered_at_ns=ns)

json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) |
                           st.floats(allow_nan=False, allow_infinity=False) | texts,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
                           max_leaves=8)


def reference(raw: bytes, model: type[BaseModel]) -> BaseModel | None:
    """What the codec must answer: orjson, then the version check, then the Python-mode validator (None: refuse)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("schema_version") != 1:
        return None
    try:
        return model.model_validate(data)
    except ValidationError:
        return None


def codec(raw: bytes, model: type[BaseModel]) -> BaseModel | None:
    try:
        return decode_as(raw, model)
    except BadEvent:
        return None


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(envelopes())
def test_every_envelope_round_trips(env: Envelope) -> None:
    raw = encode(env)
    assert decode(raw) == env
    assert orjson.loads(raw) == orjson.loads(orjson.dumps(env.model_dump(mode="json")))


@settings(max_examples=100, deadline=None)
@given(responses)
def test_every_response_round_trips(response: Response) -> None:
    assert decode_as(encode(response), Response) == response


@settings(max_examples=100, deadline=None)
@given(dead_letters)
def test_every_dead_letter_round_trips(letter: DeadLetter) -> None:
    assert decode_as(encode(letter), DeadLetter) == letter


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(envelopes(), st.data())
def test_a_field_replaced_by_any_json_is_decoded_exactly_as_the_reference(env: Envelope, data: st.DataObject) -> None:
    """Wrong types, missing fields, extra fields: the codec accepts exactly what the reference accepts."""
    doc: dict[str, Any] = orjson.loads(encode(env))
    action = data.draw(st.sampled_from(["replace", "drop", "add", "nested"]))
    name = data.draw(st.sampled_from(sorted(doc)))
    if action == "replace":
        doc[name] = data.draw(json_values)
    elif action == "drop":
        del doc[name]
    elif action == "add":
        doc[data.draw(texts)] = data.draw(json_values)
    else:
        doc["request"]["params"][data.draw(st.sampled_from(["max_tokens", "temperature", "extra"]))] = \
            data.draw(json_values)
    raw = orjson.dumps(doc)
    assert codec(raw, Envelope) == reference(raw, Envelope)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_bytes_after_a_valid_prefix_never_escape_as_another_error(tail: bytes) -> None:
    """Whatever follows the start of a real event (truncation, invalid UTF-8, garbage): BadEvent or a valid event."""
    raw = b'{"schema_version":1,' + tail
    assert codec(raw, Envelope) == reference(raw, Envelope)


@settings(max_examples=200, deadline=None)
@given(envelopes(), st.integers(min_value=0), st.binary(min_size=1, max_size=4))
def test_corrupting_the_bytes_of_an_envelope_is_refused_or_agrees(env: Envelope, at: int, junk: bytes) -> None:
    raw = bytearray(encode(env))
    i = at % len(raw)
    raw[i:i + len(junk)] = junk
    assert codec(bytes(raw), Envelope) == reference(bytes(raw), Envelope)


@pytest.mark.parametrize("escape", [b"\\ud800", b"\\udfff", b"\\ud800\\u0041"])
def test_lone_surrogates_are_refused_like_orjson(escape: bytes) -> None:
    env = Envelope(request_id="r", tenant="t", created_at_ns=1, deadline_at_ns=2,
                   request=Request(messages=[Message(role="user", content="XX")]))
    raw = encode(env).replace(b'"XX"', b'"' + escape + b'"')
    with pytest.raises(BadEvent) as info:
        decode(raw)
    assert info.value.reason == "invalid_json"


@given(st.integers(-10**15, 10**19), st.integers(-10**15, 10**19), st.integers(-10**15, 10**19))
def test_a_hops_rounded_times_are_its_rounded_properties(produced: int, started: int, finished: int) -> None:
    hop = Hop(stage="s", worker_id="w", produced_at_ns=produced, received_at_ns=0, started_at_ns=started,
              finished_at_ns=finished)
    expected = (round(hop.queue_ms, 3), round(hop.service_ms, 3))
    assert hop.rounded_ms() == expected
    assert [str(x) for x in hop.rounded_ms()] == [str(x) for x in expected]  # -0.0 stays -0.0
