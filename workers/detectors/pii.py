"""PII detection and redaction with typed placeholders (``<EMAIL_1>``).

Detectors find candidates with a regex and keep only those that validate: card numbers pass Luhn and carry a known
issuer prefix, IBANs pass mod-97 and their country's length (python-stdnum), US SSNs are outside the never-issued
ranges (python-stdnum), IP addresses parse (``ipaddress``), phone numbers are valid for their region (phonenumbers,
libphonenumber's metadata). Overlaps are resolved by a fixed priority (a card number is not also a phone number).
A well-formed IBAN with wrong check digits is rejected, and its span is not read again as a phone number unless
the number is grouped the way its region writes it.

A :class:`Redactor` is used once per request: the same value gets the same placeholder in every message and passage,
so the model still sees that two mentions are one person. The value→placeholder map lives only in memory.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import luhn
from stdnum.iso7064 import mod_97_10
from stdnum.us import ssn as stdnum_ssn

from schemas.policy import PiiAction
from workers.prefilter import Prefiltered, prefiltered


@dataclass(frozen=True)
class Finding:
    entity: str
    start: int
    end: int
    text: str


# Lower number wins an overlap: specific, checksummed patterns before the lenient phone matcher.
PRIORITY = {"secret": 0, "email": 1, "iban": 2, "credit_card": 3, "us_ssn": 4, "ip_address": 5, "phone": 6}

# Each pattern starts with the character class of its first character, and the lookbehind that guarded it follows it
# (one character wider: that character): a pattern that opens with a lookbehind is tried at every position of the
# text, one that opens with a class only where such a character is. The same matches
# (tests/workers/detectors/test_pii.py).
_EMAIL = re.compile(r"[A-Za-z0-9](?<![\w.%+-].)[A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9-]{1,63}\.){1,8}[A-Za-z]{2,24}"
                    r"(?![\w-])")
_CARD = re.compile(r"\d(?<![\d-].)(?:[ -]?\d){12,18}(?![\d])")
_IBAN = re.compile(r"[A-Z](?<![A-Za-z0-9].)[A-Z]\d{2}(?: ?[A-Z0-9]){11,30}")
_SSN = re.compile(r"\d(?<![\d-].)\d{2}([- ])\d{2}\1\d{4}(?![\d-])")
_IPV4 = re.compile(r"\d(?<![\d.].)\d{0,2}\.(?:\d{1,3}\.){2}\d{1,3}(?!\.?\d)")
_IPV6 = re.compile(r"(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![0-9A-Fa-f:])")
_SECRETS = [
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),  # AWS access key id
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36}\b"),  # GitHub token
    re.compile(r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"),  # OpenAI / Anthropic style
    re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),  # Slack
    re.compile(r"\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}"),  # Stripe
    re.compile(r"\bAIza[0-9A-Za-z_-]{35}"),  # Google API key
    re.compile(r"\btw_k_[0-9a-f]{8,32}_[A-Za-z0-9_-]{20,}"),  # our own keys
    re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),  # JWT
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"),
]
# One pass instead of nine, and none at all over a text without any of their prefixes (workers/prefilter.py).
_ANY_SECRET = Prefiltered(re.compile("|".join(f"(?:{p.pattern})" for p in _SECRETS)))
# Sharper than the prefilter's literals for the one pattern whose literal is common English ("gh": though, right,
# high): a GitHub token contains one of these. The whole pattern runs only where the prefilter and these agree.
_GITHUB_TOKEN_HINTS = ("ghp_", "gho_", "ghu_", "ghs_", "ghr_")
# "password: hunter22" — only the value is the secret.
_ASSIGNED_SECRET = prefiltered(r"(?i)\b(?:api[_-]?key|secret(?:[_-]key)?|access[_-]token|auth[_-]token|password|"
                              r"passwd|pwd)\b\s*[:=]\s*['\"]?([^\s'\"<][^\s'\"]{5,})")
# Issuer prefixes: Visa, Mastercard (51-55, 2221-2720), Amex, Discover, Diners, JCB, Maestro/UnionPay.
_CARD_PREFIX = re.compile(r"^(?:4|5[1-5]|2(?:2[2-9][1-9]|2[3-9]\d|[3-6]\d\d|7[01]\d|720)|3[47]|6011|65|64[4-9]|"
                          r"3(?:0[0-5]|[68])|35(?:2[89]|[3-8]\d)|62|67)")
_DIGITS = re.compile(r"\d")
# The fewest digits of a phone number written with its country code ("+43 1112": Austria, Germany and Iran have
# numbers of 4 digits after it; tests/workers/detectors/test_redaction.py checks it against every region's metadata).
# Fewer digits in a text: no number libphonenumber could find there in any region's own numbering of 6+ digits.
INTERNATIONAL_PHONE_MIN_DIGITS = 6
_FILE_SUFFIXES = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp", "tiff", "css", "js", "json",
                            "html", "txt", "pdf"})


def _emails(text: str) -> Iterator[Finding]:
    for m in _EMAIL.finditer(text):
        if m.group().rsplit(".", 1)[-1].lower() in _FILE_SUFFIXES:
            continue  # "icon@2x.png" is an asset name, not an address
        yield Finding("email", m.start(), m.end(), m.group())


def _cards(text: str) -> Iterator[Finding]:
    for m in _CARD.finditer(text):
        # A run of digit groups may hold a card and a neighbour ("4111 1111 1111 1111 536"): try the windows of
        # whole groups, longest first, and take each valid one.
        groups = [(g.start() + m.start(), g.end() + m.start()) for g in re.finditer(r"\d+", m.group())]
        i = 0
        while i < len(groups):
            for j in range(len(groups), i, -1):
                start, end = groups[i][0], groups[j - 1][1]
                raw = text[start:end]
                if len(set(re.sub(r"\d", "", raw))) > 1:
                    continue  # "4111 1111-1111 1111": mixed separators are not how a card number is written
                digits = re.sub(r"\D", "", raw)
                if 13 <= len(digits) <= 19 and _CARD_PREFIX.match(digits) and luhn.is_valid(digits):
                    yield Finding("credit_card", start, end, raw)
                    i = j - 1
                    break
            i += 1


def _ibans(text: str, rejected: list[tuple[int, int]]) -> Iterator[Finding]:
    """Valid IBANs; the spans of well-formed ones with wrong check digits go to ``rejected``."""
    pos = 0
    while (m := _IBAN.search(text, pos)) is not None:
        raw = m.group()
        pos = m.start() + 1
        # The candidate may run on into the next word or the next IBAN ("... 3000 DE44 ..."): shorten it token by
        # token until it is valid, and scan on from where the valid one ends.
        positions = [i for i, c in enumerate(raw) if c != " "]
        compact = raw.replace(" ", "")
        for length in range(len(compact), 14, -1):
            # mod-97 and the country's length; not the national bank-code registries, which go stale.
            candidate = compact[:length]
            end = m.start() + positions[length - 1] + 1
            if mod_97_10.is_valid(candidate[4:] + candidate[:4]) and stdnum_iban.is_valid(candidate,
                                                                                          check_country=False):
                if not text[end:end + 1].isalnum():
                    yield Finding("iban", m.start(), end, text[m.start():end])
                    pos = end
                break
            if not text[end:end + 1].isalnum() and _wrong_check_digits(candidate):
                rejected.append((m.start(), end))
                pos = end
                break


def _wrong_check_digits(candidate: str) -> bool:
    """An IBAN in every respect (country, length, layout) but its two check digits."""
    fixed = candidate[:2] + stdnum_iban.calc_check_digits(candidate) + candidate[4:]
    return stdnum_iban.is_valid(fixed, check_country=False)


def _ssns(text: str) -> Iterator[Finding]:
    for m in _SSN.finditer(text):
        if stdnum_ssn.is_valid(m.group().replace(" ", "-")):
            yield Finding("us_ssn", m.start(), m.end(), m.group())


def _ips(text: str, *, ipv4: bool = True) -> Iterator[Finding]:
    for m in _IPV4.finditer(text) if ipv4 else ():
        try:
            ipaddress.IPv4Address(m.group())
        except ValueError:
            continue
        yield Finding("ip_address", m.start(), m.end(), m.group())
    if "::" in text or text.count(":") >= 7:
        for m in _IPV6.finditer(text):
            candidate = m.group()
            if sum(1 for part in candidate.split(":") if part) < 2:
                continue  # "a::b" style noise needs at least two groups to be worth redacting
            try:
                ipaddress.IPv6Address(candidate)
            except ValueError:
                continue
            yield Finding("ip_address", m.start(), m.end(), candidate)


def _phones(text: str, region: str, leniency: int = phonenumbers.Leniency.VALID) -> Iterator[Finding]:
    if len(_DIGITS.findall(text)) < INTERNATIONAL_PHONE_MIN_DIGITS:
        return
    for start, end in phone_spans(text, region, leniency):
        yield Finding("phone", start, end, text[start:end])


# The last text libphonenumber scanned, by value, with what it found. The audit's redactor chain (this detector, then
# redaction.BasicRedactor) scans an outcome message in which the first found nothing twice, the same string: the
# matcher is ~0.1 ms of such a message, and a pure function of text, region and leniency. One tuple, read once.
_last_scan: tuple[str, str, int, tuple[tuple[int, int], ...]] = ("", "", -1, ())


def phone_spans(text: str, region: str, leniency: int = phonenumbers.Leniency.VALID) -> tuple[tuple[int, int], ...]:
    """``(start, end)`` of each number ``phonenumbers.PhoneNumberMatcher(text, region, leniency=leniency)`` finds."""
    global _last_scan
    last = _last_scan
    if last[2] == leniency and last[1] == region and last[0] == text:
        return last[3]
    spans = tuple((m.start, m.end) for m in phonenumbers.PhoneNumberMatcher(text, region, leniency=leniency))
    _last_scan = (text, region, leniency, spans)
    return spans


def _secrets(text: str) -> Iterator[Finding]:
    if _any_secret_possible(text):
        for m in _ANY_SECRET.pattern.finditer(text):
            yield Finding("secret", m.start(), m.end(), m.group())
    if ":" in text or "=" in text:  # the assignment needs one of them
        for m in _ASSIGNED_SECRET.finditer(text):
            yield Finding("secret", m.start(1), m.end(1), m.group(1))


def _secret_literals() -> tuple[str, ...]:
    """One of these is in every match of the secret patterns: the prefilter's literals, with "gh" (which English
    words carry) narrowed to a GitHub token's prefixes. The patterns are case-sensitive, so ``in`` is exact on any
    text, ASCII or not."""
    literals = _ANY_SECRET.literals
    assert literals is not None and not _ANY_SECRET.ignorecase  # the prefilter reads every secret pattern
    return tuple(literal for literal in literals if literal != "gh") + _GITHUB_TOKEN_HINTS


_SECRET_LITERALS = _secret_literals()


def _any_secret_possible(text: str) -> bool:
    return any(map(text.__contains__, _SECRET_LITERALS))


def _resolve(candidates: list[Finding], taken: list[Finding]) -> list[Finding]:
    if not candidates:
        return taken
    candidates.sort(key=lambda f: (PRIORITY[f.entity], f.start - f.end))
    for finding in candidates:
        if all(finding.end <= t.start or finding.start >= t.end for t in taken):
            taken.append(finding)
    return taken


def _overlaps(finding: Finding, spans: list[tuple[int, int]]) -> bool:
    return any(finding.start < end and start < finding.end for start, end in spans)


def detect(text: str, *, phone_region: str = "US") -> list[Finding]:
    """Every PII finding in ``text``: validated, non-overlapping, in text order."""
    rejected: list[tuple[int, int]] = []  # IBAN-shaped candidates whose checksum failed
    # A detector runs only on a text that has what every one of its matches has: an "@" for an e-mail, and the
    # digits each pattern needs (IBAN 2, IPv4 4, phone 6, SSN 9, card 13). Most answers have few or none, and each
    # regex scan costs ~10-25 µs on a 300-character answer (bench.micro); the findings are the same.
    digits = len(_DIGITS.findall(text))
    candidates = [*_secrets(text)]
    if "@" in text:
        candidates += _emails(text)
    if digits >= 2:
        candidates += _ibans(text, rejected)
    if digits >= 13:
        candidates += _cards(text)
    if digits >= 9:
        candidates += _ssns(text)
    candidates += _ips(text, ipv4=digits >= 4 and "." in text)
    taken = _resolve(candidates, [])
    if digits < INTERNATIONAL_PHONE_MIN_DIGITS:  # masking only removes digits: no phone number
        return sorted(taken, key=lambda f: f.start)
    # libphonenumber grabs long digit runs as one candidate: mask what is already found so a card next to a phone
    # number does not hide it.
    masked = text
    for f in taken:
        masked = masked[:f.start] + "\n" * (f.end - f.start) + masked[f.end:]
    phones = list(_phones(masked, phone_region))
    if rejected and any(_overlaps(p, rejected) for p in phones):
        # The letters of a rejected IBAN split its digits into a run that libphonenumber reads as a number
        # ("NL91 ABNA 5618 5576 85"): inside such a span, keep only numbers grouped the way their region writes
        # them.
        strict = {(p.start, p.end) for p in _phones(masked, phone_region, phonenumbers.Leniency.STRICT_GROUPING)}
        phones = [p for p in phones if not _overlaps(p, rejected) or (p.start, p.end) in strict]
    taken = _resolve(phones, taken)
    return sorted(taken, key=lambda f: f.start)


@dataclass
class Redactor:
    """Redacts the texts of one request consistently. ``action(entity)`` says allow, redact or block."""

    action: Callable[[str], PiiAction] = lambda _entity: PiiAction.REDACT
    phone_region: str = "US"
    counts: Counter[str] = field(default_factory=Counter)
    blocked: set[str] = field(default_factory=set)
    _placeholders: dict[tuple[str, str], str] = field(default_factory=dict)
    _numbers: Counter[str] = field(default_factory=Counter)

    def placeholder(self, entity: str, value: str) -> str:
        key = (entity, value)
        if key not in self._placeholders:
            self._numbers[entity] += 1
            self._placeholders[key] = f"<{entity.upper()}_{self._numbers[entity]}>"
        return self._placeholders[key]

    def redact(self, text: str, findings: list[Finding] | None = None) -> str:
        """``text`` with its findings replaced; ``findings``: ``detect(text)`` when the caller already has it."""
        if findings is None:
            findings = detect(text, phone_region=self.phone_region)
        if not findings:
            return text
        out: list[str] = []
        cursor = 0
        for finding in findings:
            self.counts[finding.entity] += 1
            act = self.action(finding.entity)
            if act is PiiAction.BLOCK:
                self.blocked.add(finding.entity)
            if act is PiiAction.ALLOW:
                continue
            out.append(text[cursor:finding.start])
            out.append(self.placeholder(finding.entity, finding.text))
            cursor = finding.end
        out.append(text[cursor:])
        return "".join(out)
