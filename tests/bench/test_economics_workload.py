"""The economics workload generator: deterministic, and each kind of ask is what its label says."""

from __future__ import annotations

import string

from bench.economics_workload import FAMILIES, FAMILY, generate, render


def test_same_seed_same_workload_other_seed_other_workload() -> None:
    assert generate(200, seed=3) == generate(200, seed=3)
    assert [a.text for a in generate(200, seed=3)] != [a.text for a in generate(200, seed=4)]


def test_every_template_uses_every_slot_and_pairs_are_complete() -> None:
    for family in FAMILIES:
        for template in family.templates:
            used = {name for _, name, _, _ in string.Formatter().parse(template) if name}
            assert used == set(family.slots), (family.name, template)
        for slot in family.slots.values():
            assert len(set(slot.values)) == len(slot.values) >= 2
            assert not slot.paired or len(slot.values) % 2 == 0


def test_each_kind_relates_to_its_source_as_labelled() -> None:
    asks = generate(1500, seed=11)
    kinds = {a.kind for a in asks}
    assert kinds == {"new", "repeat", "paraphrase", "near_miss"}
    for ask in asks:
        assert ask.tier == FAMILY[ask.meaning[0]].tier
        assert ask.text == render(ask.meaning, ask.template, ask.style)
        if ask.source is None:
            assert ask.kind == "new"
            continue
        source = asks[ask.source]
        assert source.index < ask.index and source.tenant == ask.tenant
        if ask.kind == "repeat":
            assert (ask.text, ask.meaning) == (source.text, source.meaning)
        elif ask.kind == "paraphrase":
            assert ask.meaning == source.meaning and ask.text != source.text
        else:
            assert ask.kind == "near_miss" and ask.flip is not None
            assert ask.meaning[0] == source.meaning[0]
            changed = [a != b for a, b in zip(ask.meaning[1], source.meaning[1], strict=True)]
            assert sum(changed) == 1
            earlier = {a.meaning for a in asks[:ask.index] if a.tenant == ask.tenant}
            assert ask.meaning not in earlier  # a near miss is a question this tenant has not asked yet
