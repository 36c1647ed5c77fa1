"""Output guardrails: redaction, blocked terms, length, structured output; the terminal outcome."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from schemas.envelope import CacheResult, Envelope, GenerationParams, Message, Passage, RetrievalResult, Status
from workers import postprocess, structured_output
from workers.context import StageContext
from workers.postprocess import PostprocessContext

MakeEnvelope = Callable[..., Envelope]
SCHEMA = {"type": "json_schema", "json_schema": {"name": "r", "schema": {
    "type": "object", "required": ["city", "days"], "additionalProperties": False,
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}}}}}


def answered(make_envelope: MakeEnvelope, answer: str, response_format: dict[str, Any] | None = None) -> Envelope:
    env = make_envelope(params=GenerationParams(response_format=response_format))
    env.route = ["audit"]
    env.answer = answer
    return env


async def run(env: Envelope, **options: Any) -> Envelope:
    (out,) = await postprocess.process([env], PostprocessContext(stage="postprocess", **options))
    return out


async def test_plain_answer_finishes_ok_and_goes_to_audit(make_envelope: MakeEnvelope) -> None:
    env = await run(answered(make_envelope, "Refunds take 5 days."))
    assert env.outcome is not None and env.outcome.status is Status.OK and env.outcome.stage == "postprocess"
    assert env.route == ["audit"] and env.answer == "Refunds take 5 days."


async def test_cache_hit_keeps_its_status(make_envelope: MakeEnvelope) -> None:
    env = answered(make_envelope, "cached")
    env.cache = CacheResult(outcome="hit", kind="exact")
    assert (await run(env)).outcome.status is Status.CACHE_HIT  # type: ignore[union-attr]


async def test_pii_in_the_answer_is_redacted(make_envelope: MakeEnvelope) -> None:
    text = "Mail jane.doe@example.com or call (212) 555-0123, card 4111 1111 1111 1111"
    env = await run(answered(make_envelope, text))
    assert env.answer is not None
    assert "jane.doe" not in env.answer and "555-0123" not in env.answer and "4111" not in env.answer
    assert env.postprocess is not None and env.postprocess.actions == ["pii_redacted:card=1,email=1,phone=1"]


async def test_blocked_term_denies_the_answer(make_envelope: MakeEnvelope) -> None:
    env = await run(answered(make_envelope, "The Project Zeus launch is Monday"), blocked_terms=("project zeus",))
    assert env.outcome is not None and env.outcome.status is Status.DENIED and env.outcome.code == "output_blocked"
    assert env.answer is None and "zeus" not in env.outcome.message.lower()
    ok = await run(answered(make_envelope, "Zeusian weather"), blocked_terms=("zeus",))
    assert ok.outcome is not None and ok.outcome.status is Status.OK  # whole words only


async def test_long_free_text_is_cut(make_envelope: MakeEnvelope) -> None:
    env = await run(answered(make_envelope, "x" * 50), max_answer_chars=10)
    assert env.answer == "x" * 10 and env.postprocess is not None and env.postprocess.actions == ["truncated:50->10"]


@pytest.mark.parametrize(("answer", "repair"), [
    ('{"city": "Oslo", "days": 3}', None),
    ('```json\n{"city": "Oslo", "days": 3}\n```', "code_fence"),
    ('Sure! Here it is: {"city": "Oslo", "days": 3} Enjoy.', "extracted"),
])
async def test_structured_output_valid_or_repaired(make_envelope: MakeEnvelope, answer: str,
                                                   repair: str | None) -> None:
    env = await run(answered(make_envelope, answer, SCHEMA))
    assert env.outcome is not None and env.outcome.status is Status.OK
    assert env.answer is not None and orjson.loads(env.answer) == {"city": "Oslo", "days": 3}
    assert env.postprocess is not None and env.postprocess.structured_output_valid is True
    assert env.postprocess.actions == ([f"structured_output_repaired:{repair}"] if repair else [])


@pytest.mark.parametrize(("answer", "why"), [
    ('{"city": "Oslo"}', "missing required property 'days'"),
    ('{"city": "Oslo", "days": 0}', "$.days: below 1"),
    ('{"city": "Oslo", "days": 2, "x": 1}', "unexpected property 'x'"),
    ("I cannot answer that.", "not JSON"),
])
async def test_structured_output_invalid_is_a_clear_failure(make_envelope: MakeEnvelope, answer: str, why: str) -> None:
    env = await run(answered(make_envelope, answer, SCHEMA))
    assert env.outcome is not None and env.outcome.status is Status.FAILED
    assert env.outcome.code == "structured_output_invalid" and why in env.outcome.message
    assert env.answer is None and env.postprocess is not None and env.postprocess.structured_output_valid is False


async def test_json_object_and_wrapping(make_envelope: MakeEnvelope) -> None:
    env = await run(answered(make_envelope, "[1, 2]", {"type": "json_object"}))
    assert env.outcome is not None and env.outcome.status is Status.FAILED
    wrap = {"type": "json_schema", "json_schema": {"schema": {
        "type": "object", "required": ["summary"], "properties": {"summary": {"type": "string"}}}}}
    env = await run(answered(make_envelope, "It is sunny.", wrap))
    assert env.answer is not None and orjson.loads(env.answer) == {"summary": "It is sunny."}


async def test_too_long_json_fails_rather_than_breaks(make_envelope: MakeEnvelope) -> None:
    env = await run(answered(make_envelope, '{"city": "Oslo", "days": 3}', SCHEMA), max_answer_chars=5)
    assert env.outcome is not None and env.outcome.code == "output_too_long"


async def test_hooks_see_answered_requests_and_cannot_fail_them(make_envelope: MakeEnvelope) -> None:
    seen: list[str] = []

    async def fill_cache(batch: list[Envelope], ctx: StageContext) -> None:
        seen.extend(e.request_id for e in batch)
        raise RuntimeError("cache down")

    ok, denied = answered(make_envelope, "fine"), answered(make_envelope, "secret zeus")
    ctx = PostprocessContext(stage="postprocess", blocked_terms=("zeus",), after_finish=(fill_cache,))
    out = await postprocess.process([ok, denied], ctx)
    assert seen == [ok.request_id] and len(out) == 2


def test_validator_types() -> None:
    assert structured_output.validate(True, {"type": "integer"}) is not None
    assert structured_output.validate(3.0, {"type": "integer"}) is None
    assert structured_output.validate(None, {"type": ["string", "null"]}) is None
    assert structured_output.validate([1, "a"], {"type": "array", "items": {"type": "integer"}}) == \
        "$[1]: expected integer, got string"


async def test_sampled_answers_carry_the_evaluators_verdicts(make_envelope: MakeEnvelope) -> None:
    from schemas.envelope import Passage, RetrievalResult

    env = answered(make_envelope, "Refunds are paid within 5 business days [refunds].")
    env.retrieval = RetrievalResult(passages=[Passage(doc_id="refunds", score=0.9,
                                                      text="Refunds are paid within 5 business days.")])
    evaluation = (await run(env)).postprocess.evaluation  # type: ignore[union-attr]
    assert evaluation is not None
    assert (evaluation.grounded, evaluation.refusal, evaluation.structured_valid) == (True, False, None)
    skipped = await run(answered(make_envelope, "Refunds take 5 days."), eval_sample_rate=0.0)
    assert skipped.postprocess is not None and skipped.postprocess.evaluation is None


async def test_invalid_structured_output_is_evaluated_too(make_envelope: MakeEnvelope) -> None:
    env = await run(answered(make_envelope, "no json here at all", {"type": "json_object"}))
    assert env.outcome is not None and env.outcome.code == "structured_output_invalid"
    assert env.postprocess is not None and env.postprocess.evaluation is not None
    assert env.postprocess.evaluation.structured_valid is False


async def test_passage_text_and_session_turns_leave_once_answered(make_envelope: MakeEnvelope) -> None:
    env = answered(make_envelope, "Refunds take 5 days.")
    env.retrieval = RetrievalResult(passages=[Passage(doc_id="d1", score=0.9, text="Refunds take 5 days.")],
                                    confidence=0.9, session_turns=[Message(role="user", content="hi")])
    out = await run(env, eval_sample_rate=1.0)
    assert out.postprocess is not None and out.postprocess.evaluation is not None
    assert out.postprocess.evaluation.grounded_share == 1.0  # evaluated on the text before it left
    assert out.retrieval is not None and [(p.doc_id, p.text) for p in out.retrieval.passages] == [("d1", "")]
    assert out.retrieval.session_turns == []
