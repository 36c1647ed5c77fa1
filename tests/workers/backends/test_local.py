from __future__ import annotations

from schemas.envelope import Message, Passage
from workers.backends.base import ModelCall
from workers.backends.local import LocalBackend, _answer, answer, sample
from workers.routing.catalog import LatencyProfile
from workers.routing.tokens import count_tokens

PASSAGES = [
    Passage(doc_id="refunds.md", score=0.82, text="Annual plans can be refunded in full within 30 days of purchase. "
            "After 30 days, refunds are prorated for the unused months. Monthly plans are not refundable."),
    Passage(doc_id="billing.md", score=0.5, text="Invoices are issued on the first day of each billing cycle. "
            "VAT is added for EU customers."),
]


def test_answers_from_the_most_relevant_passage_with_a_citation() -> None:
    text = answer("When are invoices issued?", PASSAGES)
    assert text == "Invoices are issued on the first day of each billing cycle [billing.md]."
    assert "refunded in full within 30 days" in answer("What is the refund policy for annual plans?", PASSAGES)


def test_summaries_are_bullets_and_honour_the_count() -> None:
    text = answer("Summarise the refund rules in two bullet points.", PASSAGES)
    assert text.count("\n- ") == 1 and text.startswith("- ")


def test_no_source_gives_an_honest_generic_reply() -> None:
    assert answer("How do I rotate an API key?", []).startswith(
        'I couldn\'t find a document that answers "How do I rotate an API key?"')
    assert answer("Hello!", []).startswith("Hello!")


def test_the_no_source_reply_is_counted_from_its_parts() -> None:
    # Questions that end or start on letters, digits, punctuation, underscores, quotes, an ellipsis when cut.
    questions = ["How do I rotate an API key?", "  padded question 12345  ", '"quoted" 9', "snake_case_name", "",
                 "x" * 200, "Why? " * 30, "ünïcödé wörds ending in 7", "…", "a\"b", "数字 123 and ß"]
    for question in questions:
        text, tokens = _answer(question, [])
        assert text.startswith("I couldn't find a document")
        assert tokens == count_tokens(text)
    assert answer("Classify this ticket: the invoice total is wrong.", []).startswith("Category: billing")
    pasted = ("Summarise the following: The outage began at 09:10 UTC after a config push. Traffic tripled within "
              "minutes. Engineers rolled back the change at 09:40.")
    assert "rolled back" in answer(pasted, [])


def _call(prompt: str, passages: list[Passage] | None = None, **fields: object) -> ModelCall:
    return ModelCall(request_id=prompt, model="m", messages=[Message(role="user", content=prompt)],
                     passages=passages or [], **fields)  # type: ignore[arg-type]


async def test_usage_truncation_and_prefix_cache() -> None:
    backend = LocalBackend(latency_scale=0)
    first, second = await backend.complete([_call("refund policy?", PASSAGES), _call("refunds?", PASSAGES)])
    assert first.usage.input_tokens > 20 and first.usage.cached_input_tokens == 0
    assert 0 < second.usage.cached_input_tokens < second.usage.input_tokens  # the same context prefix again
    (short,) = await backend.complete([_call("refund policy?", PASSAGES, max_tokens=3)])
    assert short.usage.output_tokens <= 3 and short.finish_reason == "length"


async def test_latency_emulation_sleeps_one_batch_time_per_call() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    profile = LatencyProfile(overhead_ms=10, prefill_ms_per_1k_tokens=0, decode_ms_per_token=1,
                             decode_batch_slowdown=0)
    backend = LocalBackend(latency_scale=0.5, sleep=sleep)
    replies = await backend.complete([_call("hi", latency=profile), _call("hello", latency=profile)])
    longest = max(r.usage.output_tokens for r in replies)
    assert slept == [(10 + longest) * 0.5 / 1000]
    assert backend.calls == 1


async def test_a_second_sample_differs_with_the_seed_and_is_billed() -> None:
    backend = LocalBackend(latency_scale=0)
    messages = [Message(role="user", content="When is rent due and what is the late fee?")]
    passages = [Passage(doc_id="lease", text="Rent is due on the first day of the month. A late fee of 50 dollars "
                                             "applies after the fifth day. Tenants pay by bank transfer.", score=0.9)]
    (one,) = await backend.complete([ModelCall(request_id="r", model="m", messages=messages, passages=passages)])
    (two,) = await backend.complete([ModelCall(request_id="r", model="m", messages=messages, passages=passages,
                                               samples=2, seed=3, temperature=0.7)])
    assert two.text == one.text and len(two.alternatives) == 1 and two.alternatives[0] != one.text
    assert two.usage.output_tokens > one.usage.output_tokens
    assert sample(one.text, 0) == one.text and sample(one.text, 1) != sample(one.text, 2)
