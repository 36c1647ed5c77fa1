"""Cache stage: exact and semantic answer cache; a hit skips the model.

Lookup (``process``, between policy and model) for a whole batch: one Redis round trip for the exact keys (``MGET``)
and the semantic log records added since the mirror's cursors (an ``XRANGE`` page per tenant); for the misses, one
embedding call and one batched vector search per (tenant, scope); the candidates at
or above the threshold are read from the store in one ``MGET`` (the mirror holds no prompts) and, best first, go
through the near-miss guard on the entry's prompt and then, when the context has one, the pair verifier
(``workers.cache.verifier``, fit for the static embedder): the first that passes both is served. A refusal records
its reason (a guard reason or ``verifier``) and the similarity on the result.

* Exact key = sha256(tenant, model class, normalised prompt, retrieval context chunk ids, the rest of the
  conversation, generation params). Semantic scope = the same without the prompt: a semantic hit needs the same
  tenant, model class, context and params, and a similar prompt.
* Threshold: ``env.policy.semantic_threshold`` when the policy set one, else ``ctx.semantic_threshold``.
* Bypass: ``env.policy.cache_allowed`` False, or ``env.request.cache.read`` False. ``no_store`` only stops writes
  (the lookup itself stores nothing).
* A store error is a miss (outcome ``error``), a counter and a log line; the request goes on to the model.

Fill (``fill``, after the model answered; the post-process stage calls it) writes the entry with the model's cost,
so a later hit can report the money it saved.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import orjson

from schemas.envelope import CacheResult, Envelope, Status
from schemas.errors import BackendError
from workers.cache import metrics
from workers.cache.semantic_guard import near_miss
from workers.cache.store import CacheEntry, CacheStore, CacheWrite, MemoryCacheStore, SemanticMirror
from workers.cache.verifier import PairVerifier
from workers.context import StageContext
from workers.embedding import Embedder, HashingEmbedder, normalise_text

NAME = "cache"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheContext(StageContext):
    store: CacheStore = field(default_factory=MemoryCacheStore)
    embedder: Embedder = field(default_factory=HashingEmbedder)
    mirror: SemanticMirror = field(default_factory=lambda: SemanticMirror(256))
    semantic_threshold: float = 0.88
    default_ttl_s: int = 86_400
    max_ttl_s: int = 7 * 86_400
    candidates: int = 3  # how many above-threshold candidates the guard may look at per request
    verifier: PairVerifier | None = None  # second stage after the guard; None = the guard alone


def normalise_prompt(prompt: str) -> str:
    # Trailing spaces and ?!. go (the regex [\s?!.]+$ before: normalise_text leaves no whitespace but single spaces
    # between words, so rstrip takes the same run, without a regex tried at every position of the prompt).
    return normalise_text(prompt).rstrip(" ?!.")


def model_class(env: Envelope) -> str:
    tier = (env.policy.quality_tier if env.policy else None) or env.request.quality_tier or ""
    return f"{env.request.model or 'auto'}/{tier}"


def scope_of(env: Envelope) -> str:
    """Everything an answer depends on except the prompt: the semantic namespace within the tenant."""
    context_ids = sorted(p.doc_id for p in env.retrieval.passages) if env.retrieval else []
    turns = [[m.role, m.content] for m in env.retrieval.session_turns] if env.retrieval else []
    prompt = env.request.prompt
    others = [[m.role, m.content] for m in env.request.messages if not (m.role == "user" and m.content == prompt)]
    material = orjson.dumps([env.tenant, model_class(env), context_ids, turns, others,
                             env.request.params.model_dump(mode="json")], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(material).hexdigest()[:32]


def exact_key(env: Envelope) -> str:
    return cache_keys(env)[1]


def cache_keys(env: Envelope) -> tuple[str, str]:
    """``(scope_of(env), exact_key(env))``: the scope is part of the key, so both cost one scope.

    Memoised by value: the lookup computes them and post-process's fill computes them again over the same request
    (in one process for a co-located chain). The memo's key is every value the keys are made of (:func:`_key_inputs`),
    compared by value, never an object's identity, so a changed request finds its own keys."""
    inputs = _key_inputs(env)
    if inputs is not None and (known := _KEYS.get(inputs)) is not None:
        return known
    scope = scope_of(env)
    material = orjson.dumps([env.tenant, scope, normalise_prompt(env.request.prompt)])
    keys = scope, hashlib.sha256(material).hexdigest()
    if inputs is not None:
        if len(_KEYS) >= _KEYS_MAX:
            del _KEYS[next(iter(_KEYS))]  # oldest first out
        _KEYS[inputs] = keys
    return keys


# The lookup and the fill of one request are a batch apart at most (a chain works both in one cycle, batches <= 500):
# a few thousand entries of short texts. A request whose texts are long is not kept (the memo must stay small).
_KEYS_MAX = 2048
_KEYS_MAX_CHARS = 2000
_KEYS: dict[tuple[object, ...], tuple[str, str]] = {}


