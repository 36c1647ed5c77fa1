"""A prompt-injection detector: a score in [0, 1] and the names of the signals that produced it.

Three layers, cheapest first, each listed by name on the decision:

1. **Normalisation** (``normalise`` and ``_variants``): NFKC, zero-width characters dropped, letters spread out
   with spaces, dots or hyphens joined back (``i g n o r e``, ``D-i-s-r-e-g-a-r-d``), intra-word hyphens removed
   (``in-struc-tions``), digits inside words read as leetspeak (``1gn0r3`` → ``ignore``), and base64 blobs decoded
   and scanned as text of their own.
2. **Rules**, read once from ``workers/detectors/injection_rules.yaml`` (format and validation in
   ``workers/detectors/rules.py``): the literal rules of v1, plus lexical families that look for a *kind* of word
   near another kind rather than a phrase (an override verb near an instruction object that belongs to the model,
   a persona cue near "no rules / no filters", a disclosure verb near the model's own setup, text that addresses
   the model and tells it to act, an exfiltration verb with a secret and a destination, and the same families in
   French, German, Spanish, Italian, Dutch, Portuguese, Russian, Polish, Turkish, Chinese, Japanese, Korean and a
   few more). The v4 rules look at *whose* data or rights a request touches: a privilege for me ("make my account
   a superuser"), someone else's personal data (another customer's, a named person's, "it's not my order"), tools
   told to do damage (a destructive verb on everything, a risky tool by name, SQL or a shell that destroys, the
   cloud metadata endpoint), invented history (an agreement, an approval or an assistant turn that never
   happened) and personas whose rules "don't exist". A rule may be cancelled by an ``unless`` pattern near its hit:
   a how-to question, work on code or pasted text, the user's own earlier instructions about a topic, a
   conversation reported for review. One pass over the distinct trigger words of all rules (``TriggerIndex``)
   picks the rules worth running on a text.
3. **A hashed n-gram scorer** (``workers/detectors/injection_model.json``, trained by ``bench/train_injection.py``
   on tuning rows only: the project's tuning set, the outsider set's ``tune`` split and the outsider's second tune
   file ``injection_outsider_tune2.jsonl``): regularised logistic regression over word 1-2-grams and character
   3-5-grams hashed into 16k dimensions. Its bias is calibrated so that probability 0.6 (the default threshold) is
   the cut where 5-fold group cross-validation on the tuning rows flags 1 % of the benign rows; above one half it
   is listed as ``ngram_model``. It is not consulted for texts of fewer than six words (the tuning rows hold almost
   no short benign text to learn from).

4. **An opt-in semantic head** (``workers/detectors/semantic.py``, ``TOLLWAY_INJECTION_SEMANTIC``, the ``semantic``
   extra): a logistic regression over all-MiniLM-L6-v2 sentence embeddings (an int8 ONNX file shipped in a wheel),
   trained by ``bench/train_injection_semantic.py`` on the same tuning rows, consulted only when the larger of the
   rule score and the n-gram probability is in its uncertain band (0.25 to 0.6) and listed as ``semantic_head``.

The rules combine as ``1 - Π(1 - weight)`` over the signals found, so one strong signal crosses the default 0.6
threshold alone and two weak ones need each other. Text that *discusses* prompt injection (a question about
jailbreaks, a red-team brief) has the mention and quoted-only part of that halved and says so with
``discusses_injection``; the command rules found outside quotes (the attack signals) are never damped. The score is
the larger of the rule score and the model's probability, so nothing the model or the damping does can lower a
score below what the attack signals alone give.

With the semantic head (``python -m bench.injection_eval --semantic``, before → after in one run): outsider test
0.751 / 0.039 → 0.775 / 0.044; test2 0.537 / 0.034 → 0.675 / 0.034; a third outsider set, test3 (written by another
helper who never read the detector), 0.787 / 0.029 → 0.871 / 0.055. It costs ~60 ms of CPU per embedded prompt on
the project's 2-core machine (+16 ms per prompt on the eval's mix, 26 % embedded), hence off by default.

Measured by ``bench/injection_eval.py`` at 0.6 (tuning set, held-out set, outsider tune / test, tune2 / test2).
Outsider test split: TPR 0.751, FPR 0.039 (before v4 and tune2: 0.728 / 0.029). Second outsider set, test2 (its
writer never read the detector): 0.537 / 0.034. Project held-out set: 0.953 / 0.066 (was 0.976 / 0.060). Issue 16's
target (TPR >= 0.85 at FPR <= 0.03 on test) is *not* met. The rules fitted on tune rows reach 0.86 on tune2 and
generalise poorly to new wordings; the weakest families on both test sets are still cross-user exfiltration,
privilege escalation, invented multi-turn context, hypothetical-then-act and tool-command abuse: requests that are
only wrong because of *whose* data or rights they touch, which words alone do not show. Those belong to
authorisation (tool governance, the caller's own objects), not to a text classifier.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from workers.detectors.readings import TypoFolder, normalise, readings
from workers.detectors.rules import Rule, TriggerIndex, load_rules
from workers.detectors.semantic import SemanticScorer

__all__ = ["RULES", "InjectionResult", "NgramModel", "Rule", "features", "normalise", "score"]


@dataclass(frozen=True)
class InjectionResult:
    score: float
    rules: tuple[str, ...]


_BOOK = load_rules()  # once per process; a bad rule file fails the import with a ConfigError naming the rule
RULES: tuple[Rule, ...] = _BOOK.rules
_TYPOS = TypoFolder(_BOOK.typo_vocabulary)
_INDEX = TriggerIndex(RULES)
# A quoted span: straight or curly quotes, or backticks, not an apostrophe inside a word ("don't", "band's").
_QUOTED = re.compile(r"(?<!\w)(?:'[^'\n]{2,400}?'|\"[^\"\n]{2,400}?\"|“[^”\n]{2,400}?”|‘[^’\n]{2,400}?’|"
                     r"`[^`\n]{2,400}?`)(?!\w)")

# --- the n-gram model: hashed word 1-2-grams and character 4-grams, logistic regression. ---
MODEL_PATH = Path(__file__).with_name("injection_model.json")
_WORD = re.compile(r"\w+")


_CHAR_MULTIPLIERS = np.array([0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F, 0x165667B1], dtype=np.uint64)
_CHAR_SIZES = (3, 4, 5)
# The model only speaks for texts of six words or more: under that the tuning rows hold 7 benign texts of 427 (and
# 12 attacks of 370), so it has no evidence that short requests are mostly benign ("Your account refund?" read as
# an attack). Short attacks are left to the rules.
MIN_WORDS = 6


def features(text: str, dims: int) -> np.ndarray:
    """Indices of the hashed n-grams of an already normalised text, stable across processes (no ``hash()``).

    Words and word pairs go through crc32; character 3-, 4- and 5-grams (of the words joined by single spaces) are
    hashed in one numpy pass over the code points per size.
    """
    words = _WORD.findall(text.lower())
    grams = [*words, *(f"{a} {b}" for a, b in itertools.pairwise(words))]
    parts = [np.fromiter((zlib.crc32(g.encode()) for g in grams), dtype=np.uint64, count=len(grams))]
    points = np.frombuffer(f" {' '.join(words)} ".encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    for size in _CHAR_SIZES:
        if points.size >= size:
            mixed = np.full(points.size - size + 1, size, dtype=np.uint64)
            for k in range(size):
                mixed += points[k:points.size - size + 1 + k] * _CHAR_MULTIPLIERS[k]
            parts.append((mixed & np.uint64(0xFFFFFFFF)) >> np.uint64(3))
    return (np.concatenate(parts) % np.uint64(dims)).astype(np.int64)


@dataclass(frozen=True)
class NgramModel:
    weights: np.ndarray
    bias: float  # calibrated by the trainer: probability 0.6 (the default threshold) at the cross-validated cut

    @property
    def dims(self) -> int:
        return int(self.weights.shape[0])

    def probability(self, text: str) -> float:
        idx = np.unique(features(text, self.dims))
        if idx.size == 0:
            return 1.0 / (1.0 + math.exp(-self.bias))
        z = float(self.weights[idx].sum()) / math.sqrt(idx.size) + self.bias
        return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))

    @classmethod
    def load(cls, path: Path = MODEL_PATH) -> NgramModel | None:
        if not path.exists():
            return None
        raw = json.loads(path.read_text(encoding="utf-8"))
        return cls(np.asarray(raw["weights"], dtype=np.float32), float(raw["bias"]))


@cache
def _model() -> NgramModel | None:
    return NgramModel.load()


def _variants(text: str) -> list[str]:
    return readings(text, _TYPOS)


def _found(variants: list[str]) -> dict[str, Rule]:
    hits: set[str] = set()
    for variant in variants:
        for rule in _INDEX.candidates(variant, variant.lower()):
            if rule.name not in hits and rule.search(variant):
                hits.add(rule.name)
    return {rule.name: rule for rule in RULES if rule.name in hits}  # in the rule file's order


def _combine(weights: list[float]) -> float:
    remaining = 1.0
    for weight in weights:
        remaining *= 1.0 - weight
    return 1.0 - remaining


SEMANTIC_MAX_TEXTS = 4  # the semantic head embeds at most this many texts of a request (each costs one model run)


def score(texts: list[str], *, use_model: bool = True, semantic: SemanticScorer | None = None) -> InjectionResult:
    """Score the texts (prompt messages and retrieved passages) of one request.

    The signals split in two. *Attack signals* are command rules that match outside quotes: nothing lowers what
    they add up to ("(Approved by the security team.)" after a command changes nothing). The rest (mention rules,
    commands found only inside quotes) is damped when the text discusses injection or asks, outside its quotes, a
    question about what it quotes. The n-gram scorer's calibrated probability is taken as it is; the score is the
    larger of it and the rule score. With ``semantic`` (``workers.detectors.semantic``, opt-in), texts whose reading
    (the larger of the rule score and the n-gram probability) falls in the head's uncertain band are embedded and
    the head's calibrated probability is taken the same way (listed as ``semantic_head`` from one half up).
    """
    present = [t for t in texts if t]
    variants = [v for t in present for v in _variants(t)]
    found = _found(variants)
    quoted = any(_QUOTED.search(t) for t in present)
    unquoted = [_QUOTED.sub(" ", t) for t in present] if quoted else present
    outside = _found([v for t in unquoted for v in _variants(t)]) if quoted and found else found
    quoted_only = [name for name in found if name not in outside]
    attack = [r.weight for r in found.values() if not r.mention and r.name in outside]
    others = [r.weight for r in found.values() if r.mention or r.name not in outside]
    signals: dict[str, float] = {name: rule.weight for name, rule in found.items()}
    dampable = _combine(others)
    if dampable and _discusses(variants, unquoted, asks_about_quote=bool(quoted_only)):
        signals["discusses_injection"] = 0.0
        dampable *= _BOOK.discussion_damping
    result = 1.0 - (1.0 - _combine(attack)) * (1.0 - dampable)
    model = _model() if use_model else None
    reading = result
    if model is not None and variants and len(_WORD.findall(variants[0])) >= MIN_WORDS:
        probability = max(model.probability(v) for v in variants[:2])  # the text and its folded reading
        reading = max(result, probability)
        if probability >= 0.5:
            signals["ngram_model"] = round(probability, 4)
            result = max(result, probability)
    if semantic is not None and semantic.head.in_band(reading):
        long_texts = [t for t in present if len(_WORD.findall(t)) >= MIN_WORDS][:SEMANTIC_MAX_TEXTS]
        if long_texts:
            probability = max(semantic.probability(t) for t in long_texts)
            if probability >= 0.5:
                signals["semantic_head"] = round(probability, 4)
                result = max(result, probability)
    return InjectionResult(score=round(result, 4), rules=tuple(signals))


def _discusses(variants: list[str], unquoted: list[str], *, asks_about_quote: bool) -> bool:
    """The text talks about injection, or asks a question (outside its quotes) about a quoted command."""
    return any(_BOOK.discussion.search(v) for v in variants) or (asks_about_quote and any("?" in t for t in unquoted))
