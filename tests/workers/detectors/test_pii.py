"""PII detectors: the labelled set's figures, and properties over generated text."""

from __future__ import annotations

import itertools
import re
import string

import phonenumbers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stdnum import iban as stdnum_iban
from stdnum import luhn

from bench.pii_eval import evaluate
from schemas.policy import PiiAction
from workers.detectors import pii
from workers.detectors.pii import INTERNATIONAL_PHONE_MIN_DIGITS, Finding, Redactor, detect


def test_labelled_set_precision_and_recall_per_type() -> None:
    scores, _, _ = evaluate()
    for entity, score in scores.items():
        assert score.precision >= 0.99 and score.recall >= 0.99, (entity, score)


def test_placeholders_are_typed_numbered_and_consistent() -> None:
    redactor = Redactor()
    first = redactor.redact("a@example.com wrote to b@example.com")
    second = redactor.redact("cc a@example.com, card 4111111111111111")
    assert first == "<EMAIL_1> wrote to <EMAIL_2>"
    assert second == "cc <EMAIL_1>, card <CREDIT_CARD_1>"
    assert redactor.counts == {"email": 3, "credit_card": 1}


def test_allow_keeps_the_value_and_block_is_reported() -> None:
    actions = {"ip_address": PiiAction.ALLOW, "us_ssn": PiiAction.BLOCK}
    redactor = Redactor(action=lambda e: actions.get(e, PiiAction.REDACT))
    out = redactor.redact("host 10.0.0.1, ssn 536-22-1234")
    assert out == "host 10.0.0.1, ssn <US_SSN_1>"
    assert redactor.blocked == {"us_ssn"}


filler = st.text(alphabet=string.ascii_letters + " ,.;!?\n", max_size=40)


@st.composite
def card_numbers(draw: st.DrawFn) -> str:
    prefix = draw(st.sampled_from(["4", "51", "55", "37", "6011"]))
    length = 15 if prefix == "37" else 16
    body = prefix + "".join(draw(st.lists(st.sampled_from(string.digits), min_size=length - len(prefix) - 1,
                                          max_size=length - len(prefix) - 1)))
    return body + luhn.calc_check_digit(body)


@st.composite
def ibans(draw: st.DrawFn) -> str:
    bban = "".join(draw(st.lists(st.sampled_from(string.digits), min_size=18, max_size=18)))
    return "DE" + stdnum_iban.calc_check_digits("DE00" + bban) + bban


@given(st.text(max_size=300))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_detect_never_fails_and_spans_are_exact(text: str) -> None:
    findings = detect(text)
    for f in findings:
        assert text[f.start:f.end] == f.text
    for a, b in itertools.pairwise(findings):
        assert a.end <= b.start


@given(filler, card_numbers(), filler)
def test_valid_cards_are_found_and_a_wrong_check_digit_is_not(before: str, card: str, after: str) -> None:
    text = f"{before} {card} {after}"
    assert ("credit_card", card) in {(f.entity, f.text) for f in detect(text)}
    wrong = card[:-1] + str((int(card[-1]) + 1) % 10)
    assert "credit_card" not in {f.entity for f in detect(f"{before} {wrong} {after}")}


@given(filler, ibans(), filler)
def test_valid_ibans_are_found(before: str, number: str, after: str) -> None:
    assert ("iban", number) in {(f.entity, f.text) for f in detect(f"{before} {number} {after}")}


@given(st.lists(st.one_of(filler, card_numbers(), ibans(),
                          st.sampled_from(["jane@example.com", "536-22-1234", "(415) 555-2671", "10.1.2.3",
                                           "AKIAIOSFODNN7EXAMPLE", "password: hunter22x"])), max_size=8))
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_redacted_text_has_nothing_left_to_find(parts: list[str]) -> None:
    redacted = Redactor().redact(" ".join(parts))
    assert detect(redacted) == []


def test_a_rejected_iban_is_not_reread_as_a_phone_number() -> None:
    # NL IBANs are 18 characters; this one has the right shape and a wrong check digit. Its tail, "5618 5576 85",
    # is a valid US number to libphonenumber, but nobody writes one in groups of 4-4-2.
    for text in ("IBAN NL91 ABNA 5618 5576 85", "Pay to NL91ABNA5618557685 today",
                 "GB82 WEST 1234 5698 7654 33 is wrong"):
        assert detect(text) == [], text
    # A number that stands on its own merits next to a rejected candidate is still found.
    text = "IBAN NL91 ABNA 5618 5576 85, or call 415 555 2671"
    assert [(f.entity, f.text) for f in detect(text)] == [("phone", "415 555 2671")]



