"""Online evaluators: the quality of an answer, measured where it is built, so the ledger can put it beside cost.

Four verdicts, each ``None`` when it does not apply (never a guess):

* **grounded** — the share of the answer's sentences supported by the retrieved passages passes at
  ``grounded_min`` (a sentence is supported when at least :data:`SUPPORT_MIN` of its content words occur in one
  passage; words are normalised and stemmed as the offline embedder does). Not applicable without passages, or to
  an answer with no sentence of two content words or more (a greeting).
* **structured** — the answer satisfies the request's ``response_format``; only when one was asked for. The
  post-process guard has already validated (and maybe repaired) it: its verdict is taken, not recomputed.
* **refusal** — the answer declines to help ("I can't help with that", "I couldn't find …, so I can't …").
  Detected on the opening of the answer, where refusals are phrased; a pass is *no* refusal.
* **SLO met** — the response was completed before the request's deadline. It needs only two timestamps every
  response carries, so the ledger evaluates it on every response (:func:`slo_met`), not on a sample.

Sampling (:func:`sampled`) is by a hash of the request id, so a redelivered request gets the same decision and a
replayed response carries the same verdicts as the first.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from functools import lru_cache

from schemas.envelope import Envelope, Evaluation, Passage, Status
from schemas.response import Response
from workers.embedding import STOPWORDS, normalise_text, stem, tokens

SUPPORT_MIN = 0.6  # share of a sentence's content words one passage must contain for the sentence to be supported
MIN_CLAIM_WORDS = 2  # a sentence with fewer content words is not judged
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_CITATION = re.compile(r"\[[^\]\n]{1,80}\]")  # "[doc-7]": a citation is not a claim
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")
# Matched against normalise_text() output: lower case, contractions expanded ("can't" → "can not").
# Each alternative starts with a literal and (?<!\w.) after it is the \b before it (that letter is a word character):
# a pattern that opens with \b is tried at every position of the opening, this one only where an "i", "a" or "t" is.
_REFUSAL = re.compile(
    r"(?:"
    r"i(?<!\w.) (?:am )?(?:sorry|afraid),? but\b"
    r"|i(?<!\w.) (?:can not|will not|am unable to|am not able to|must decline to|have to decline to|do not have "
    r"enough information to) (?:help|assist|answer|provide|comply|give|share|do|fulfil|fulfill|complete|respond)"
    r"|i(?<!\w.) must decline|i(?<!\w.) have to decline|i(?<!\w.) refuse\b"
    r"|a(?<!\w.)s an ai(?: language model)?\b"
    r"|t(?<!\w.)h(?:is|at) is not something i can\b"
    r")")
_REFUSAL_WINDOW = 300  # characters: a refusal opens the answer; later text may legitimately quote one
# Every refusal _REFUSAL matches has one of these (the regex runs only where one is: most answers have none).
_REFUSAL_WORDS = ("sorry", "afraid", "i can not", "i will not", "unable", "i am not able", "decline",
                  "i do not have enough", "refuse", "as an ai", "is not something i can")


def sampled(request_id: str, rate: float) -> bool:
    """Whether this request is evaluated at ``rate`` (0..1): a stable hash of the id, not a random draw."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    bucket = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big")
    return bucket < rate * 2**64


def content_words(text: str) -> frozenset[str]:
    return frozenset(stem(word) for word in tokens(normalise_text(text)) if word not in STOPWORDS)


# The same chunks are retrieved for many requests; their words are most of an evaluation's cost (~0.35 ms cold).
_passage_words = lru_cache(maxsize=4096)(content_words)


def answer_sentences(answer: str) -> list[str]:
    """The answer's sentences without citations and list markers."""
    out = []
    for line in _SENTENCE.split(answer):
        sentence = _BULLET.sub("", _CITATION.sub("", line)).strip()
        if sentence:
            out.append(sentence)
    return out


def grounded_share(answer: str, passages: Sequence[Passage]) -> float | None:
    """Share of the answer's sentences with content words supported by one passage (None: nothing to judge)."""
    if not passages:
        return None
    sources = [_passage_words(p.text) for p in passages]
    judged = supported = 0
    for sentence in answer_sentences(answer):
        words = content_words(sentence)
        if len(words) < MIN_CLAIM_WORDS:
            continue  # "Hello!", "Sure." claim nothing
        judged += 1
        if any(len(words & source) >= SUPPORT_MIN * len(words) for source in sources):
            supported += 1
    return supported / judged if judged else None


def is_refusal(answer: str) -> bool:
    opening = normalise_text(answer[:_REFUSAL_WINDOW])
    return any(word in opening for word in _REFUSAL_WORDS) and _REFUSAL.search(opening) is not None


def evaluate(env: Envelope, *, grounded_min: float) -> Evaluation:
    """The content verdicts on an envelope that has been through the post-process guard."""
    post = env.postprocess
    structured = post.structured_output_valid if post is not None else None
    answer = env.answer
    if answer is None:  # blocked, or invalid structured output: only the structured verdict applies
        return Evaluation(structured_valid=structured)
    passages = env.retrieval.passages if env.retrieval is not None else []
    share = grounded_share(answer, passages)
    return Evaluation(grounded_share=None if share is None else round(share, 4),
                      grounded=None if share is None else share >= grounded_min,
                      structured_valid=structured, refusal=is_refusal(answer))


def slo_met(response: Response) -> bool | None:
    """Answered (whatever the outcome) by the deadline; None for responses that do not carry their deadline."""
    if response.deadline_at_ns <= 0 or response.completed_at_ns <= 0:
        return None
    return response.status is not Status.DEADLINE_EXCEEDED and response.completed_at_ns <= response.deadline_at_ns
