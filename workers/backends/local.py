"""The embedded ``local`` backend: a deterministic extractive answerer, no network and no weights.

It answers the way a retrieval-grounded model should: it splits the retrieved passages (and any material pasted
into the prompt after a colon) into sentences, scores each sentence by the idf-weighted overlap of its terms with
the question plus the passage's retrieval score, and composes the best few, in order, with their [doc id]
citations. Greetings, thanks and ticket classification get direct answers; a question no source covers gets an
honest generic reply instead of an invention. Usage is counted with :mod:`workers.routing.tokens`; a context prefix seen
before counts as cached input (as a server's prefix cache would).

Latency emulation: each model is one engine that runs one call at a time, and a call takes the catalog profile's
``batch_ms`` (overhead + prefill of every prompt + decode steps shared across the batch) × ``latency_scale``.
That is what makes micro-batching pay, as it does on a real GPU server; ``latency_scale=0`` disables the sleep.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import re
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import orjson

from schemas.envelope import Message, Passage, Usage
from workers.backends import local_tools
from workers.backends.base import ModelCall, ModelReply, context_prompt
from workers.prefilter import prefiltered
from workers.routing.tokens import count_message_tokens, count_tokens, truncate_to_tokens

_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])|\n+")
_STOP_WORDS = (
    "a an the and or but if of to in on at by for with from as is are was were be been being do does did done have "
    "has had i me my we our us you your it its this that these those what which who whom when where why how can "
    "could should would will shall may might must not no yes so than then there their they them he she his her "
    "about into over under again any all each few more most other some such only own same too very just also please "
    "tell give show explain describe summarise summarize question answer")
_STOP = frozenset(_STOP_WORDS.split(" "))
_GREETING = re.compile(r"^\s*(hi|hello|hey|good (morning|afternoon|evening))\b[\s!.,]*\w{0,12}[\s!.]*$", re.I)
_THANKS = re.compile(r"^\s*(thanks|thank you|cheers)\b", re.I)
# Searched in every prompt and rarely found: prefiltered (:mod:`workers.prefilter`), a prompt that contains none of
# a pattern's literals is not searched (a ``\b``-first pattern is tried at every position) — the same matches.
_CLASSIFY = prefiltered(r"\b(classify|categori[sz]e|triage|tag the|route this)\b", re.I)
_SUMMARY = prefiltered(r"\b(summari[sz]e|summary|tl;?dr|overview|bullet)", re.I)
_COUNT = re.compile(r"\b(\d|one|two|three|four|five|six)\s+(bullet|point|sentence|item)", re.I)
_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
_CATEGORIES: dict[str, tuple[str, ...]] = {
    "billing": ("invoice", "bill", "charge", "refund", "payment", "price", "total", "subscription", "plan", "vat"),
    "technical": ("error", "bug", "crash", "timeout", "api", "fail", "broken", "slow", "latency", "outage"),
    "account": ("login", "password", "sso", "key", "access", "permission", "account", "2fa", "locked"),
    "shipping": ("order", "delivery", "deliver", "ship", "shipped", "late", "damaged", "tracking", "parcel"),
    "feedback": ("great", "love", "terrible", "awful", "happy", "unhappy", "review", "recommend"),
}


@functools.lru_cache(maxsize=65_536)  # a handful of suffix checks per word of every prompt and passage, every request
def _stem(word: str) -> str:
    for suffix in ("ing", "ies", "es", "ed", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


def terms(text: str) -> list[str]:
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOP]


@dataclass(frozen=True)
class _Sentence:
    text: str
    doc_id: str | None
    passage_rank: int
    position: int
    passage_score: float
    terms: list[str] = field(compare=False)  # ``terms(text)`` once: the filter, frequencies and overlaps read it


def _sentences(passages: list[Passage], prompt: str) -> list[_Sentence]:
    out: list[_Sentence] = []
    for rank, passage in enumerate(passages):
        for pos, text in enumerate(s.strip() for s in _SENTENCE.split(passage.text)):
            if len(found := terms(text)) >= 2:
                out.append(_Sentence(text, passage.doc_id, rank, pos, passage.score, found))
    # Material pasted into the prompt ("Summarise the following: …") is a source too.
    _, colon, material = prompt.partition(":")
    if colon and len(material.split()) >= 12:
        for pos, text in enumerate(s.strip() for s in _SENTENCE.split(material)):
            if len(found := terms(text)) >= 2:
                out.append(_Sentence(text, None, len(passages), pos, 0.0, found))
    return out


def _classify(prompt: str) -> str:
    words = Counter(terms(prompt.partition(":")[2] or prompt))
    scores = {cat: sum(words[_stem(k)] for k in keys) for cat, keys in _CATEGORIES.items()}
    best = max(scores, key=lambda c: (scores[c], -list(_CATEGORIES).index(c)))
    if scores[best] == 0:
        return "Category: general. Nothing in the text points to billing, technical, account, shipping or feedback."
    hits = [k for k in _CATEGORIES[best] if words[_stem(k)]]
    return f"Category: {best}. The text mentions {', '.join(hits)}."


def _topic(prompt: str) -> str:
    words = [w for w in _WORD.findall(prompt.lower()) if w not in _STOP][:6]
    return " ".join(words) or "that"


# The reply to a question no source covers: ``_NO_SOURCE_HEAD + question + _NO_SOURCE_TAIL``. The head ends and the
# tail starts with a quote, a token of its own that no token of the question runs into, so the reply's token count
# is the sum of the three parts' counts (the head's and the tail's counted once, here).
_NO_SOURCE_HEAD: Final = "I couldn't find a document that answers \""
_NO_SOURCE_TAIL: Final = ("\", so I can't give a grounded answer. If it is documented, add the document to the index "
                          "and ask again; otherwise a specialist should take it.")
_NO_SOURCE_TOKENS: Final = count_tokens(_NO_SOURCE_HEAD) + count_tokens(_NO_SOURCE_TAIL)


def answer(prompt: str, passages: list[Passage]) -> str:
    """The local model's reply to ``prompt`` given the retrieved ``passages`` (pure and deterministic)."""
    return _answer(prompt, passages)[0]


