"""Regexes that skip texts they cannot match: the same results as the pattern, at a fraction of its cost.

The router's features (``workers/routing/features.py``) run ~25 case-insensitive word-list patterns over every prompt.
Python's ``re`` tries every alternative of such a pattern at every position of the text, so a pattern that finds
nothing — most of them, for most prompts — costs as much as one that finds something: ~0.5 ms of the model stage's
CPU per request (``python -m bench.micro``, py-spy). Most alternatives start with plain words, though, and a match
is impossible unless one of them occurs in the text.

:func:`required_literals` reads the parsed pattern and returns strings one of which every match must contain (or None
when it cannot say). :class:`Prefiltered` checks them with ``str.__contains__`` — on the lowercased text when the
pattern ignores case — and runs the pattern only when one is present. The check is exact on ASCII texts (which chars
of ASCII a pattern's literal matches is asked of ``re`` itself, so the Kelvin sign matching ``k`` is honoured); any
other text always runs the pattern. ``tests/workers/test_prefilter.py`` checks every prefiltered pattern (the router's
features, the PII detector's secrets) against the pattern itself over the evaluation sets and adversarial strings.
"""

from __future__ import annotations

import re
import re._constants as sre_c  # type: ignore[import-not-found]  # the parser's opcodes (CPython 3.11+)
import re._parser as sre_parse  # type: ignore[import-not-found]
from collections.abc import Iterator
from functools import cache
from typing import Any

# One-entry memo of the last text lowercased: the ~25 patterns of one prompt share one ``lower()``. One tuple, read
# once, so a thread that replaced it in between can never pair a text with another text's lowercase.
_last: tuple[str | None, str] = (None, "")


def _lowered(text: str) -> str:
    global _last
    last = _last
    if last[0] is text:
        return last[1]
    lowered = text.lower()
    _last = (text, lowered)
    return lowered


@cache
def _ascii_twin(code: int, flags: int) -> str | None:
    """The one (lowercased) ASCII character that the pattern literal ``code`` matches, "" when it matches none, and
    None when it matches several different ones (never for letters: their cases lower to the same character)."""
    literal = re.compile(re.escape(chr(code)), flags & re.IGNORECASE)
    twins = {chr(a).lower() if flags & re.IGNORECASE else chr(a) for a in range(128) if literal.fullmatch(chr(a))}
    if len(twins) > 1:
        return None
    return twins.pop() if twins else ""


Requirement = frozenset[str] | None  # one of these must occur; frozenset() = cannot match ASCII text; None = unknown


def _sequence(items: Any, flags: int) -> Requirement:
    """A sequence matches only if every item does, so any item's requirement holds for it: the most selective one
    is kept (the one whose shortest string is longest: "depth" rather than "in" for ``in[- ]depth``)."""
    items = list(items)
    found: list[frozenset[str]] = []
    i = 0
    while i < len(items):
        op, av = items[i]
        if op is sre_c.LITERAL:
            run = []
            while i < len(items) and items[i][0] is sre_c.LITERAL:
                twin = _ascii_twin(items[i][1], flags)
                if twin is None:
                    break
                if twin == "":
                    return frozenset()  # a character no ASCII text has
                run.append(twin)
                i += 1
            if run:
                found.append(frozenset({"".join(run)}))
            else:
                i += 1
            continue
        required = _item(op, av, flags)
        if required is not None:
            if not required:
                return required
            found.append(required)
        i += 1
    return max(found, key=lambda strings: (min(map(len, strings)), -len(strings))) if found else None


def _item(op: Any, av: Any, flags: int) -> Requirement:
    if op is sre_c.SUBPATTERN:
        _group, add_flags, del_flags, sub = av
        return None if add_flags or del_flags else _sequence(sub, flags)
    if op is sre_c.BRANCH:
        union: set[str] = set()
        for alternative in av[1]:
            found = _sequence(alternative, flags)
            if found is None:
                return None
            union |= found
        return frozenset(union)
    if op in (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT, sre_c.POSSESSIVE_REPEAT):
        low, _high, sub = av
        return _sequence(sub, flags) if low >= 1 else None
    if op is sre_c.IN:
        chars: set[str] = set()
        for member_op, member in av:
            if member_op is sre_c.LITERAL:
                codes: range | tuple[int, ...] = (member,)
            elif member_op is sre_c.RANGE and member[1] - member[0] <= 64:
                codes = range(member[0], member[1] + 1)
            else:
                return None  # a category (\d, \w), a negation or a wide range: anything goes
            for code in codes:
                twin = _ascii_twin(code, flags)
                if twin is None:
                    return None
                if twin:
                    chars.add(twin)
        return frozenset(chars)
    return None  # anchors, look-arounds, back references, dots: no requirement from this item


def required_literals(pattern: re.Pattern[str]) -> Requirement:
    """Strings one of which every match of ``pattern`` contains (lowercased when it ignores case), read on ASCII
    text; None when the pattern gives no such guarantee (then nothing is skipped)."""
    if pattern.flags & (re.VERBOSE | re.ASCII) or not isinstance(pattern.pattern, str):
        return None
    return _sequence(sre_parse.parse(pattern.pattern, pattern.flags), pattern.flags)


