"""Online evaluators: groundedness, structured output, refusals, SLO met, and the sampling decision."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from schemas.envelope import (
    Envelope,
    Evaluation,
    GenerationParams,
    Passage,
    PostprocessResult,
    RetrievalResult,
    Status,
)
from schemas.response import Response
from workers import evaluators
from workers.embedding import normalise_text

MakeEnvelope = Callable[..., Envelope]
REFUNDS = Passage(doc_id="refunds", score=0.8,
                  text="Refunds are paid to the original card within 5 business days. Annual plans are prorated.")
SSO = Passage(doc_id="sso", score=0.6, text="Single sign-on is configured under Settings, Security, SAML.")


def test_every_sentence_supported_is_fully_grounded() -> None:
    answer = "Refunds are paid to the original card within 5 business days [refunds]. Annual plans are prorated."
    assert evaluators.grounded_share(answer, [REFUNDS, SSO]) == 1.0


def test_an_invented_sentence_lowers_the_share() -> None:
    answer = ("Refunds are paid to the original card within 5 business days. "
              "Every customer also receives a free upgrade to the premium tier next month.")
    assert evaluators.grounded_share(answer, [REFUNDS]) == 0.5


def test_support_must_come_from_one_passage_and_stems_match() -> None:
    # "refunded" ≈ "refund", "days" ≈ "day": inflection does not make a supported sentence unsupported.
    assert evaluators.grounded_share("The refund is paid within 5 business days.", [REFUNDS]) == 1.0
    # Half from each passage is not support: the sentence stitches two sources into a claim neither makes.
    stitched = "Refunds to the card take business days under SAML security settings."
    assert evaluators.grounded_share(stitched, [REFUNDS, SSO]) == 0.0


def test_groundedness_does_not_apply_without_passages_or_claims() -> None:
    assert evaluators.grounded_share("Refunds take 5 days.", []) is None
    assert evaluators.grounded_share("Hello!", [REFUNDS]) is None


def test_bullets_and_citations_are_not_words() -> None:
    answer = "- Refunds are paid to the original card [refunds].\n- Annual plans are prorated [refunds]."
    assert evaluators.answer_sentences(answer) == ["Refunds are paid to the original card .",
                                                   "Annual plans are prorated ."]
    assert evaluators.grounded_share(answer, [REFUNDS]) == 1.0


@pytest.mark.parametrize("answer", [
    "I'm sorry, but I can't help with that request.",
    "I cannot provide legal advice.",
    "As an AI language model, I do not have opinions.",
    "I couldn't find a document that answers \"x\", so I can't give a grounded answer.",
    "I won't share the admin password.",
    "I must decline to answer this.",
])
def test_refusals_are_detected(answer: str) -> None:
    assert evaluators.is_refusal(answer)


@pytest.mark.parametrize("answer", [
    "Refunds are paid within 5 days [refunds].",
    "You can't reuse an old invoice number; create a credit note instead.",
    "Sorry for the wait: your refund was paid on Monday.",
    "Refunds take 5 days. " + "Details follow. " * 30 + "I can't help with that is what the old bot said.",
])
def test_answers_that_help_are_not_refusals(answer: str) -> None:
    assert not evaluators.is_refusal(answer)


def test_sampling_is_stable_and_close_to_the_rate() -> None:
    ids = [f"req-{i}" for i in range(20_000)]
    chosen = [rid for rid in ids if evaluators.sampled(rid, 0.25)]
    assert 0.23 < len(chosen) / len(ids) < 0.27
    assert chosen == [rid for rid in ids if evaluators.sampled(rid, 0.25)]
    assert all(evaluators.sampled(rid, 1.0) for rid in ids[:100])
    assert not any(evaluators.sampled(rid, 0.0) for rid in ids[:100])


def test_evaluate_an_answered_envelope(make_envelope: MakeEnvelope) -> None:
    env = make_envelope(params=GenerationParams(response_format={"type": "json_object"}))
    env.retrieval = RetrievalResult(passages=[REFUNDS])
    env.postprocess = PostprocessResult(structured_output_valid=True)
    env.answer = "Refunds are paid to the original card within 5 business days."
    assert evaluators.evaluate(env, grounded_min=0.8) == Evaluation(grounded_share=1.0, grounded=True,
                                                                    structured_valid=True, refusal=False)
    env.answer += " Premium customers get a bonus voucher with every refund request they file."
    verdict = evaluators.evaluate(env, grounded_min=0.8)
    assert (verdict.grounded_share, verdict.grounded) == (0.5, False)


def test_evaluate_a_refused_structured_answer_judges_only_the_structure(make_envelope: MakeEnvelope) -> None:
    env = make_envelope()
    env.postprocess = PostprocessResult(structured_output_valid=False)
    env.answer = None
    assert evaluators.evaluate(env, grounded_min=0.8) == Evaluation(structured_valid=False)


def _response(status: Status, *, completed: int, deadline: int) -> Response:
    return Response(request_id="r", tenant="acme", status=status, completed_at_ns=completed, deadline_at_ns=deadline)


def test_slo_met_is_answered_by_the_deadline() -> None:
    assert evaluators.slo_met(_response(Status.OK, completed=10, deadline=10)) is True
    assert evaluators.slo_met(_response(Status.DENIED, completed=5, deadline=10)) is True
    assert evaluators.slo_met(_response(Status.OK, completed=11, deadline=10)) is False
    assert evaluators.slo_met(_response(Status.DEADLINE_EXCEEDED, completed=5, deadline=10)) is False
    assert evaluators.slo_met(_response(Status.OK, completed=5, deadline=0)) is None  # written before deadlines


@given(st.lists(st.sampled_from(["i", "I'm", "am", "sorry", "afraid", ",", "but", "can't", "cannot", "will", "won't",
                                 "unable", "to", "help", "must", "decline", "refuse", "as", "an", "ai", "AI",
                                 "language model", "this", "that", "is", "not", "something", "do", "have", "enough",
                                 "information", "answer", "Sure", "here", "'s", "the", "I can't help",
                                 "I am not able to assist", "that is not something I can", "I'm sorry, but",
                                 "I must decline", "As an AI", "I do not have enough information to answer",
                                 "I refuse", "I am afraid but", "I am unable to comply"]), max_size=16))
@example(["I can't help"]).via("each refusal on its own")
@example(["I won't", "help"]).via("each refusal on its own")
@example(["that is not something I can"]).via("each refusal on its own")
@example(["I am not able to assist"]).via("each refusal on its own")
@example(["I do not have enough information to answer"]).via("each refusal on its own")
@example(["I'm sorry, but"]).via("each refusal on its own")
@example(["I am afraid but"]).via("each refusal on its own")
@example(["As an AI"]).via("each refusal on its own")
@example(["I must decline"]).via("each refusal on its own")
@example(["I refuse"]).via("each refusal on its own")
@example(["I am unable to comply"]).via("each refusal on its own")
def test_the_refusal_words_gate_only_skips_texts_the_pattern_cannot_match(words: list[str]) -> None:
    answer = " ".join(words)
    opening = normalise_text(answer[:evaluators._REFUSAL_WINDOW])
    assert evaluators.is_refusal(answer) == (evaluators._REFUSAL.search(opening) is not None)


# The refusal pattern as it was written before each alternative started with its first letter: \b, then the words.
_REFUSAL_WITH_LEADING_BOUNDARY = re.compile(
    r"\b(?:"
    r"i (?:am )?(?:sorry|afraid),? but\b"
    r"|i (?:can not|will not|am unable to|am not able to|must decline to|have to decline to|do not have enough "
    r"information to) (?:help|assist|answer|provide|comply|give|share|do|fulfil|fulfill|complete|respond)"
    r"|i must decline|i have to decline|i refuse\b"
    r"|as an ai(?: language model)?\b"
    r"|(?:this|that) is not something i can\b"
    r")")


@given(st.lists(st.sampled_from(["i", "I'm", "am", "sorry", "afraid", ",", "but", "can't", "will", "unable", "to",
                                 "help", "decline", "refuse", "as", "an", "ai", "this", "that", "is", "not",
                                 "something", "x", "_", "1", "é", "-", "Ｉ", "I refuse", "As an AI", "this is not",
                                 "something I can", "I must decline"]), max_size=12),
       st.sampled_from([" ", "", "-", "\n", "  "]))
@example(["xi", "refuse"], " ").via("a letter before the i")
@example(["é", "I refuse"], "").via("a non-ASCII letter before the i")
@example(["_", "As an AI"], "").via("an underscore before the a")
@example(["1", "this is not", "something I can"], "").via("a digit before the t")
@example(["-", "I must decline"], "").via("a hyphen before the i")
def test_the_refusal_pattern_matches_where_its_leading_boundary_form_does(words: list[str], sep: str) -> None:
    opening = normalise_text(sep.join(words))
    assert (evaluators._REFUSAL.search(opening) is None) == (_REFUSAL_WITH_LEADING_BOUNDARY.search(opening) is None)
