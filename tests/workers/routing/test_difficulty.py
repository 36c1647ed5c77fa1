from __future__ import annotations

import pytest

from workers.routing.difficulty import estimate


@pytest.mark.parametrize(("prompt", "tier"), [
    ("Hello!", "small"),
    ("What is the refund policy?", "small"),
    ("Classify this ticket: the invoice total is wrong.", "small"),
    ("Explain why the p99 latency is much higher than the p50 in our dashboard.", "medium"),
    ("Write a SQL query that counts orders per customer in the last 30 days.", "medium"),
    ("Implement a consistent-hashing ring in Rust with virtual nodes, explain the algorithm's complexity, and "
     "compare it with rendezvous hashing.", "large"),
    ("Solve 3x + 2y = 16 and 5x - y = 5, then compute the probability that x + y < 1 in the unit square.", "large"),
])
def test_tiers(prompt: str, tier: str) -> None:
    assert estimate(prompt).tier == tier


def test_a_confident_passage_needs_less_model() -> None:
    prompt = "Explain how refunds for annual plans work."
    alone, grounded = estimate(prompt), estimate(prompt, retrieval_confidence=0.9, has_passages=True)
    assert grounded.score < alone.score
    assert "retrieval confidence 0.90" in grounded.explain()


def test_more_parts_more_difficulty() -> None:
    one = estimate("What does error E1 mean?")
    many = estimate("What does error E1 mean? Why does it happen? How do I fix it? Will it recur?")
    assert many.score > one.score and "4 parts" in many.signals


def test_deterministic_and_bounded() -> None:
    prompt = "why " * 2000 + "```def f(): return 1 + 2```"
    assert estimate(prompt) == estimate(prompt)
    assert 0.0 <= estimate(prompt).score <= 1.0


LONG_REPORT = " ".join(["Revenue for the quarter was 4.8 million euros, three percent below the forecast, because a "
                        "heatwave cut garden-furniture sales in the north."] * 10)  # ~210 words, written for this test


def test_a_long_document_to_transform_is_not_simple() -> None:
    # The defect: summarise / translate / classify / extract *subtracted*, so a 200-word report went to small.
    for verb in ("Summarise this:", "Translate this into German:", "Classify this as finance or tech:",
                 "Extract every number below as JSON:"):
        difficulty = estimate(f"{verb}\n\n{LONG_REPORT}")
        assert difficulty.tier != "small", verb
        assert "simple task" not in difficulty.signals
    assert estimate("Translate to German: 'where is the station?'").tier == "small"