class Prefiltered:
    """``pattern``'s ``findall``/``search``/``finditer``, skipped on ASCII texts that contain none of its literals."""

    __slots__ = ("ignorecase", "literals", "pattern")

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        required = required_literals(pattern)
        # Shortest first: they are the likeliest to occur, and ``any`` stops at the first that does.
        self.literals = tuple(sorted(required, key=len)) if required is not None else None
        self.ignorecase = bool(pattern.flags & re.IGNORECASE)

    def impossible(self, text: str) -> bool:
        if self.literals is None or not text.isascii():
            return False
        haystack = _lowered(text) if self.ignorecase else text
        return not any(map(haystack.__contains__, self.literals))

    def findall(self, text: str) -> list[Any]:
        return [] if self.impossible(text) else self.pattern.findall(text)

    def search(self, text: str) -> re.Match[str] | None:
        return None if self.impossible(text) else self.pattern.search(text)

    def finditer(self, text: str) -> Iterator[re.Match[str]]:
        return iter(()) if self.impossible(text) else self.pattern.finditer(text)


def prefiltered(pattern: str, flags: int = 0) -> Prefiltered:
    return Prefiltered(re.compile(pattern, flags))


# ---------------------------------------------------------------------------------------------------- word families
# Counting and testing, which is all most of the router's features need, run a case-sensitive twin of a
# case-insensitive pattern over the lowercased ASCII text: ``re`` skips an alternative on its first character only
# when that character is compared case-sensitively, so the word lists run 2–3× faster. Exact on ASCII texts
# (``tests/workers/test_prefilter.py``); any other text runs the pattern itself. (A shared trigram gate in front of
# the literal checks was tried: building a prompt's trigram set costs more than the ~30 substring scans it saves.)
def _lower_items(items: Any, flags: int) -> list[Any] | None:
    """The parsed items with every literal replaced by the one lowercase ASCII character it matches under ``flags``
    (None when some item has no such reading: then there is no twin)."""
    out: list[Any] = []
    for op, av in items:
        if op in (sre_c.LITERAL, sre_c.NOT_LITERAL):
            twin = _ascii_twin(av, flags)
            if twin is None:
                return None
            out.append((op, ord(twin) if twin else av))  # no ASCII twin: the literal itself, which ASCII text lacks
        elif op is sre_c.IN:
            members: list[Any] = []
            for member_op, member in av:
                if member_op is sre_c.LITERAL or member_op is sre_c.RANGE:
                    codes = (member,) if member_op is sre_c.LITERAL else range(member[0], member[1] + 1)
                    if len(codes) > 256:
                        return None
                    for code in codes:
                        twin = _ascii_twin(code, flags)
                        if twin is None:
                            return None
                        if twin:  # a member no ASCII character matches cannot matter on ASCII text
                            members.append((sre_c.LITERAL, ord(twin)))
                elif member_op in (sre_c.NEGATE, sre_c.CATEGORY):
                    members.append((member_op, member))
                else:
                    return None
            out.append((op, members))
        elif op is sre_c.SUBPATTERN:
            group, add_flags, del_flags, sub = av
            lowered = None if add_flags or del_flags else _lower_sub(sub, flags)
            if lowered is None:
                return None
            out.append((op, (group, add_flags, del_flags, lowered)))
        elif op is sre_c.BRANCH:
            alternatives = [_lower_sub(sub, flags) for sub in av[1]]
            if any(alt is None for alt in alternatives):
                return None
            out.append((op, (av[0], alternatives)))
        elif op in (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT, sre_c.POSSESSIVE_REPEAT):
            low, high, sub = av
            lowered = _lower_sub(sub, flags)
            if lowered is None:
                return None
            out.append((op, (low, high, lowered)))
        elif op in (sre_c.AT, sre_c.ANY, sre_c.CATEGORY):
            out.append((op, av))
        else:
            return None  # look-arounds, back references, …: keep the pattern itself
    return out


def _lower_sub(sub: Any, flags: int) -> Any:
    items = _lower_items(sub.data, flags)
    return None if items is None else sre_parse.SubPattern(sub.state, items)


def lowercase_twin(pattern: re.Pattern[str]) -> re.Pattern[str] | None:
    """A case-sensitive pattern that matches the lowercased form of an ASCII text exactly where the case-insensitive
    ``pattern`` matches the text (same spans); None when the pattern is not case-insensitive or has no such twin."""
    import re._compiler as sre_compile  # type: ignore[import-not-found]

    if not pattern.flags & re.IGNORECASE or pattern.flags & (re.VERBOSE | re.ASCII | re.LOCALE) \
            or not isinstance(pattern.pattern, str):
        return None
    parsed = sre_parse.parse(pattern.pattern, pattern.flags)
    if parsed.state.flags != pattern.flags:
        return None  # inline flags
    lowered = _lower_sub(parsed, pattern.flags)
    if lowered is None:
        return None
    flags = pattern.flags & ~re.IGNORECASE
    lowered.state.flags = flags
    twin: re.Pattern[str] = sre_compile.compile(lowered, flags)
    return twin


