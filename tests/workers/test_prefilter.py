"""The prefiltered feature patterns find exactly what the patterns themselves find."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from workers.backends import local
from workers.detectors import pii
from workers.prefilter import (
    Prefiltered,
    Scanned,
    WordFamily,
    lowercase_twin,
    prefiltered,
    required_literals,
    word_family,
)
from workers.routing import features

DATA = Path(__file__).resolve().parents[2] / "bench" / "data"

PATTERNS = {f"{module.__name__}.{name}": value for module in (features, pii, local)
            for name, value in vars(module).items() if isinstance(value, Prefiltered)}

ADVERSARIAL = [
    "", " ", "and", "AND", "Sand", "a-b", "2+2=4", "x^2", "50 %", "∑ of π", "O(n log n)", "foo()", "a => b",
    "PLAN the ROADMAP", "Kelvin: \u212a", "\u212api", "ſolve this", "ſolve it", "İs it", "ıs it", "what's up",
    "What's the capital of Peru?", "Write 1,200 words", "```code```", "'a quoted span of text'", "A) first\nB) second",
    "three vendors", "tl;dr", "TLDR please", "c++ bug", "in-depth review", "in depth", "end-to-end",
    "thread-safe queue", "how does a B-tree work", "fix grammar", "fix the grammar", "password: hunter22x",
    "API_KEY=abcdef123456", "sk-proj-abcdefghijklmnopqrstuvwxyz", "AKIAABCDEFGHIJKLMNOP", "Passwd = 's3cr3t-v4lue'",
    "token: short", "AUTH-TOKEN:verylongtokenvalue",
]


def _texts() -> list[str]:
    texts = list(ADVERSARIAL)
    for path in sorted(DATA.glob("*.jsonl")):
        for line in path.read_bytes().splitlines():
            stack = [orjson.loads(line)]
            while stack:
                value = stack.pop()
                if isinstance(value, str):
                    texts.append(value)
                elif isinstance(value, dict):
                    stack.extend(value.values())
                elif isinstance(value, list):
                    stack.extend(value)
    return texts


def test_every_feature_pattern_is_prefiltered_with_literals() -> None:
    assert len(PATTERNS) >= 17
    assert all(p.literals for p in PATTERNS.values())


def test_prefiltered_patterns_find_exactly_what_the_patterns_find() -> None:
    texts = _texts()
    assert len(texts) > 1000
    for name, pattern in PATTERNS.items():
        for text in texts:
            assert pattern.findall(text) == pattern.pattern.findall(text), (name, text[:80])
            assert [m.span() for m in pattern.finditer(text)] == \
                [m.span() for m in pattern.pattern.finditer(text)], (name, text[:80])
            found, expected = pattern.search(text), pattern.pattern.search(text)
            assert (found and found.span()) == (expected and expected.span()), (name, text[:80])


def test_word_family_counts_and_tests_exactly_what_the_patterns_find() -> None:
    families = {name: p for name, p in PATTERNS.items() if isinstance(p, WordFamily)}
    assert len(families) >= 17
    assert all(p.twin is not None for p in families.values())
    texts = _texts()
    texts += [text.upper() for text in texts[:800]] + [text.swapcase() for text in texts[:800]]
    for name, pattern in families.items():
        for text in texts:
            assert pattern.count(text) == len(pattern.pattern.findall(text)), (name, text[:80])
            assert pattern.found(text) == (pattern.pattern.search(text) is not None), (name, text[:80])


def test_word_family_reads_a_scanned_text_as_the_text_itself() -> None:
    families = [p for p in PATTERNS.values() if isinstance(p, WordFamily)]
    texts = _texts()[::8]  # every eighth text: the short and long, ASCII and not, cased and not, of every set
    texts += [text.upper() for text in texts[:400]]
    for text in texts:
        scan = Scanned(text)
        for pattern in families:
            assert pattern.count_in(scan) == pattern.count(text), (pattern.pattern.pattern[:40], text[:80])
            assert pattern.found_in(scan) == pattern.found(text), (pattern.pattern.pattern[:40], text[:80])
            assert [m.span() for m in pattern.finditer_in(scan)] == [m.span() for m in pattern.finditer(text)]


def test_one_scan_finds_every_family_literal_in_a_short_text() -> None:
    from workers import prefilter

    literals = {literal for p in PATTERNS.values() if isinstance(p, WordFamily) for literal in p.literals or ()}
    texts = [t.lower() for t in _texts() if t.isascii() and len(t) < prefilter.SCAN_BELOW_CHARS]
    assert len(texts) > 1000
    for text in texts:
        present = prefilter._present(text)
        assert present == {literal for literal in literals if literal in text}, text[:80]


@pytest.mark.parametrize(("pattern", "flags", "text"), [
    (r"[A-E]\)\s", re.I, "b) one"), (r"[^'\n]{3}", re.I, "A'Bc"), (r"\bk\w+", re.I, "KPI kpi Kpi"),
    (r"\u212a", re.I, "k K"), (r"ſ", re.I, "s S"), (r"[^A-Z]+", re.I, "ab1CD 2"),
])
def test_lowercase_twin_matches_the_same_spans(pattern: str, flags: int, text: str) -> None:
    compiled = re.compile(pattern, flags)
    twin = lowercase_twin(compiled)
    assert twin is not None
    assert [m.span() for m in twin.finditer(text.lower())] == [m.span() for m in compiled.finditer(text)]


def test_lowercase_twin_declines_what_it_cannot_read() -> None:
    assert lowercase_twin(re.compile("abc")) is None  # case-sensitive already
    assert lowercase_twin(re.compile(r"a(?-i:b)c", re.I)) is None  # scoped flags
    assert lowercase_twin(re.compile(r"(a)\1", re.I)) is None  # a back reference
    family = word_family(r"\b(plan|kpis?)\b", re.I)
    assert family.count("Plan the KPIs, then the plan") == 3
    assert family.count("Kpi") == 1  # not ASCII: the pattern itself


@pytest.mark.parametrize(("pattern", "flags", "expected"), [
    (r"\b(plan|planning|roadmap)\b", re.I, {"plan", "planning", "roadmap"}),
    (r"\w+\(\)", 0, {"()"}),
    (r"[∑π]", 0, set()),  # nothing ASCII matches
    (r"k", re.I, {"k"}),
    (r"\u212a", re.I, {"k"}),  # the Kelvin sign matches k and K when case is ignored
    (r"\d+", 0, None),
    (r"a|\d", 0, None),
    (r"in[- ]depth", re.I, {"depth"}),
])
def test_required_literals(pattern: str, flags: int, expected: set[str] | None) -> None:
    found = required_literals(re.compile(pattern, flags))
    assert (None if found is None else set(found)) == expected


def test_non_ascii_text_always_runs_the_pattern() -> None:
    kelvin = prefiltered(r"\bkpi\b", re.I)
    assert kelvin.findall("\u212apI") == ["\u212apI"]
    assert kelvin.findall("KPI") == ["KPI"]
    assert kelvin.findall("no such thing") == []
