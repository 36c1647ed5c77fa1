"""The narrow redaction interface post-process and audit need: ``redact(text) -> (text, counts per entity)``.

:class:`BasicRedactor` is a conservative stand-in (emails, card numbers that pass Luhn, US SSNs, phone numbers found
by libphonenumber) so no raw PII reaches an answer or an audit record before the policy engineer's full detector
(``workers/detectors/pii.py``) is plugged in; an adapter over it is a three-line class with the same ``redact``
signature.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import cache
from typing import Protocol

from phonenumbers import PhoneMetadata
from stdnum import luhn

from workers.detectors import pii
from workers.detectors.pii import INTERNATIONAL_PHONE_MIN_DIGITS


class Redactor(Protocol):
    def redact(self, text: str) -> tuple[str, dict[str, int]]: ...


class IdentityRedactor:
    """Redacts nothing (tests, or a policy that allows the content)."""

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        return text, {}


_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# Card and SSN start with their first digit, and the \b that led them follows it as a lookbehind one character wider
# (a digit is a word character, so "\b before it" is "no word character before it"); the SSN's excluded area
# numbers are looked behind once the three digits are read. A pattern that opens with \b or a lookahead is tried at
# every position of the text, one that opens with a class only where such a character is. The same matches as the
# \b-first forms (tests/workers/detectors/test_redaction.py).
_CARD = re.compile(r"\d(?<!\w.)(?:[ -]?\d){12,18}\b")
_SSN = re.compile(r"\d(?<!\w.)\d{2}(?<!000|666|9\d\d)-(?!00)\d{2}-(?!0000)\d{4}\b")
_DIGIT = re.compile(r"\d")


@cache
def phone_min_digits(region: str) -> int:
    """Fewest digits in a text where ``PhoneNumberMatcher(text, region)`` can find a number: a valid number's
    national part has one of its region's possible lengths (libphonenumber checks them first), and it is written
    whole — after its country code, or, in ``region``'s own numbering, alone. Fewer digits: nothing to find."""
    metadata = PhoneMetadata.metadata_for_region(region.upper())
    general = metadata.general_desc if metadata is not None else None
    if general is None:  # no numbering of its own: only numbers written with their country code
        return INTERNATIONAL_PHONE_MIN_DIGITS
    lengths = [n for n in general.possible_length if n > 0]
    return min(*lengths, INTERNATIONAL_PHONE_MIN_DIGITS) if lengths else 1


class BasicRedactor:
    """Replaces emails, Luhn-valid card numbers, US SSNs and phone numbers with ``[ENTITY]``."""

    def __init__(self, phone_region: str = "US") -> None:
        self.phone_region = phone_region

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        counts: Counter[str] = Counter()

        def sub(entity: str, pattern: re.Pattern[str], text: str) -> str:
            def replace(match: re.Match[str]) -> str:
                if entity == "card" and not luhn.is_valid(re.sub(r"[ -]", "", match.group())):
                    return match.group()
                counts[entity] += 1
                return f"[{entity.upper()}]"

            return pattern.sub(replace, text)

        # Each pattern runs only where a match could be: an e-mail has an "@", a card 13 digits, an SSN 9, a phone
        # number phone_min_digits (one count of the digits instead of scans that mostly find nothing; the same
        # replacements). A replaced card or SSN takes its digits with it: the phone matcher needs enough of the rest.
        if "@" in text:
            text = sub("email", _EMAIL, text)
        digits = len(_DIGIT.findall(text))
        if digits >= 13:
            text = sub("card", _CARD, text)
        if digits >= 9:
            text = sub("ssn", _SSN, text)
        phone_digits = phone_min_digits(self.phone_region)
        if digits >= phone_digits and (not counts or len(_DIGIT.findall(text)) >= phone_digits):
            for start, end in reversed(pii.phone_spans(text, self.phone_region)):
                counts["phone"] += 1
                text = f"{text[:start]}[PHONE]{text[end:]}"
        return text, dict(counts)


class PiiRedactor:
    """The full detector of ``workers/detectors/pii.py`` (checksummed cards/IBANs/SSNs, phones, IPs, secrets) with typed
    placeholders, behind the narrow interface; a fresh detector per text keeps placeholder numbering per text."""

    def __init__(self, phone_region: str = "US") -> None:
        self.phone_region = phone_region

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        findings = pii.detect(text, phone_region=self.phone_region)
        if not findings:  # most answers: no redactor to build
            return text, {}
        redactor = pii.Redactor(phone_region=self.phone_region)
        return redactor.redact(text, findings), dict(redactor.counts)


class MemoRedactor:
    """Remembers what ``redactor`` made of recent texts (a redactor is a pure function of its text). For the audit's
    outcome messages, which repeat across requests (the empty message of every answered request, a stage's fixed
    refusal texts): the full detector costs ~0.1–0.3 ms per text, a lookup nothing. Bounded: texts longer than
    ``max_chars`` are not kept (so prompts and answers, in the audit's "redacted" content mode, mostly are not),
    and the memo starts over once it holds ``max_entries``."""

    def __init__(self, redactor: Redactor, *, max_entries: int = 4096, max_chars: int = 300) -> None:
        self.redactor = redactor
        self.max_entries = max_entries
        self.max_chars = max_chars
        self._seen: dict[str, tuple[str, dict[str, int]]] = {}

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        hit = self._seen.get(text)
        if hit is None:
            hit = self.redactor.redact(text)
            if len(text) <= self.max_chars:
                if len(self._seen) >= self.max_entries:
                    self._seen.clear()
                self._seen[text] = hit
        return hit[0], dict(hit[1])  # a fresh counts dict: the caller may change it


class ChainedRedactor:
    """Applies several redactors in turn. The audit log uses the full detector and then the conservative one, so a
    number the checksum rules call invalid (say a blacklisted SSN) still never reaches the evidence."""

    def __init__(self, *redactors: Redactor) -> None:
        self.redactors = redactors

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        total: Counter[str] = Counter()
        for redactor in self.redactors:
            text, counts = redactor.redact(text)
            total.update(counts)
        return text, dict(total)
