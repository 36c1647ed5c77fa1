"""Auto quality tier, heuristic: how much model a request needs, estimated from the request itself.

Used when neither the request nor the tenant's policy fixes a tier and no calibrated router
(:mod:`workers.routing.calibrated`) is in force. Signals, each adding to a score in [0, 1]: length of the
instruction; the size of the material to transform (a long document to summarise, translate, classify or extract
from needs at least the medium tier: reading it is the work); a plan asked under several constraints; reasoning
markers (why / compare / trade-offs / step by step …); math markers (equations, arithmetic, "probability"); code
markers (fences, language names, "stack trace"); several questions or numbered parts in one request. Simple-task
markers (greetings, classify, translate, "what is") pull it down only when the material they apply to is short
(<= ~60 words), and a high-confidence retrieval passage pulls it down (a question a passage answers well needs an
extractor, not a reasoner). Score < SMALL_BELOW → small, < MEDIUM_BELOW → medium, else large. Measured in
``bench/model_bench.py`` against ``bench/data/difficulty.jsonl`` and the outsider's routing set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from schemas.envelope import Envelope
from workers.routing.features import SHORT_MATERIAL_WORDS, extract, split_prompt
from workers.routing.tokens import count_tokens

SMALL_BELOW = 0.35
MEDIUM_BELOW = 0.6
CONFIDENT_RETRIEVAL = 0.75

_I = re.IGNORECASE
_REASONING = re.compile(
    r"\b(why|explain\w*|compare|contrast|trade-?offs?|analy[sz]e|evaluate|justify|prove|derive|reason(ing)?|"
    r"step[- ]by[- ]step|implications?|pros and cons|critique|design|architect\w*|strateg\w+|recommend\w*|"
    r"should (i|we)|what would happen|assess|plan (a|an|for|the)|walk (me )?through|roadmap|prioriti[sz]e)\b", _I)
_MATH = re.compile(
    r"\b(solve|equations?|integral|derivative|probabilit\w+|calculate|compute|variance|matrix|theorem|proofs?|"
    r"expected value|compound interest|percentage|closed form)\b|"
    r"\d+(\.\d+)?\s*[-+*/^×÷=%]\s*\(?\d|\d\s*%|[∑∫√π]|\w\^\d", _I)
_CODE = re.compile(
    r"```|\b(def|regex|sql|python|javascript|typescript|rust|golang|java|c\+\+|kotlin|bash|compile\w*|"
    r"stack ?trace|traceback|exception|refactor|implement\w*|algorithm|debug\w*|segfault|deadlock|race condition|"
    r"async|function|endpoint|kubernetes|docker)\b|=>|\w+\(\)", _I)
_SIMPLE = re.compile(
    r"^\s*(hi|hello|hey|thanks|thank you|good (morning|afternoon))\b|"
    r"\b(classify|translate|summari[sz]e|what is|what's|who is|when (is|does|did)|where (is|do|can)|define|"
    r"spell|rephrase|how do i|how can i|yes or no|tl;?dr|extract)\b", _I)
_PARTS = re.compile(r"\?|^\s*(\d+[.)]|[-*•])\s+|(?<=\s)\d\)\s", re.MULTILINE)
_ALSO = re.compile(r"\b(and also|additionally|as well as|finally)\b|,\s*(and )?then\b", _I)
_WRITING = re.compile(r"\b(write|draft|compose|outline)\b", _I)


@dataclass(frozen=True)
class Difficulty:
    tier: str
    score: float
    signals: tuple[str, ...]

    def explain(self) -> str:
        return f"auto {self.tier} (score {self.score:.2f}: {', '.join(self.signals) or 'no markers'})"


MATERIAL_WEIGHT = 0.25  # reading and transforming a long input is medium work whatever the verb
PLAN_WEIGHT = 0.3  # a plan under several interacting constraints is large work


def estimate(prompt: str, *, retrieval_confidence: float = 0.0, has_passages: bool = False) -> Difficulty:
    score, signals = 0.15, []
    features = extract(prompt)
    tokens = count_tokens(split_prompt(prompt).instruction)
    length = min(0.3, tokens / 300)
    if length >= 0.05:
        score += length
        signals.append(f"{tokens} tokens")
    long_material = features.material_words > SHORT_MATERIAL_WORDS
    if long_material:
        score += MATERIAL_WEIGHT
        signals.append(f"{features.material_words}-word material to work on")
    values = features.as_dict()
    if values["plan"] >= 2 and values["constraints_log"] >= 1.6:  # >= 4 listed constraints
        score += PLAN_WEIGHT
        signals.append("plan under constraints")
    hits = {name: len(pattern.findall(prompt)) for name, pattern in
            (("reasoning", _REASONING), ("math", _MATH), ("code", _CODE))}
    weights = {"reasoning": 0.25, "math": 0.3, "code": 0.3}
    for name, count in hits.items():
        if count:
            score += weights[name] + min(0.2, 0.07 * (count - 1))
            signals.append(f"{name}×{count}")
    if _WRITING.search(prompt) and not any(hits.values()):
        score += 0.2
        signals.append("writing")
    parts = len(_PARTS.findall(prompt)) + len(_ALSO.findall(prompt))
    if parts > 1:
        score += min(0.3, 0.12 * (parts - 1))
        signals.append(f"{parts} parts")
    if _SIMPLE.search(prompt) and not any(hits.values()) and not long_material:
        score -= 0.15
        signals.append("simple task")
    if has_passages and retrieval_confidence >= CONFIDENT_RETRIEVAL:
        score -= 0.15
        signals.append(f"retrieval confidence {retrieval_confidence:.2f}")
    score = round(min(1.0, max(0.0, score)), 3)
    tier = "small" if score < SMALL_BELOW else "medium" if score < MEDIUM_BELOW else "large"
    return Difficulty(tier=tier, score=score, signals=tuple(signals))


def estimate_envelope(env: Envelope) -> Difficulty:
    retrieval = env.retrieval
    return estimate(env.request.prompt, retrieval_confidence=retrieval.confidence if retrieval else 0.0,
                    has_passages=bool(retrieval and retrieval.passages))
