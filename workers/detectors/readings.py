"""The readings of a text the injection rules are run on: the text as normalised, and the ways an attacker hides words.

- ``normalise``: NFKC, zero-width characters dropped, letters spread out with spaces, dots or hyphens joined back
  (``i g n o r e``, ``D-i-s-r-e-g-a-r-d``), whitespace collapsed.
- the *folded* reading: intra-word hyphens removed (``in-struc-tions``), digits inside words read as leetspeak
  (``1gn0r3``), Cyrillic and Greek look-alike letters inside Latin words read as Latin (``Іgnоre``), and words one
  typing slip away from a word the rules look for read as that word (``Igonre``, ``previus``, ``instrucitons``).
- base64 blobs decoded, and the whole text reversed when it asks to be read backwards.

Functions here are pure and cheap; the vocabulary of words worth correcting comes with the rules
(``typo_vocabulary`` in ``injection_rules.yaml``).
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from collections.abc import Iterable

_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)
_SPACES = re.compile(r"[ \t\r\f\v]+")
# Three or more single letters with one separator between each: "i g n o r e", "i.g.n.o.r.e", "D-i-s-r-e-g-a-r-d".
_SPREAD = re.compile(r"(?<![^\W\d_])(?:[^\W\d_][ .\-*_]){2,}[^\W\d_](?![^\W\d_])")
_SPREAD_SEPARATORS = re.compile(r"[ .\-*_]")
_DIGIT = re.compile(r"\d")
_INNER_HYPHEN = re.compile(r"(?<=[^\W\d_])-(?=[^\W\d_])")
_MIXED_TOKEN = re.compile(r"\b(?=\w*[^\W\d_])(?=\w*\d)\w+\b")
_LEET = str.maketrans("013457", "oieast")
_BASE64 = re.compile(r"[A-Za-z0-9+/]{16,}={0,2}")
_LETTERS = re.compile(r"[^\W\d_]+")
# Cyrillic and Greek letters that look like Latin ones; applied only inside words that also hold Latin letters, so
# Russian or Greek text is left as it is.
_CONFUSABLES = str.maketrans("аеорсухіјѕԁɡӏАЕОРСХІЈЅКМНТВαοιρνκτΑΕΟΡΙΚΝΤΒΜΧ",
                             "aeopcyxijsdglAEOPCXIJSKMHTBaoipvktAEOPIKNTBMX")
_BACKWARDS = re.compile(r"\b(?:backwards?|reversed?|right to left)\b", re.IGNORECASE)


def normalise(text: str) -> str:
    """NFKC, zero-width characters dropped, spread-out letters joined, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).translate(_ZERO_WIDTH)
    text = _SPREAD.sub(lambda m: _SPREAD_SEPARATORS.sub("", m.group()), text)
    return _SPACES.sub(" ", text)


class TypoFolder:
    """Reads a word one slip away from a vocabulary word (a letter dropped, added, changed or two swapped) as that word.

    Symmetric deletes: two words are within one edit (or one adjacent swap) when deleting at most one letter from
    each makes them equal. Only vocabulary words of five letters or more are used (shorter ones have too many
    neighbours that are words of their own), and a longer word that starts with a vocabulary word is an inflection
    ("ignored"), not a slip.
    """

    MIN_LENGTH = 5

    def __init__(self, vocabulary: Iterable[str]) -> None:
        self.words = frozenset(w.lower() for w in vocabulary if len(w) >= self.MIN_LENGTH)
        self._deleted: dict[str, str] = {}
        ambiguous: set[str] = set()
        for word in sorted(self.words):
            for key in {word, *self._deletes(word)}:
                if self._deleted.setdefault(key, word) != word:
                    ambiguous.add(key)
        for key in ambiguous - self.words:
            del self._deleted[key]
        self._memo: dict[str, str] = {}  # words repeat across requests; bounded below

    @staticmethod
    def _deletes(word: str) -> set[str]:
        return {word[:i] + word[i + 1:] for i in range(len(word))}

    def correct(self, token: str) -> str:
        known = self._memo.get(token)
        if known is None:
            if len(self._memo) >= 50_000:
                self._memo.clear()
            known = self._memo[token] = self._correct(token)
        return known

    def _correct(self, token: str) -> str:
        lowered = token.lower()
        if len(lowered) < self.MIN_LENGTH - 1 or lowered in self.words:
            return token
        for key in (lowered, *self._deletes(lowered)):
            word = self._deleted.get(key)
            if word is not None and not (len(lowered) > len(word) and lowered.startswith(word)):
                return word
        return token

    def fold(self, text: str) -> str:
        return _LETTERS.sub(lambda m: self.correct(m.group()), text)


def _latin_lookalikes(word: str) -> str:
    if word.isascii() or not any("a" <= c.lower() <= "z" for c in word):
        return word
    return word.translate(_CONFUSABLES)


def readings(text: str, typos: TypoFolder) -> list[str]:
    """The normalised text, then its folded reading when different, then decoded base64 and the reversed text."""
    normal = normalise(text)
    out = [normal]
    folded = _INNER_HYPHEN.sub("", normal) if "-" in normal else normal
    if _DIGIT.search(folded):  # a regex, not a Python loop per character
        folded = _MIXED_TOKEN.sub(lambda m: m.group().translate(_LEET), folded)
    if not folded.isascii():
        folded = _LETTERS.sub(lambda m: _latin_lookalikes(m.group()), folded)
    folded = typos.fold(folded)
    if folded != normal:
        out.append(folded)
    for blob in _BASE64.findall(text) if len(text) >= 16 else ():
        try:
            decoded = base64.b64decode(blob + "=" * (-len(blob) % 4), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            continue
        if decoded.isprintable():
            out.append(normalise(decoded))
    if _BACKWARDS.search(normal):
        out.append(normal[::-1])
    return out
