"""The near-miss guard: two prompts can be close in embedding space and still ask opposite things.

A semantic-cache candidate above the similarity threshold is served only if :func:`near_miss` finds nothing that
flips the meaning. The checks run in order and the first one that fires names the reason:

``negation``   one side negates and the other does not ("is X safe" / "is X not safe")
``number``     the numbers differ ("refund after 30 days" / "after 60 days"; "1,000" equals "1000")
``unit``       the units differ ("5 km" / "5 miles", "°C" / "°F", "USD" / "EUR")
``antonym``    a word was swapped for its opposite ("increase" / "decrease", "before" / "after")
``entity``     a capitalised name, acronym, quoted string, code-like token or e-mail differs ("Python" / "Java")
``content``    a content word on one side only (a substitution or a narrowing addition); fillers and synonyms pass

Pure insertions or deletions of filler words ("please", "exactly", "actually") pass; reordering passes. The guard is
conservative on purpose: a missed hit costs one model call, a wrong hit serves a wrong answer.
"""

from __future__ import annotations

import re
import unicodedata

from workers.embedding import STOPWORDS, normalise_text, stem, tokens

NEGATIONS = frozenset({"not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "without", "nowhere",
                       "cannot", "unsafe", "illegal", "disallowed", "forbidden", "prohibited", "impossible"})

_UNITS = {
    "km": "km", "kilometer": "km", "kilometre": "km", "mile": "mi", "mi": "mi", "m": "m", "meter": "m",
    "metre": "m", "cm": "cm", "mm": "mm", "ft": "ft", "foot": "ft", "feet": "ft", "inch": "in",
    "kg": "kg", "kilogram": "kg", "g": "g", "gram": "g", "lb": "lb", "lbs": "lb", "pound": "lb", "oz": "oz",
    "ounce": "oz", "l": "l", "liter": "l", "litre": "l", "ml": "ml", "gallon": "gal", "gal": "gal",
    "c": "degc", "celsius": "degc", "f": "degf", "fahrenheit": "degf", "kelvin": "k",
    "usd": "usd", "dollar": "usd", "$": "usd", "eur": "eur", "euro": "eur", "€": "eur", "gbp": "gbp",
    "£": "gbp", "yen": "jpy", "jpy": "jpy", "cent": "cent", "%": "pct", "percent": "pct",
    "kb": "kb", "mb": "mb", "gb": "gb", "tb": "tb", "ms": "ms", "millisecond": "ms", "second": "s", "sec": "s",
    "s": "s", "minute": "min", "min": "min", "hour": "h", "hr": "h", "h": "h", "day": "day", "week": "week",
    "month": "month", "year": "year", "mg": "mg", "mcg": "mcg", "kwh": "kwh", "w": "w", "watt": "w",
    "mph": "mph", "kph": "kph", "rpm": "rpm", "token": "token", "request": "request",
}

_NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "fifteen": "15", "twenty": "20",
    "thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "ninety": "90", "hundred": "100",
    "thousand": "1000", "million": "1000000", "billion": "1000000000", "half": "0.5", "once": "1", "twice": "2",
    "first": "1st", "second": "2nd", "third": "3rd", "last": "last",
}