def _answer(prompt: str, passages: list[Passage]) -> tuple[str, int | None]:
    """:func:`answer`, and the reply's token count when it was known without counting the reply (else None)."""
    if _GREETING.match(prompt):
        return "Hello! Ask me a question and I'll answer from your organisation's documents.", None
    if _THANKS.match(prompt):
        return "You're welcome. Anything else I can help with?", None
    if _CLASSIFY.search(prompt):
        return _classify(prompt), None
    sentences = _sentences(passages, prompt)
    if not sentences:
        if _SUMMARY.search(prompt):
            return (f"I couldn't find the material to summarise ({_topic(prompt)}) among this tenant's indexed "
                    "documents. Paste the text after a colon, or index the document and ask again."), None
        question = prompt.strip() if len(prompt) <= 90 else prompt.strip()[:87].rstrip() + "…"
        return _NO_SOURCE_HEAD + question + _NO_SOURCE_TAIL, _NO_SOURCE_TOKENS + count_tokens(question)
    query = set(terms(prompt))  # only a reply composed from sentences reads it
    term_sets = [set(s.terms) for s in sentences]
    document_frequency = Counter(t for found in term_sets for t in found)
    n = len(sentences)
    # Each sentence's overlap once (the same sets summed in the same order: the same floats as recomputing it).
    overlaps = {id(s): sum(math.log(1 + n / document_frequency[t]) for t in query & found)
                for s, found in zip(sentences, term_sets, strict=True)}

    def overlap(sentence: _Sentence) -> float:
        return overlaps[id(sentence)]

    summary = bool(_SUMMARY.search(prompt))
    ranked = sorted(sentences, key=lambda s: (-(overlap(s) + 0.5 * s.passage_score), s.passage_rank, s.position))
    best = overlap(ranked[0])
    if best == 0 and not summary:
        closest = ranked[0].doc_id or "your text"
        return f"The documents I found don't answer that directly. The closest is [{closest}]: {ranked[0].text}", None
    count_match = _COUNT.search(prompt)
    wanted = (_NUMBERS.get(count_match.group(1).lower()) or int(count_match.group(1))) if count_match else \
        (3 if summary else 2)
    # Keep only sentences nearly as relevant as the best one: a second sentence must earn its place.
    chosen = ranked[:wanted] if summary else [s for s in ranked if overlap(s) >= 0.5 * best][:wanted]
    chosen.sort(key=lambda s: (s.passage_rank, s.position))
    if summary:
        return "\n".join(f"- {_cited(s.text, s.doc_id)}" for s in chosen), None
    parts = []
    for i, s in enumerate(chosen):
        last_of_doc = i + 1 == len(chosen) or chosen[i + 1].doc_id != s.doc_id
        parts.append(_cited(s.text, s.doc_id) if last_of_doc else s.text)
    return " ".join(parts), None


_OPENERS: Final = ("", "In short: ", "To answer that: ", "Briefly: ", "Here is what I found: ")


def sample(text: str, seed: int, temperature: float = 0.0) -> str:
    """Another sample of the local model's answer ``text``: the same content, its sentences (or bullets) in a
    seed-dependent order under a seed-dependent opener; above temperature 0.5 a long answer also loses its last
    sentence. Seed 0 at temperature 0 is ``text`` itself, so a different seed gives a different sample."""
    if seed == 0 and temperature <= 0:
        return text
    bullets = "\n" in text
    parts = [p for p in (text.split("\n") if bullets else re.split(r"(?<=[.!?])\s+", text)) if p]
    if len(parts) > 1:
        shift = seed % len(parts)
        parts = parts[shift:] + parts[:shift]
        if temperature > 0.5 and len(parts) > 2:
            parts = parts[:-1]
    opener = _OPENERS[seed % len(_OPENERS)] or _OPENERS[1]
    return opener + ("\n" if bullets else " ").join(parts)