def _key_inputs(env: Envelope) -> tuple[object, ...] | None:
    """What :func:`scope_of` and the exact key read, as one hashable value; None (not memoised) when the texts are
    long or the generation params are not plain: a ``response_format`` (a dict), or a number of another type than
    its field's (``0 == 0.0`` and ``True == 1``: the memo need not know how each is written). The sign of the
    temperature is part of it (``-0.0 == 0.0``, but the scope writes ``-0.0``)."""
    request = env.request
    params = request.params
    temperature = params.temperature
    if params.response_format is not None or type(params.max_tokens) is not int or type(temperature) is not float:
        return None
    messages = tuple([(m.role, m.content) for m in request.messages])
    retrieval = env.retrieval
    turns = tuple([(m.role, m.content) for m in retrieval.session_turns]) if retrieval else None
    if sum([len(content) for _, content in messages]) + (sum([len(c) for _, c in turns]) if turns else 0) \
            > _KEYS_MAX_CHARS:
        return None
    return (env.tenant, model_class(env), params.max_tokens, temperature, math.copysign(1.0, temperature), messages,
            tuple([p.doc_id for p in retrieval.passages]) if retrieval else None, turns)


def _uses_tools(env: Envelope) -> bool:
    """The caller's own tools or tool turns (client-executed, workers/tools/modes.py): the answer may be a set of
    tool calls, or rest on results the key does not capture — live data, never served from or written to the cache."""
    return bool(env.request.tools) or any(m.role == "tool" or m.tool_calls for m in env.request.messages)


def _may_read(env: Envelope) -> bool:
    return (env.policy is None or env.policy.cache_allowed) and env.request.cache.read and not _uses_tools(env)


async def process(batch: list[Envelope], ctx: CacheContext) -> list[Envelope]:
    lookups: list[tuple[Envelope, str, str]] = []  # (request, exact key, scope)
    bypassed = 0
    try:
        for env in batch:
            if _may_read(env):
                scope, key = cache_keys(env)
                lookups.append((env, key, scope))
            else:
                env.cache = CacheResult(outcome="bypass")
                bypassed += 1
    finally:
        if bypassed:  # one count for the batch: the labelled child's lookup costs more than the add
            metrics.LOOKUPS.labels("bypass", "").inc(bypassed)
    if not lookups:
        return batch
    try:
        await _lookup(lookups, ctx)
    except BackendError as exc:
        metrics.ERRORS.labels("lookup").inc()
        log.warning("cache lookup failed for %d request(s), treating as misses: %s", len(lookups), exc)
        for env, key, _ in lookups:
            env.cache = CacheResult(outcome="error", key=key)
            metrics.LOOKUPS.labels("error", "").inc()
    return batch


async def _lookup(lookups: list[tuple[Envelope, str, str]], ctx: CacheContext) -> None:
    # The exact keys and the semantic log records added since the mirror's cursors, in one read: a miss needs both.
    cursors = {env.tenant: ctx.mirror.cursor(env.tenant) for env, _, _ in lookups}
    entries, pages = await ctx.store.get_and_read_logs([(env.tenant, key) for env, key, _ in lookups], cursors)
    more = {tenant for tenant, page in pages.items() if ctx.mirror.apply_page(tenant, page)}
    misses: list[tuple[Envelope, str, str]] = []
    for (env, key, scope), entry in zip(lookups, entries, strict=True):
        if entry is not None and not _own(entry, env):
            _serve(env, entry, key=key, kind="exact", similarity=1.0)
        else:
            env.cache = CacheResult(outcome="miss", key=key)
            misses.append((env, key, scope))
    if not misses:
        return
    vectors = await ctx.embedder.embed([env.request.prompt for env, _, _ in misses])
    now_ms = ctx.clock.now_ns() // 1_000_000
    wanted: list[tuple[int, str, float]] = []  # (position in misses, entry key, similarity), best first per miss
    by_tenant: dict[str, list[int]] = {}
    for position, (env, _, _) in enumerate(misses):
        by_tenant.setdefault(env.tenant, []).append(position)
    for tenant, positions in by_tenant.items():
        if tenant in more:  # a full page: the rest of a long log (a new process catching up)
            await ctx.mirror.refresh(ctx.store, tenant)
        candidates = ctx.mirror.search(
            tenant, [misses[p][2] for p in positions], vectors[positions], k=ctx.candidates,
            threshold=min(_threshold(misses[p][0], ctx) for p in positions), now_ms=now_ms)
        for position, found in zip(positions, candidates, strict=True):
            threshold = _threshold(misses[position][0], ctx)
            wanted.extend((position, c.key, c.similarity) for c in found if c.similarity >= threshold)
    if not wanted:
        return
    # One read for every candidate: the guard needs a candidate's prompt, and the mirror keeps only vectors and
    # keys (prompts of 100k entries would cost a worker tens of MB). Candidates are few: <= ctx.candidates a miss.
    entries = await ctx.store.get([(misses[p][0].tenant, key) for p, key, _ in wanted])
    for (position, _, similarity), entry in zip(wanted, entries, strict=True):
        env, key, _ = misses[position]
        assert env.cache is not None
        if entry is None or env.cache.outcome == "hit" or _own(entry, env):  # expired since, served, or its own
            continue
        cosines = None if ctx.verifier is None else ctx.verifier.word_cosines  # synonyms for the content rule
        reason = near_miss(env.request.prompt, entry.prompt, cosines)
        score = None
        if reason is None and ctx.verifier is not None:
            score = ctx.verifier.score(env.request.prompt, entry.prompt, similarity)
            reason = None if score >= ctx.verifier.threshold else "verifier"
        if reason is None:
            _serve(env, entry, key=key, kind="semantic", similarity=similarity, verifier_score=score)
        elif not env.cache.rejected_near_miss:
            env.cache.rejected_near_miss = True
            env.cache.similarity = round(similarity, 4)
            env.cache.refused_reason = reason
            env.cache.verifier_score = None if score is None else round(score, 4)
            metrics.NEAR_MISSES.labels(reason).inc()
    missed = sum(1 for env, _, _ in misses if env.cache is not None and env.cache.outcome == "miss")
    if missed:
        metrics.LOOKUPS.labels("miss", "").inc(missed)


