"""The narrow redaction interface post-process and audit need: ``redact(text) -> (text, counts per entity)``.

:class:`BasicRedactor` is a conservative stand-in (emails, card numbers that pass Luhn, US SSNs, phone numbers found
by libphonenumber) so no raw PII reaches an answer or an audit record before the policy engineer's full detector
(``workers/detectors/pii.py``) is plugged in; an adapter over it is a three-line class with the same ``redact``
signature.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Protocol

import phonenumbers
from stdnum import luhn


class Redactor(Protocol):
    def redact(self, text: str) -> tuple[str, dict[str, int]]: ...


class IdentityRedactor:
    """Redacts nothing (tests, or a policy that allows the content)."""

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        return text, {}


_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_CARD = re.compile(r"\b\d(?:[ -]?\d){12,18}\b")
_SSN = re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b")
_DIGIT = re.compile(r"\d")


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

        # Each pattern runs only where a match could be: an e-mail has an "@", a card 13 digits, an SSN 9 (one count
        # of the digits instead of two scans that mostly find nothing; the same replacements).
        if "@" in text:
            text = sub("email", _EMAIL, text)
        digits = len(_DIGIT.findall(text))
        if digits >= 13:
            text = sub("card", _CARD, text)
        if digits >= 9:
            text = sub("ssn", _SSN, text)
        if digits and _DIGIT.search(text):  # phonenumbers only where a digit is still (a regex, not a Python loop)
            spans = [(m.start, m.end) for m in phonenumbers.PhoneNumberMatcher(text, self.phone_region)]
            for start, end in reversed(spans):
                counts["phone"] += 1
                text = f"{text[:start]}[PHONE]{text[end:]}"
        return text, dict(counts)


class PiiRedactor:
    """The full detector of ``workers/detectors/pii.py`` (checksummed cards/IBANs/SSNs, phones, IPs, secrets) with typed
    placeholders, behind the narrow interface; a fresh detector per text keeps placeholder numbering per text."""

    def __init__(self, phone_region: str = "US") -> None:
        self.phone_region = phone_region

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        from workers.detectors import pii

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
