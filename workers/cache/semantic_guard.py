"""The near-miss guard: two prompts can be close in embedding space and still ask different things.

A semantic-cache candidate above the similarity threshold is served only if :func:`near_miss` finds nothing that
changes the answer. Both prompts are reduced to :class:`Facts` (canonical content words *in order*, numbers in
order, units with their role, negations, time qualifiers, names) and the checks run in order; the first that fires
names the reason:

``negation``     one side negates and the other does not ("with consent" / "without consent"; a trailing
                 "…, or not?" is a yes/no question, not a negation)
``number``       both sides state numbers and they differ, in value or in order ("20% of 150" / "150 is what % of
                 20"); "1,000" = "1000" = "one thousand", "seventy-two" = "72"
``unit``         units attached to numbers differ ("5 km" / "5 miles", "72 °F in Kelvin" / "… in Celsius")
``roles``        the same words on the two sides of a relation in the opposite order: "Java faster than Python" /
                 "Python faster than Java", "10 km to miles" / "10 miles to km", "string to int" / "int to string"
``antonym``      a word (or its comparative) swapped for its opposite ("increase" / "decrease", "largest" /
                 "smallest", "open" / "closed", "absorb" / "release")
``comparative``  one side compares ("… than adults?") and the other asks no comparison at all
``time``         a time qualifier on one side only ("… at night", "… tomorrow", "… during probation", "… a week
                 late"), or different ones
``entity``       a code or model name differs ("X200" / "X300", "K2"), or each side names a thing the other does
                 not ("Linux" / "Windows")
``content``      a minimal edit: the prompts share most of their content words and differ in a few that are not
                 fillers or listed synonyms ("sick days" / "vacation days", "reset" / "delete"); given word
                 vectors (``cosines``), an edit whose every differing word has a close counterpart ("folder" /
                 "directory") is a rewording and passes

What passes: rewordings that change *most* words (a paraphrase rarely keeps the sentence and swaps one noun; a near
miss usually does), fillers, greetings, reordering without a relation between the moved words, typos in ordinary
words. The embedding threshold decides whether such a rewording is close enough; this guard only vetoes. It is
conservative on purpose: a missed hit costs one model call, a wrong hit serves a wrong answer.
Tuned on the tune split of bench/data/outsider_paraphrase.jsonl only; see docs/SEMANTIC_CACHE.md.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from workers.cache.guard_lexicon import (
    ANTONYMS,
    COMPARISON_MARKERS,
    FILLERS,
    NEGATIONS,
    NUMBER_WORDS,
    PIVOTS,
    SCALES,
    STRONG_TIMES,
    SYNONYM_OF,
    TIME_WORDS,
    UNITS,
)
from workers.embedding import STOPWORDS, normalise_text, stem, tokens

__all__ = ["WORD_MATCH", "Facts", "WordCosines", "entities", "facts", "near_miss", "numbers", "units"]

# Cosines of unit word vectors, rows = left words, columns = right words (``PairVerifier.word_cosines``).
WordCosines = Callable[[Sequence[str], Sequence[str]], npt.NDArray[np.float32]]

# The share of content words two prompts must have in common before a differing word counts as the edit that
# made one from the other (tuned on the tune split: 0.5 keeps most paraphrases, which share far less).
MINIMAL_EDIT_OVERLAP = 0.35
# A difference of at most this many content words between prompts that share any is an edit, not a rewording.
SMALL_EDIT_WORDS = 2
# Two differing words whose static word vectors are at least this close are one word said two ways ("folder" /
# "directory", "max" / "limit"), not the edit that changes the question: the ``content`` rule no longer counts them.
# Tuned on the tune split (with the verifier refit behind it); co-hyponyms ("const" / "var") mostly stay below it.
WORD_MATCH = 0.45

_ENTITY_RE = re.compile(
    r"\"[^\"]+\"|'[^']+'|`[^`]+`"                      # quoted strings and code
    r"|[\w.+-]+@[\w-]+\.[\w.]+"                        # e-mail addresses
    r"|\b[A-Z][A-Za-z0-9]*(?:[-_.][A-Za-z0-9]+)*\b"    # Capitalised words, acronyms, CamelCase, v2.1-like
    r"|\b\w*\d\w*\b"                                   # tokens with digits: model names, ids, versions
)
_NUMBER_RE = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")
_CODE_RE = re.compile(r"^(?=.*[a-z])(?=.*\d)[a-z0-9.-]+$")
_NUMBER_SUFFIX_RE = re.compile(r"([\d.,]+)([a-z]*)")
_TENS = frozenset({20, 30, 40, 50, 60, 70, 80, 90})
_ORDINALS = frozenset({"st", "nd", "rd", "th"})
_YES_NO_TAIL = re.compile(r"\bor (?:not|no)\b\W*$")
_COMPARATIVE_SUFFIXES = (("iest", "y"), ("est", ""), ("ier", "y"), ("er", ""))


@dataclass(frozen=True)
class Facts:
    """What the guard compares: canonical content words in order and the structured parts of a prompt."""

    words: tuple[str, ...]      # content words (stemmed, synonyms folded; numbers as canonical digits), in order
    numbers: tuple[str, ...]    # canonical numbers in order of appearance
    units: tuple[str, ...]      # units attached to a number or the target of a conversion, in order
    negations: int
    times: frozenset[str]
    codes: frozenset[str]       # tokens mixing letters and digits: X200, K2, gpt-4o
    names: frozenset[str]       # capitalised names (not at a sentence start), stemmed and case-folded
    compares: str               # "than": a comparative; "weighs": alternatives ("vs", "or", "between"); "" none
    focus: str | None           # what is asked for: the word after "what"/"which"/"how many"/"how much"
    pivots: tuple[tuple[int, str], ...]  # (position in ``words`` coordinates, pivot word)
    surface: tuple[tuple[str, str], ...] = ()  # (content word, the token it was read from), first occurrence


def _canonical_number(raw: str) -> str:
    cleaned = raw.replace(",", "").lstrip("+")
    try:
        value = float(cleaned)
    except ValueError:
        return cleaned
    return str(int(value)) if value.is_integer() else repr(value)


def _spelled_number(words: list[str], start: int) -> tuple[str | None, int]:
    """A number written in words from ``words[start]`` ("a hundred and fifty", "seventy two"): value, next index.

    A second number word that cannot continue the first ("fifty seventy") starts a new number."""
    total = current = 0
    seen = False
    last: int | None = None  # the value of the last word taken; None at the start and after a scale
    index = start
    while index < len(words):
        word = words[index]
        if word in NUMBER_WORDS:
            value = NUMBER_WORDS[word]
            if last is not None and not (last in _TENS and value < 10):
                break
            current += value
            last, seen = value, True
        elif word in SCALES and (seen or (index > start and words[index - 1] == "a")):
            current = max(current, 1) * SCALES[word]
            if SCALES[word] >= 1000:
                total, current = total + current, 0
            last, seen = None, True
        elif word in ("a", "and") and index + 1 < len(words) and (
                words[index + 1] in NUMBER_WORDS or words[index + 1] in SCALES) and (
                word == "a" or (seen and last is None)):
            pass
        else:
            break
        index += 1
    if not seen:
        return None, start
    return str(total + current), index


def _unit_of(word: str) -> str | None:
    return UNITS.get(word) or (UNITS.get(word[:-1]) if word.endswith("s") else None) or UNITS.get(stem(word))


def _comparative_base(word: str) -> str:
    """"faster" → "fast", "largest" → "large", "biggest" → "big" (only when the base has an opposite)."""
    for suffix, replacement in _COMPARATIVE_SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            base = word[: len(word) - len(suffix)] + replacement
            for candidate in (base, base + "e", base[:-1] if len(base) > 3 and base[-1] == base[-2] else base):
                if stem(candidate) in ANTONYMS:
                    return stem(candidate)
    return word


@lru_cache(maxsize=4096)
def facts(text: str) -> Facts:
    norm = normalise_text(text).replace("°", " ")
    norm = _YES_NO_TAIL.sub("", norm)
    raw = tokens(norm)
    words: list[str] = []
    found_numbers: list[str] = []
    found_units: list[str] = []
    pivots: list[tuple[int, str]] = []
    negations = 0
    times: set[str] = set()
    compares = ""
    surface: dict[str, str] = {}
    index = 0
    after_number = False
    while index < len(raw):
        token = raw[index]
        if token[0].isdigit():
            digits, suffix = _NUMBER_SUFFIX_RE.match(token).groups()  # type: ignore[union-attr]
            value = _canonical_number(digits)
            found_numbers.append(value)
            words.append(value)
            if suffix and _unit_of(suffix):
                found_units.append(_unit_of(suffix) or suffix)
            index += 1
            after_number = True
            continue
        spelled, end = _spelled_number(raw, index) if token != "one" or _next_is_scale(raw, index) else (None, index)
        if spelled is not None and end > index:
            found_numbers.append(spelled)
            words.append(spelled)
            index = end
            after_number = True
            continue
        unit = _unit_of(token)
        if unit is not None and (after_number or (token in "$€£") or _is_conversion_target(raw, index, found_units)):
            found_units.append(unit)
        after_number = token in ("degree", "degrees") and after_number
        if token in NEGATIONS:
            negations += 1
        if token == "than":
            compares = "than"
        elif token in COMPARISON_MARKERS and not compares:
            compares = "weighs"
        if token in PIVOTS:
            pivots.append((len(words), token))
            index += 1
            continue
        word = stem(token)
        if word in TIME_WORDS or token in TIME_WORDS:
            word = TIME_WORDS.get(word) or TIME_WORDS[token]  # "already shipped" / "after it ships": one qualifier
            times.add(word)
        if token not in FILLERS and word not in FILLERS and token not in "$€£%":
            words.append(SYNONYM_OF.get(word, word))
            surface.setdefault(words[-1], token)
        index += 1
    codes = frozenset(t for t in raw if _is_code(t))
    return Facts(words=tuple(words), numbers=tuple(found_numbers), units=tuple(found_units), negations=negations,
                 times=frozenset(times), codes=codes, names=frozenset(entities(text)), compares=compares,
                 focus=_focus(raw), pivots=tuple(pivots), surface=tuple(surface.items()))


def _focus(raw: list[str]) -> str | None:
    for index, token in enumerate(raw[:-1]):
        nxt = index + 1
        if token == "how" and raw[nxt] in ("many", "much") and nxt + 1 < len(raw):
            nxt += 1
        elif token not in ("what", "which"):
            continue
        word = raw[nxt]
        if word in FILLERS or word[0].isdigit():
            return None
        return SYNONYM_OF.get(stem(word), stem(word))
    return None


def _is_code(token: str) -> bool:
    """Letters and digits in one token ("x200", "k2", "gpt4"), but not a number with a unit or ordinal ("5km")."""
    if not _CODE_RE.match(token):
        return False
    if token[0].isdigit():
        suffix = _NUMBER_SUFFIX_RE.match(token).group(2)  # type: ignore[union-attr]
        return bool(suffix) and suffix not in _ORDINALS and _unit_of(suffix) is None
    return True


def _next_is_scale(raw: list[str], index: int) -> bool:
    return index + 1 < len(raw) and raw[index + 1] in SCALES


def _is_conversion_target(raw: list[str], index: int, units_so_far: list[str]) -> bool:
    """"… in Celsius", "… to miles", "… into our kg": a unit after a conversion word, once a unit was stated."""
    if not units_so_far:
        return False
    back = index - 1
    while back >= 0 and raw[back] in STOPWORDS and raw[back] not in ("to", "in", "into"):
        back -= 1
    return back >= 0 and raw[back] in ("to", "in", "into")


def numbers(text: str) -> list[str]:
    """Numbers in a canonical form, in order: digits (``1,000`` → ``1000``) and spelled numbers."""
    return list(facts(text).numbers)


def units(text: str) -> set[str]:
    """Units attached to a number or named as a conversion target."""
    return set(facts(text).units)


def entities(text: str) -> set[str]:
    """Names that pin a question to one thing. The first word of a sentence is not taken for a name."""
    text = unicodedata.normalize("NFKC", text)
    found: set[str] = set()
    for match in _ENTITY_RE.finditer(text):
        start, token = match.start(), match.group(0)
        before = text[:start].rstrip()
        sentence_start = not before or before[-1] in ".?!:;\n—-"
        if sentence_start and token[:1].isupper() and not token.isupper() and token[1:].islower():
            continue  # "Is", "How", "What" — a capital only because it opens the sentence
        canonical = token.strip("\"'`").casefold()
        if stem(canonical) in STOPWORDS or canonical in NUMBER_WORDS or canonical in SCALES or canonical == "i":
            continue
        if _NUMBER_RE.fullmatch(canonical):
            continue  # pure numbers are the number check's business
        found.add(stem(canonical))
    return found


def _mentioned(name: str, other: Facts, other_text: str) -> bool:
    norm = normalise_text(other_text)
    return name in norm or name in other.words or any(w.startswith(name) or name.startswith(w)
                                                       for w in other.words if len(w) >= 4 and len(name) >= 4)


def _roles_swapped(left: Facts, right: Facts) -> bool:
    """Two words both prompts share that sit on opposite sides of the same relation word, in opposite order."""
    shared = set(left.words) & set(right.words)
    for position, pivot in left.pivots:
        for other_position, other_pivot in right.pivots:
            if other_pivot != pivot:
                continue
            left_before = shared.intersection(left.words[:position])
            left_after = shared.intersection(left.words[position:])
            right_before = shared.intersection(right.words[:other_position])
            right_after = shared.intersection(right.words[other_position:])
            if (left_before - left_after) & (right_after - right_before) and (
                    (left_after - left_before) & (right_before - right_after)):
                return True
    return False


def _opposites(only_left: set[str], only_right: set[str]) -> bool:
    left = {_comparative_base(w) for w in only_left} | only_left
    right = {_comparative_base(w) for w in only_right} | only_right
    return any(ANTONYMS.get(w, set()) & right for w in left)


def near_miss(query: str, candidate: str, cosines: WordCosines | None = None,
              word_match: float = WORD_MATCH) -> str | None:
    """The reason ``candidate``'s answer must not be served for ``query``, or ``None`` if it may be.

    With ``cosines`` (word vectors of the embedder), the ``content`` rule pairs differing words whose vectors are
    at least ``word_match`` close and counts them as the same word; without it, only typos pair up."""
    left, right = facts(query), facts(candidate)
    if left.negations != right.negations:
        return "negation"
    if left.numbers and right.numbers and left.numbers != right.numbers:
        return "number"
    if left.units and right.units and set(left.units) != set(right.units):
        return "unit"
    if _roles_swapped(left, right) or _roles_swapped(right, left) or (
            len(left.units) > 1 and left.units != right.units and sorted(left.units) == sorted(right.units)):
        return "roles"
    left_set, right_set = set(left.words), set(right.words)
    only_left, only_right = _unmatched(left_set - right_set, right_set - left_set)
    if _opposites(only_left, only_right):
        return "antonym"
    if {left.compares, right.compares} == {"than", ""}:
        return "comparative"
    if _times_differ(left.times, right.times):
        return "time"
    if left.codes != right.codes or _names_swapped(left, query, right, candidate):
        return "entity"
    if left.focus and right.focus and left.focus != right.focus and not (
            cosines is not None and _similar_words(left, [left.focus], right, [right.focus], cosines, word_match)[0]):
        return "content"
    shared = len(left_set | right_set) - len(only_left) - len(only_right)
    differing = len(only_left) + len(only_right)
    if differing and shared and (differing <= SMALL_EDIT_WORDS or (
            shared >= 2 and shared >= MINIMAL_EDIT_OVERLAP * (shared + differing))):
        # A minimal edit. It is a rewording only if every differing word has a close counterpart on the other
        # side (a synonym, another form of the word); one word left without one is the edit that changes the
        # question ("quail" egg, "sick" / "vacation" days where their vectors are apart).
        if cosines is None or not only_left or not only_right:
            return "content"
        rest_left, rest_right = _similar_words(left, sorted(only_left), right, sorted(only_right), cosines,
                                               word_match, drop=True)
        if rest_left or rest_right:
            return "content"
    return None


def _unmatched(only_left: set[str], only_right: set[str]) -> tuple[set[str], set[str]]:
    """Drop the pairs of words that are one typo apart ("blu" / "blue", "conversoin" / "conversion")."""
    matched_left = {a for a in only_left if any(_one_typo_apart(a, b) for b in only_right)}
    matched_right = {b for b in only_right if any(_one_typo_apart(a, b) for a in only_left)}
    return only_left - matched_left, only_right - matched_right


def _similar_words(left: Facts, left_words: list[str], right: Facts, right_words: list[str],
                   cosines: WordCosines, word_match: float, drop: bool = False) -> tuple[set[str], set[str]]:
    """Without ``drop``: the words of each side that have a counterpart at least ``word_match`` close on the other
    side. With it: the words that have none. Numbers never pair up (the number rule owns them)."""
    left_surface, right_surface = dict(left.surface), dict(right.surface)
    matrix = cosines([left_surface.get(w, w) for w in left_words], [right_surface.get(w, w) for w in right_words])
    close = matrix >= word_match
    for i, word in enumerate(left_words):
        if word[0].isdigit():
            close[i, :] = False
    for j, word in enumerate(right_words):
        if word[0].isdigit():
            close[:, j] = False
    matched_left = {w for i, w in enumerate(left_words) if close[i].any()}
    matched_right = {w for j, w in enumerate(right_words) if close[:, j].any()}
    if drop:
        return set(left_words) - matched_left, set(right_words) - matched_right
    return matched_left, matched_right


def _one_typo_apart(a: str, b: str) -> bool:
    if min(len(a), len(b)) < 3 or abs(len(a) - len(b)) > 1 or a[0] != b[0] or a.isdigit() or b.isdigit():
        return False
    if len(a) == len(b):
        diffs = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diffs) == 1 or (len(diffs) == 2 and diffs[1] == diffs[0] + 1
                                   and a[diffs[0]] == b[diffs[1]] and a[diffs[1]] == b[diffs[0]])
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return any(long_[:i] + long_[i + 1:] == short for i in range(len(long_)))


def _times_differ(left: frozenset[str], right: frozenset[str]) -> bool:
    if left and right:
        return not left & right
    return bool((left | right) & STRONG_TIMES)


def _names_swapped(left: Facts, query: str, right: Facts, candidate: str) -> bool:
    missing_right = [n for n in left.names if not _mentioned(n, right, candidate)]
    missing_left = [n for n in right.names if not _mentioned(n, left, query)]
    return bool(missing_right) and bool(missing_left)