def _own(entry: CacheEntry, env: Envelope) -> bool:
    """The entry holds this very request's answer: the request is being redelivered, and goes to the model again
    (the ledger and the audit count it once) so that its second response is the same as its first."""
    return bool(entry.request_id) and entry.request_id == env.request_id


def _threshold(env: Envelope, ctx: CacheContext) -> float:
    if env.policy is not None and env.policy.semantic_threshold is not None:
        return env.policy.semantic_threshold
    return ctx.semantic_threshold


def _serve(env: Envelope, entry: CacheEntry, *, key: str, kind: Literal["exact", "semantic"],
           similarity: float, verifier_score: float | None = None) -> None:
    rejected = env.cache.rejected_near_miss if env.cache else False
    refused = env.cache.refused_reason if env.cache else None
    env.answer = entry.answer
    env.cache = CacheResult(outcome="hit", kind=kind, similarity=round(similarity, 4),
                            saved_micros=entry.cost_micros, key=key, rejected_near_miss=rejected,
                            refused_reason=refused,
                            verifier_score=None if verifier_score is None else round(verifier_score, 4))
    env.route = [stage for stage in env.route if stage != "model"]
    metrics.LOOKUPS.labels("hit", kind).inc()
    metrics.SAVED_MICROS.inc(entry.cost_micros)


def _may_write(env: Envelope) -> bool:
    control = env.request.cache
    if not control.write or control.no_store:
        return False
    if env.policy is not None and not env.policy.cache_allowed:
        return False
    if env.cache is not None and env.cache.outcome == "hit":
        return False
    if (env.tools is not None and env.tools.calls) or _uses_tools(env):
        return False  # an answer from tool results is live data (and a cached "refund issued" would skip the refund)
    if env.outcome is not None and env.outcome.status is not Status.OK:
        return False
    return env.answer is not None and env.model is not None


async def fill(batch: list[Envelope], ctx: CacheContext) -> None:
    """Store the answers the model just gave (see the module docstring); never raises on a store error."""
    writable = [env for env in batch if _may_write(env)]
    if not writable:
        return
    now_ms = ctx.clock.now_ns() // 1_000_000
    ttls = [min(env.request.cache.ttl_s or ctx.default_ttl_s, ctx.max_ttl_s) for env in writable]
    try:
        vectors = await ctx.embedder.embed([env.request.prompt for env in writable])
        writes = []
        for env, vector, ttl in zip(writable, vectors, ttls, strict=True):
            assert env.model is not None and env.answer is not None
            entry = CacheEntry(answer=env.answer, cost_micros=env.model.cost_micros, model=env.model.model,
                               prompt=env.request.prompt, created_at_ms=now_ms, expires_at_ms=now_ms + ttl * 1000,
                               request_id=env.request_id)
            scope, key = cache_keys(env)
            writes.append(CacheWrite(tenant=env.tenant, key=key, scope=scope, entry=entry, vector=vector))
        await ctx.store.put(writes, ttl_s=ttls)
        metrics.FILLS.inc(len(writes))
    except BackendError as exc:
        metrics.ERRORS.labels("fill").inc()
        log.warning("cache fill failed for %d answer(s): %s", len(writable), exc)