_ANTONYM_PAIRS = [
    ("increase", "decrease"), ("raise", "lower"), ("before", "after"), ("max", "min"), ("maximum", "minimum"),
    ("enable", "disable"), ("allow", "deny"), ("allow", "block"), ("add", "remove"), ("buy", "sell"),
    ("open", "close"), ("start", "stop"), ("upgrade", "downgrade"), ("above", "below"), ("more", "less"),
    ("more", "fewer"), ("high", "low"), ("higher", "lower"), ("best", "worst"), ("cheap", "expensive"),
    ("fast", "slow"), ("safe", "dangerous"), ("safe", "unsafe"), ("true", "false"), ("legal", "illegal"),
    ("include", "exclude"), ("import", "export"), ("encrypt", "decrypt"), ("input", "output"),
    ("inbound", "outbound"), ("win", "lose"), ("accept", "reject"), ("login", "logout"), ("subscribe",
    "unsubscribe"), ("lock", "unlock"), ("upload", "download"), ("push", "pull"), ("first", "last"),
    ("north", "south"), ("east", "west"), ("hot", "cold"), ("positive", "negative"), ("always", "never"),
    ("all", "none"), ("same", "different"), ("old", "new"), ("early", "late"), ("long", "short"),
    ("left", "right"), ("up", "down"), ("in", "out"), ("on", "off"), ("give", "receive"), ("send", "receive"),
    ("create", "delete"), ("join", "leave"), ("public", "private"), ("internal", "external"),
]
_ANTONYMS: dict[str, set[str]] = {}
for _left, _right in _ANTONYM_PAIRS:
    _ANTONYMS.setdefault(stem(_left), set()).add(stem(_right))
    _ANTONYMS.setdefault(stem(_right), set()).add(stem(_left))

# Words that may be swapped for each other without changing the question. Keep this list small and obvious.
_SYNONYM_GROUPS = [
    ("refund", "reimburse", "reimbursement", "money back"), ("cancel", "terminate", "end"),
    ("change", "update", "modify", "edit"), ("reset", "recover"), ("password", "passcode"),
    ("buy", "purchase"), ("cost", "price"), ("begin", "start"), ("finish", "complete"),
    ("big", "large"), ("small", "little"), ("quick", "fast"), ("help", "assist", "support"),
    ("show", "display", "list"), ("error", "failure"), ("get", "obtain", "receive"), ("car", "automobile"),
    ("doctor", "physician"), ("use", "utilize"), ("need", "require"), ("allow", "permit"),
    ("delete", "remove", "erase"), ("create", "make", "generate"), ("find", "locate"), ("fix", "repair"),
    ("account", "profile"), ("sign up", "register"), ("sign in", "log in", "login"), ("email", "e-mail"),
]
_SYNONYM_OF: dict[str, str] = {}
for _group in _SYNONYM_GROUPS:
    for _word in _group:
        if " " not in _word:
            _SYNONYM_OF[stem(_word)] = stem(_group[0])

# Words a paraphrase may add or drop without changing what is asked.
_FILLER_TEXT = (
    "exactly actually really basically currently generally typically usually quickly briefly simply "
    "know want like need wonder wondering curious question ask asking help could would mind "
    "let us say thing things way ok okay hi hello hey thanks thank also still yet"
)
FILLERS = frozenset(_FILLER_TEXT.split()) | STOPWORDS

_ENTITY_RE = re.compile(
    r"\"[^\"]+\"|'[^']+'|`[^`]+`"                      # quoted strings and code
    r"|[\w.+-]+@[\w-]+\.[\w.]+"                        # e-mail addresses
    r"|\b[A-Z][A-Za-z0-9]*(?:[-_.][A-Za-z0-9]+)*\b"    # Capitalised words, acronyms, CamelCase, v2.1-like
    r"|\b\w*\d\w*\b"                                   # tokens with digits: model names, ids, versions
)
_NUMBER_RE = re.compile(r"(?<![\w.])[-+]?\d[\d,]*(?:\.\d+)?(?![\d])")
_UNIT_ATTACHED_RE = re.compile(r"\d(?:[\d,.]*)\s*([a-z%$€£°]+)")


def _content_words(text: str) -> list[str]:
    words = []
    for token in tokens(normalise_text(text)):
        if token[0].isdigit():
            words.append(_canonical_number(token))
        else:
            words.append(_NUMBER_WORDS.get(token) or stem(token))
    return words


