"""The near-miss guard rejects meaning flips and lets harmless rewordings through."""

from __future__ import annotations

import pytest

from workers.cache.semantic_guard import entities, near_miss, numbers, units


@pytest.mark.parametrize(("query", "candidate", "reason"), [
    ("Is X safe?", "Is X not safe?", "negation"),
    ("Is aspirin safe during pregnancy?", "Isn't aspirin safe during pregnancy?", "negation"),
    ("Can I get a refund after 30 days?", "Can I get a refund after 60 days?", "number"),
    ("Can I get a refund after two weeks?", "Can I get a refund after 3 weeks?", "number"),
    ("How long does 5 km take on foot?", "How long does 5 miles take on foot?", "unit"),
    ("Is 30 °C warm?", "Is 30 °F warm?", "unit"),
    ("How do I increase my rate limit?", "How do I decrease my rate limit?", "antonym"),
    ("Should I rotate keys before the migration?", "Should I rotate keys after the migration?", "antonym"),
    ("Is Python good for data pipelines?", "Is Java good for data pipelines?", "entity"),
    ("What does plan v2 include?", "What does plan v3 include?", "entity"),
    ("How do I reset my password?", "How do I reset my admin password?", "content"),
    ("How do I reset my password?", "How do I delete my password?", "content"),
])
def test_meaning_flips_are_rejected(query: str, candidate: str, reason: str) -> None:
    assert near_miss(query, candidate) == reason
    assert near_miss(candidate, query) == reason


@pytest.mark.parametrize(("query", "candidate"), [
    ("How do I reset my password?", "how can I reset my password"),
    ("How do I reset my password?", "Could you please tell me how to reset my password?"),
    ("What is the price of the pro plan?", "What does the pro plan cost?"),
    ("Can I get 1,000 tokens?", "can i get 1000 tokens"),
    ("Refund within twenty days?", "refund within 20 days?"),
    ("Is aspirin safe?", "is Aspirin safe"),
    ("I can't log in", "I cannot log in"),
])
def test_harmless_rewordings_pass(query: str, candidate: str) -> None:
    assert near_miss(query, candidate) is None


def test_extractors() -> None:
    assert numbers("1,000 or 2.50 or five") == ["1000", "2.5", "5"]
    assert units("5km and 20% in USD") == {"km", "pct", "usd"}
    assert entities("How does ACME use GPT-4o in Berlin?") == {"acme", "gpt-4o", "berlin"}