def _detect_ungated(text: str) -> list[Finding]:
    """``detect`` as it was before the gates: every detector over every text."""
    rejected: list[tuple[int, int]] = []
    taken = pii._resolve([
        *[Finding("secret", m.start(), m.end(), m.group()) for m in pii._ANY_SECRET.pattern.finditer(text)],
        *[Finding("secret", m.start(1), m.end(1), m.group(1))
          for m in pii._ASSIGNED_SECRET.pattern.finditer(text)],
        *pii._emails(text), *pii._ibans(text, rejected), *pii._cards(text), *pii._ssns(text), *pii._ips(text)], [])
    masked = text
    for f in taken:
        masked = masked[:f.start] + "\n" * (f.end - f.start) + masked[f.end:]
    phones = list(pii._phones(masked, "US"))
    if rejected and any(pii._overlaps(p, rejected) for p in phones):
        strict = {(p.start, p.end) for p in pii._phones(masked, "US", phonenumbers.Leniency.STRICT_GROUPING)}
        phones = [p for p in phones if not pii._overlaps(p, rejected) or (p.start, p.end) in strict]
    return sorted(pii._resolve(phones, taken), key=lambda f: f.start)


_near_pii = st.text(alphabet=string.digits + " -.:@=_/" + "abcdeghkopsuxyAIKNLDEGBJz\n", max_size=80)


@given(st.lists(st.one_of(filler, _near_pii, card_numbers(), ibans(),
                          st.sampled_from(["jane@example.com", "536-22-1234", "(415) 555-2671", "10.1.2.3", "::1",
                                           "AKIAIOSFODNN7EXAMPLE", "password: hunter22x", "ghp_", "though",
                                           "sk_live_", "xoxb-", "-----BEGIN PRIVATE KEY-----"])), max_size=8))
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_the_gates_find_what_every_detector_over_every_text_finds(parts: list[str]) -> None:
    # detect() skips a detector on a text without what each of its matches has (an "@", enough digits, a secret's
    # prefix): the findings must be those of running them all.
    text = " ".join(parts)
    assert detect(text) == _detect_ungated(text)


# The patterns as they were written before each started with its first character's class (a lookbehind first).
_LOOKBEHIND_FIRST = {
    "_EMAIL": r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9-]{1,63}\.){1,8}[A-Za-z]{2,24}(?![\w-])",
    "_CARD": r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d])",
    "_IBAN": r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}",
    "_SSN": r"(?<![\d-])\d{3}([- ])\d{2}\1\d{4}(?![\d-])",
    "_IPV4": r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d)",
}


@given(st.lists(st.one_of(filler, _near_pii, card_numbers(), ibans(), st.text(max_size=20),
                          st.sampled_from(["jane@example.com", "a.b@c.de", "536-22-1234", "536 22 1234", "10.1.2.3",
                                           "1.2.3.4.5", "DE44 5001 0517 5407 3249 31", "é9", "_a@b.co", "x-1"])),
                max_size=8),
       st.sampled_from([" ", "", "-", ".", "\n", "é"]), st.integers(0, 12))
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_the_patterns_match_as_their_lookbehind_first_forms(parts: list[str], sep: str, pos: int) -> None:
    text = sep.join(parts)
    for name, before in _LOOKBEHIND_FIRST.items():
        pattern, old = getattr(pii, name), re.compile(before)
        assert [(m.span(), m.groups()) for m in pattern.finditer(text)] == \
            [(m.span(), m.groups()) for m in old.finditer(text)], name
        new_at, old_at = pattern.search(text, pos), old.search(text, pos)  # _ibans searches from a position
        assert (new_at and new_at.span()) == (old_at and old_at.span()), name


@pytest.mark.parametrize("text, number", [
    ("Ruf an: +43 1112", "+43 1112"),  # 6 digits with its country code: Austria has 4-digit numbers
    ("call +49 30 1234", "+49 30 1234"),
])
def test_the_shortest_international_numbers_are_found(text: str, number: str) -> None:
    assert [(f.entity, f.text) for f in detect(text)] == [("phone", number)]
    assert INTERNATIONAL_PHONE_MIN_DIGITS == 6


@pytest.mark.parametrize("text", ["order 123456 shipped", "in 2024 and 2025", "ticket #4711, room 12"])
def test_six_digits_that_are_no_number_stay_text(text: str) -> None:
    assert detect(text) == []
