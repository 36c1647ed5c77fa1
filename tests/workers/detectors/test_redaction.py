"""BasicRedactor: its gates and literal-first patterns find what the plain forms find."""

from __future__ import annotations

import re
import string
from collections import Counter

import phonenumbers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneMetadata
from phonenumbers.phonenumberutil import COUNTRY_CODES_FOR_NON_GEO_REGIONS, SUPPORTED_REGIONS
from stdnum import luhn

from tests.workers.detectors.test_pii import card_numbers, filler
from workers.detectors import pii, redaction
from workers.detectors.redaction import (
    INTERNATIONAL_PHONE_MIN_DIGITS,
    BasicRedactor,
    ChainedRedactor,
    PiiRedactor,
    phone_min_digits,
)

# The patterns as they were written before each started with its first digit (\b and a lookahead first).
_CARD_BOUNDARY_FIRST = re.compile(r"\b\d(?:[ -]?\d){12,18}\b")
_SSN_BOUNDARY_FIRST = re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b")


def _redact_ungated(text: str, region: str = "US") -> tuple[str, dict[str, int]]:
    """BasicRedactor as it was before its gates: every pattern, and the phone matcher wherever a digit is."""
    counts: Counter[str] = Counter()

    def sub(entity: str, pattern: re.Pattern[str], text: str) -> str:
        def replace(match: re.Match[str]) -> str:
            if entity == "card" and not luhn.is_valid(re.sub(r"[ -]", "", match.group())):
                return match.group()
            counts[entity] += 1
            return f"[{entity.upper()}]"

        return pattern.sub(replace, text)

    text = sub("email", redaction._EMAIL, text)
    text = sub("card", _CARD_BOUNDARY_FIRST, text)
    text = sub("ssn", _SSN_BOUNDARY_FIRST, text)
    if re.search(r"\d", text):
        spans = [(m.start, m.end) for m in phonenumbers.PhoneNumberMatcher(text, region)]
        for start, end in reversed(spans):
            counts["phone"] += 1
            text = f"{text[:start]}[PHONE]{text[end:]}"
    return text, dict(counts)


def _fewest_digits_with_country_code() -> int:
    """Country code plus the shortest national number of any region or non-geographic numbering plan."""
    plans = [PhoneMetadata.metadata_for_region(region) for region in SUPPORTED_REGIONS]
    plans += [PhoneMetadata.metadata_for_nongeo_region(code) for code in COUNTRY_CODES_FOR_NON_GEO_REGIONS]
    return min(len(str(plan.country_code)) + min(n for n in plan.general_desc.possible_length if n > 0)
               for plan in plans if plan is not None and plan.general_desc is not None)


def test_the_international_minimum_is_the_metadatas() -> None:
    assert _fewest_digits_with_country_code() == INTERNATIONAL_PHONE_MIN_DIGITS
    assert phone_min_digits("US") == INTERNATIONAL_PHONE_MIN_DIGITS  # US numbers have 10 digits
    assert phone_min_digits("DE") == 4  # a German number may have 4 digits after its trunk prefix
    assert phone_min_digits("ZZ") == INTERNATIONAL_PHONE_MIN_DIGITS


def test_a_short_international_number_is_still_found() -> None:
    # Six digits: the fewest any valid number has (Austria's 4-digit numbers after "+43").
    assert BasicRedactor().redact("call +43 1112 now") == ("call [PHONE] now", {"phone": 1})
    assert BasicRedactor().redact("call +43 1112 now") == _redact_ungated("call +43 1112 now")


_digits_and_signs = st.text(alphabet=string.digits + " -+().", min_size=1, max_size=16)
_parts = st.one_of(filler, _digits_and_signs, card_numbers(), st.text(max_size=12),
                   st.sampled_from(["jane@example.com", "536-22-1234", "666-22-1234", "912-22-1234", "536-00-1234",
                                    "(415) 555-2671", "+43 1112", "+49 30 1234", "+683 4002", "+1 415 555 2671",
                                    "1234", "x9", "_7", "é5", "٣٤٥", "4111 1111 1111 1111", "4111-1111-1111-1111"]))


@given(st.lists(_parts, max_size=8), st.sampled_from([" ", "", "-", "\n", "a", "_"]))
@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
def test_the_patterns_match_as_their_boundary_first_forms(parts: list[str], sep: str) -> None:
    text = sep.join(parts)
    for new, old in ((redaction._CARD, _CARD_BOUNDARY_FIRST), (redaction._SSN, _SSN_BOUNDARY_FIRST)):
        assert [m.span() for m in new.finditer(text)] == [m.span() for m in old.finditer(text)], old.pattern


@given(st.lists(_parts, max_size=8), st.sampled_from([" ", "", "-", "\n"]))
@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
def test_the_gates_redact_what_every_pattern_over_every_text_redacts(parts: list[str], sep: str) -> None:
    text = sep.join(parts)
    assert BasicRedactor().redact(text) == _redact_ungated(text)
    assert BasicRedactor("DE").redact(text) == _redact_ungated(text, "DE")


def test_the_last_phone_scan_is_remembered_by_value_region_and_leniency() -> None:
    text = "call 415 555 2671 now"
    assert pii.phone_spans(text, "US") == ((5, 17),)
    assert pii.phone_spans("".join(list(text)), "US") == ((5, 17),)  # an equal string: the remembered scan
    assert pii.phone_spans("now call 415 555 2671", "US") == ((9, 21),)
    assert pii.phone_spans("now call 415 555 2671", "DE") == ()
    assert pii.phone_spans("NL91 ABNA 5618 5576 85", "US") == ((10, 22),)
    assert pii.phone_spans("NL91 ABNA 5618 5576 85", "US", phonenumbers.Leniency.STRICT_GROUPING) == ()


def test_the_audit_chain_redacts_as_its_redactors_one_after_the_other() -> None:
    chained = ChainedRedactor(PiiRedactor(), BasicRedactor())
    for text in ("the JSON answer has 32123 characters, over the 32000 limit", "call +43 1112 or 415 555 2671",
                 "deadline passed 12 ms before the cache stage", "card 4111 1111 1111 1111, ssn 536-22-1234"):
        first, counts = PiiRedactor().redact(text)
        second, more = BasicRedactor().redact(first)
        assert chained.redact(text) == (second, dict(Counter(counts) + Counter(more)))