# A short text (most prompts) is scanned once for every literal of every case-insensitive family — a trie of them in
# one look-ahead pattern reports the longest literal starting at each position, and with it every shorter literal
# that is a prefix of it — so each family's check is one set comparison instead of ~15 substring scans. Past
# ``SCAN_BELOW_CHARS`` the scan costs more than the scans it replaces (measured over bench.micro's and the outsider's
# prompts), and each family checks its own literals.
SCAN_BELOW_CHARS = 300
_family_literals: set[str] = set()
_scanner: tuple[re.Pattern[str], dict[str, frozenset[str]]] | None = None
_last_present: tuple[str | None, frozenset[str]] = (None, frozenset())


def _trie_pattern(words: set[str]) -> str:
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}  # a literal ends here

    def emit(node: dict[str, Any]) -> str:
        branches = [re.escape(char) + emit(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 and len(node) == 1 else f"(?:{'|'.join(branches)})"
        return f"{body}?" if "" in node else body  # greedy: the longest literal first, shorter ones on the way

    return emit(trie)


def _present(lowered: str) -> frozenset[str]:
    """Every family literal that occurs in ``lowered`` (a one-entry memo, like ``_lowered``)."""
    global _scanner, _last_present
    last = _last_present
    if last[0] is lowered:
        return last[1]
    if _scanner is None:
        literals = sorted(_family_literals)
        prefixes = {literal: frozenset(m for m in literals if literal.startswith(m)) for literal in literals}
        _scanner = re.compile(f"(?=({_trie_pattern(_family_literals)}))"), prefixes
    scanner, prefixes = _scanner
    present: frozenset[str] = frozenset().union(*map(prefixes.__getitem__, set(scanner.findall(lowered))))
    _last_present = (lowered, present)
    return present


class Scanned:
    """One text as the family checks read it: the text, whether it is ASCII, its lowercase and — for a short ASCII
    text — the family literals present in it (one scan for every family; None: each family checks its own
    literals). :func:`workers.routing.features.extract` builds one per text and asks ~18 families of it, which
    saves each check re-deriving all of this from the text (``*_in`` below return what ``count``/``found``/
    ``finditer`` return for ``text``)."""

    __slots__ = ("ascii", "lowered", "present", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.ascii = text.isascii()
        self.lowered = _lowered(text)
        self.present = _present(self.lowered) if self.ascii and len(text) < SCAN_BELOW_CHARS else None


class WordFamily(Prefiltered):
    """A :class:`Prefiltered` pattern of the router's feature family: on short ASCII text its literals are checked
    against the one shared scan, and :meth:`count` and :meth:`found` run its lowercase twin on ASCII text;
    ``findall``/``search``/``finditer`` return exactly what the pattern does."""

    __slots__ = ("literal_set", "twin")

    def __init__(self, pattern: re.Pattern[str]) -> None:
        global _scanner, _last_present
        super().__init__(pattern)
        self.twin = lowercase_twin(pattern)
        self.literal_set = frozenset(self.literals or ())
        if self.literals is not None and self.ignorecase:
            _family_literals.update(self.literals)
            _scanner, _last_present = None, (None, frozenset())  # the scan must now look for these too

    def impossible(self, text: str) -> bool:
        if self.literals is None or not self.ignorecase or len(text) >= SCAN_BELOW_CHARS or not text.isascii():
            return super().impossible(text)
        return self.literal_set.isdisjoint(_present(_lowered(text)))

    def count(self, text: str) -> int:
        """``len(findall(text))``."""
        if self.impossible(text):
            return 0
        if self.twin is not None and text.isascii():
            return len(self.twin.findall(_lowered(text)))
        return len(self.pattern.findall(text))

    def found(self, text: str) -> bool:
        """``search(text) is not None``."""
        if self.impossible(text):
            return False
        if self.twin is not None and text.isascii():
            return self.twin.search(_lowered(text)) is not None
        return self.pattern.search(text) is not None

    def _impossible_in(self, scan: Scanned) -> bool:
        """``impossible(scan.text)``, from the shared scan when the text had one."""
        if scan.present is not None and self.literals is not None and self.ignorecase:
            return self.literal_set.isdisjoint(scan.present)
        return self.impossible(scan.text)

    def count_in(self, scan: Scanned) -> int:
        """``count(scan.text)``."""
        if self._impossible_in(scan):
            return 0
        if self.twin is not None and scan.ascii:
            return len(self.twin.findall(scan.lowered))
        return len(self.pattern.findall(scan.text))

    def found_in(self, scan: Scanned) -> bool:
        """``found(scan.text)``."""
        if self._impossible_in(scan):
            return False
        if self.twin is not None and scan.ascii:
            return self.twin.search(scan.lowered) is not None
        return self.pattern.search(scan.text) is not None

    def finditer_in(self, scan: Scanned) -> Iterator[re.Match[str]]:
        """``finditer(scan.text)``."""
        return iter(()) if self._impossible_in(scan) else self.pattern.finditer(scan.text)


def word_family(pattern: str, flags: int = 0) -> WordFamily:
    return WordFamily(re.compile(pattern, flags))