def _cited(sentence: str, doc_id: str | None) -> str:
    if not doc_id:
        return sentence
    body = sentence.rstrip()
    end = body[-1] if body and body[-1] in ".!?" else "."
    return f"{body.rstrip('.!?')} [{doc_id}]{end}"


class LocalBackend:
    name = "local"

    def __init__(self, *, latency_scale: float = 1.0, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 prefix_cache_entries: int = 4096) -> None:
        self.latency_scale = latency_scale
        self._sleep = sleep
        self._engines: dict[str, asyncio.Lock] = {}
        self._prefixes: OrderedDict[bytes, None] = OrderedDict()
        self._prefix_cache_entries = prefix_cache_entries
        self.calls = 0  # batched calls served (benchmarks and tests read it)

    async def complete(self, requests: list[ModelCall]) -> list[ModelReply]:
        replies = [self._reply(call) for call in requests]
        self.calls += 1
        if self.latency_scale > 0 and requests and requests[0].latency is not None:
            profile = requests[0].latency
            delay_ms = profile.batch_ms([r.usage.input_tokens for r in replies],
                                        [r.usage.output_tokens for r in replies]) * self.latency_scale
            async with self._engines.setdefault(requests[0].model, asyncio.Lock()):
                await self._sleep(delay_ms / 1000)
        return replies

    async def aclose(self) -> None:
        return None

    def _reply(self, call: ModelCall) -> ModelReply:
        prompt = next((m.content for m in reversed(call.messages) if m.role == "user"), call.messages[-1].content)
        if call.tool_results or call.tools:
            tool_reply = self._tool_turn(call, prompt)
            if tool_reply is not None:
                return tool_reply
        if call.history and (recalled := local_tools.recall(prompt, call.history)) is not None:
            text = truncate_to_tokens(recalled, call.max_tokens)
            usage = Usage(input_tokens=count_message_tokens([*call.history, *call.messages]),
                          output_tokens=count_tokens(text))
            return ModelReply(request_id=call.request_id, text=text, usage=usage)
        text, text_tokens = _answer(prompt, call.passages)
        if text_tokens is not None and text_tokens <= call.max_tokens:
            truncated, output_tokens = text, text_tokens  # what truncating and counting would find
        else:
            truncated = truncate_to_tokens(text, call.max_tokens)
            output_tokens = count_tokens(truncated)
        chat: list[Message] = list(call.messages)
        cached = 0
        if call.passages:
            context = context_prompt(call.passages)
            chat.insert(0, Message(role="system", content=context))
            if self._seen_prefix(context):
                cached = count_tokens(context)
        usage = Usage(input_tokens=count_message_tokens(chat), cached_input_tokens=cached,
                      output_tokens=output_tokens)
        alternatives = [truncate_to_tokens(sample(text, call.seed + k, call.temperature), call.max_tokens)
                        for k in range(1, call.samples)]
        if alternatives:
            usage = usage + Usage(output_tokens=sum(count_tokens(a) for a in alternatives))
        return ModelReply(request_id=call.request_id, text=truncated, usage=usage,
                          finish_reason="length" if truncated != text else "stop", alternatives=alternatives)

    def _tool_turn(self, call: ModelCall, prompt: str) -> ModelReply | None:
        """Agent loops (:mod:`workers.backends.local_tools`): answer from tool results, or ask for tools."""
        results_tokens = sum(count_tokens(r.content) for r in call.tool_results)
        input_tokens = count_message_tokens(list(call.messages)) + results_tokens
        if call.tool_results:
            text = truncate_to_tokens(local_tools.answer_from_results(call.tool_results), call.max_tokens)
            return ModelReply(request_id=call.request_id, text=text, finish_reason="stop",
                              usage=Usage(input_tokens=input_tokens, output_tokens=count_tokens(text)))
        calls = local_tools.plan(prompt, call.tools, step=len({r.step for r in call.tool_results}))
        if not calls:
            return None
        asked = orjson.dumps([c.model_dump() for c in calls]).decode()
        return ModelReply(request_id=call.request_id, text="", finish_reason="tool_calls", tool_calls=calls,
                          usage=Usage(input_tokens=input_tokens, output_tokens=count_tokens(asked)))

    def _seen_prefix(self, context: str) -> bool:
        digest = hashlib.blake2b(context.encode(), digest_size=16).digest()
        seen = digest in self._prefixes
        self._prefixes[digest] = None
        self._prefixes.move_to_end(digest)
        while len(self._prefixes) > self._prefix_cache_entries:
            self._prefixes.popitem(last=False)
        return seen
