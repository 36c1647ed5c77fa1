"""The signed messages are built straight from the models (orjson over ``__dict__``): the bytes must stay those of the
``model_dump(mode="json")`` path they replaced, or every envelope sealed by an older worker would stop verifying."""

from __future__ import annotations

import hashlib
import hmac

import orjson
import pytest
from hypothesis import HealthCheck, given, settings

from schemas.envelope import (
    CacheResult,
    Envelope,
    FunctionTool,
    Message,
    ModelResult,
    Outcome,
    PolicyDecision,
    Request,
    Status,
    ToolCall,
    ToolsResult,
    Usage,
)
from tests.schemas.test_properties import envelopes
from workers import decisions
from workers.decisions import (
    DecisionKeys,
    _decision_message,
    decision_problem,
    envelope_claims,
    outcome_claims,
    request_digest,
    sign_decision,
)


def _digest_reference(env: Envelope) -> str:
    request = env.request.model_dump(mode="json", exclude={"reply_to"})
    payload = orjson.dumps([env.tenant, env.tier.value, env.principal.key_id if env.principal else None, request],
                           option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(payload).hexdigest()


def _message_reference(env: Envelope) -> bytes:
    assert env.policy is not None
    decision = env.policy.model_dump(mode="json", exclude={"signature", "key_id"})
    return orjson.dumps(["decision", env.request_id, env.tenant, decision], option=orjson.OPT_SORT_KEYS)


KEYS = DecisionKeys.parse("k1:0123456789abcdef0123")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(envelopes())
def test_signed_bytes_are_the_model_dump_documents(env: Envelope) -> None:
    env.request.params.response_format = {"type": "json_schema", "z": [1, 2.5, {"b": None, "a": True}]}
    env.policy = PolicyDecision(policy_version="v3", allowed_models=["m2", "m1"], pii_found={"phone": 1, "email": 2},
                                injection_score=0.125, semantic_threshold=0.9, decisions=["allow"],
                                reserved_micros=1500, reservation_id="r1")
    env.route = ["cache", "model", "postprocess", "audit"]
    sign_decision(env, KEYS)
    assert request_digest(env) == _digest_reference(env)
    assert _decision_message(env) == _message_reference(env)
    env.route.pop(0)  # the cache stage pops itself off before it checks
    assert decision_problem(env, KEYS, "cache") is None


@pytest.mark.parametrize("turns", [
    [Message(role="user", content="hi")],
    [Message(role="user", content="add 2 and 3"),
     Message(role="assistant", content="", tool_calls=[ToolCall(id="c1", name="add", arguments={"b": 3, "a": 2})]),
     Message(role="tool", content="5", tool_call_id="c1"), Message(role="user", content="thanks")],
    [Message(role="assistant", content="x", tool_calls=[]), Message(role="tool", content="y", tool_call_id="")],
])
def test_the_digest_of_tool_turns_and_tools_is_the_model_dump_documents(turns: list[Message]) -> None:
    """Messages with tool turns (and the request's tools) take the generic path of request_digest."""
    env = Envelope(request_id="r1", tenant="acme", created_at_ns=1, deadline_at_ns=2,
                   request=Request(messages=turns, reply_to="t.replies.a", tool_choice="required", tools_mode="client",
                                   tools=[FunctionTool(name="add", parameters={"type": "object", "z": 1, "a": [2]})]))
    assert request_digest(env) == _digest_reference(env)
    env.request.tools, env.request.tool_choice, env.request.tools_mode = [], "auto", "auto"
    assert request_digest(env) == _digest_reference(env)


@pytest.mark.parametrize("secret_len", [16, 63, 64, 65, 200])
def test_the_precomputed_hmac_is_hmac_sha256(secret_len: int) -> None:
    secret = "".join(chr(ord("a") + i % 26) for i in range(secret_len))
    keys = DecisionKeys.parse(f"k1:{secret},k2:another-secret-of-enough-length")
    for message in (b"", b"x", b"decision" * 300):
        kid, signature = keys.sign(message)
        assert kid == "k1"
        assert signature == hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
        assert keys.verify(message, "k1", signature)
        assert not keys.verify(message + b".", "k1", signature)
        assert not keys.verify(message, "k2", signature)
        assert keys.verify(message, "k2", hmac.new(b"another-secret-of-enough-length", message,
                                                   hashlib.sha256).hexdigest())


def test_macs_and_digests_looked_up_by_message_are_the_ones_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A message MACed (or a request digested) before is looked up by its bytes: the same MAC whichever instance of
    the key asks, never another key's, again after the oldest entries were dropped, and long messages not kept."""
    monkeypatch.setattr(decisions, "_MEMO_ENTRIES", 4)
    secret = "a-memo-test-secret-0123"
    first, second = DecisionKeys.parse(f"m1:{secret}"), DecisionKeys.parse(f"m1:{secret}")
    other = DecisionKeys.parse("m1:another-memo-test-secret")
    messages = [b"decision %d" % i for i in range(10)] + [b"x" * (decisions._MEMO_MAX_BYTES + 1)]
    for _round in range(2):
        for message in messages:
            expected = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
            assert first.sign(message) == ("m1", expected) == second.sign(message)
            assert second.verify(message, "m1", expected)
            assert other.sign(message)[1] == hmac.new(b"another-memo-test-secret", message, hashlib.sha256).hexdigest()
            assert not other.verify(message, "m1", expected)
    assert len(decisions._MACS[secret.encode()]) <= 4
    assert all(len(message) <= decisions._MEMO_MAX_BYTES for message in decisions._MACS[secret.encode()])
    env = Envelope(request_id="r1", tenant="acme", created_at_ns=1, deadline_at_ns=2,
                   request=Request(messages=[Message(role="user", content="hi")]))
    for content in ("hi", "hello", "hi"):  # a changed request gets its own digest, and back
        env.request.messages[0].content = content
        assert request_digest(env) == _digest_reference(env)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(envelopes())
def test_envelope_claims_are_outcome_claims(env: Envelope) -> None:
    """envelope_claims writes the list outcome_claims writes, with and without each section it reads."""
    env.outcome = Outcome(status=Status.CACHE_HIT, code="c", stage="cache")
    for model, tools, cache in ((None, None, None),
                                (ModelResult(model="m", usage=Usage(input_tokens=3, cached_input_tokens=1,
                                                                    output_tokens=2), cost_micros=7),
                                 ToolsResult(cost_micros=5), CacheResult(saved_micros=11))):
        env.model, env.tools, env.cache = model, tools, cache
        assert envelope_claims(env) == outcome_claims(
            request_id=env.request_id, tenant=env.tenant, status=str(env.outcome.status), code=env.outcome.code,
            stage=env.outcome.stage, model=model.model if model else None, usage=model.usage if model else Usage(),
            cost_micros=(model.cost_micros if model else 0) + (tools.cost_micros if tools else 0),
            saved_micros=cache.saved_micros if cache else 0, task_id=env.request.task_id)
