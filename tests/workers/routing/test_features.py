from __future__ import annotations

from workers.routing.features import FEATURE_NAMES, extract, extract_messages, split_prompt

REPORT = " ".join(["The quarter closed with revenue of 4.8 million euros, slightly under the forecast, while costs "
                   "rose because of freight."] * 12)  # ~200 words, written for these tests
STORY = " ".join(["This week was long: my car broke down, the bus was late and I spilled coffee on my notes."] * 9)


def test_material_is_split_from_the_instruction() -> None:
    parts = split_prompt(f"Summarise this for my manager:\n\n{REPORT}")
    assert parts.instruction == "Summarise this for my manager:" and parts.material == REPORT
    features = extract(f"Summarise this for my manager:\n\n{REPORT}")
    assert features.material_words > 150 and features.instruction_words == 5
    values = features.as_dict()
    assert values["transform"] == values["transform_long_material"] == values["material_over_long"] == 1.0


def test_a_quoted_short_text_is_short_material() -> None:
    features = extract("Translate to German: 'Closed on Sundays and public holidays.'")
    assert 0 < features.material_words <= 60 and features.as_dict()["transform_long_material"] == 0.0


def test_a_story_the_answer_does_not_depend_on_is_not_material() -> None:
    assert extract(f"{STORY}\n\nAnyway, what's the capital of Peru?").material_words == 0
    assert extract(f"{STORY} Anyway, what's the capital of Peru?").material_words == 0


def test_demands_are_counted() -> None:
    plan = extract("Plan a zero downtime migration of a 3 TB database: list the steps, risks, rollback and budget.")
    assert plan.as_dict()["plan"] >= 3 and plan.as_dict()["constraints_log"] > 1
    assert extract("Prove that sqrt(2) is irrational.").as_dict()["proof"] >= 1
    assert extract("Write the complete README, about 2,000 words.").as_dict()["long_output"] == 1.0


def test_conversation_depth_and_fixed_shape() -> None:
    chat = [("system", "be brief"), ("user", "hi"), ("assistant", "hello"), ("user", "and in French?")]
    features = extract_messages(chat)
    assert features.as_dict()["conversation_depth_log"] > 0 and features.names == FEATURE_NAMES
    assert len(features.values) == len(FEATURE_NAMES) and extract("x") == extract("x")