def numbers(text: str) -> list[str]:
    """Numbers in a canonical form, in order: digits (``1,000`` → ``1000``) and common number words."""
    norm = normalise_text(text)
    found = [_canonical_number(match.group(0)) for match in _NUMBER_RE.finditer(norm)]
    found += [_NUMBER_WORDS[w] for w in re.findall(r"[a-z]+", norm) if w in _NUMBER_WORDS]
    return sorted(found)


def _canonical_number(raw: str) -> str:
    cleaned = raw.replace(",", "").lstrip("+")
    try:
        value = float(cleaned)
    except ValueError:
        return cleaned
    return str(int(value)) if value.is_integer() else repr(value)


def units(text: str) -> set[str]:
    norm = normalise_text(text).replace("°", " ° ")
    found = {_UNITS[stem(w)] for w in tokens(norm) if stem(w) in _UNITS and len(w) > 1}
    found |= {_UNITS[u] for u in _UNIT_ATTACHED_RE.findall(norm) if u in _UNITS}  # "5km", "20%", "3h"
    for symbol in ("$", "€", "£", "%"):
        if symbol in norm:
            found.add(_UNITS[symbol])
    if re.search(r"°\s*c\b", norm):
        found.add("degc")
    if re.search(r"°\s*f\b", norm):
        found.add("degf")
    return found


def entities(text: str) -> set[str]:
    """Names that pin a question to one thing. The first word of a sentence is not taken for a name."""
    text = unicodedata.normalize("NFKC", text)
    found: set[str] = set()
    for match in _ENTITY_RE.finditer(text):
        start, token = match.start(), match.group(0)
        before = text[:start].rstrip()
        sentence_start = not before or before[-1] in ".?!:;\n"
        if sentence_start and token[:1].isupper() and not token.isupper() and token[1:].islower():
            continue  # "Is", "How", "What" — a capital only because it opens the sentence
        canonical = token.strip("\"'`").casefold()
        if stem(canonical) in STOPWORDS or canonical in _NUMBER_WORDS or canonical == "i":
            continue
        if _NUMBER_RE.fullmatch(canonical):
            continue  # pure numbers are the number check's business
        found.add(stem(canonical))
    return found


def _negation_count(words: list[str]) -> int:
    # Counts, not parity: "not unsafe" is not "safe" for a cache, so any difference in negations rejects.
    return sum(1 for w in words if w in NEGATIONS)


def _entity_differs(query: str, candidate: str) -> bool:
    """An entity on one side that the other side does not mention at all (case differences do not count)."""
    query_norm, candidate_norm = normalise_text(query), normalise_text(candidate)
    query_stems = " ".join(stem(t) for t in tokens(query_norm))
    candidate_stems = " ".join(stem(t) for t in tokens(candidate_norm))
    for entity, other_norm, other_stems in ((e, candidate_norm, candidate_stems) for e in entities(query)):
        if entity not in other_norm and entity not in other_stems:
            return True
    return any(entity not in query_norm and entity not in query_stems for entity in entities(candidate))


def near_miss(query: str, candidate: str) -> str | None:
    """The reason ``candidate``'s answer must not be served for ``query``, or ``None`` if it may be."""
    query_words, candidate_words = _content_words(query), _content_words(candidate)
    if _negation_count(query_words) != _negation_count(candidate_words):
        return "negation"
    if numbers(query) != numbers(candidate):
        return "number"
    if units(query) != units(candidate):
        return "unit"
    query_set = {_SYNONYM_OF.get(w, w) for w in query_words}
    candidate_set = {_SYNONYM_OF.get(w, w) for w in candidate_words}
    only_query, only_candidate = query_set - candidate_set, candidate_set - query_set
    for word in only_query:
        if _ANTONYMS.get(word, set()) & only_candidate:
            return "antonym"
    if _entity_differs(query, candidate):
        return "entity"
    # A content word on one side only: a substitution ("reset" / "delete") or an addition that narrows or widens
    # the question ("my password" / "my admin password"). Fillers and listed synonyms do not count.
    if any(w not in FILLERS for w in only_query | only_candidate):
        return "content"
    return None
