"""Cache stage on the in-memory store: exact and semantic hits, tenant isolation, near misses, controls, failures."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import orjson
import pytest

from schemas.envelope import (
    CacheControl,
    Envelope,
    GenerationParams,
    Message,
    ModelResult,
    Passage,
    PolicyDecision,
    RetrievalResult,
)
from workers.cache import stage as cache
from workers.cache.stage import CacheContext, exact_key
from workers.cache.store import CacheEntry, MemoryCacheStore, SemanticMirror
from workers.context import FakeClock

MakeEnv = Callable[..., Envelope]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> MemoryCacheStore:
    return MemoryCacheStore(now_ms=lambda: clock.at_ns // 1_000_000)


def _ctx(store: MemoryCacheStore, clock: FakeClock) -> CacheContext:
    """A fresh context = a fresh process: its own semantic mirror over the shared store."""
    return CacheContext(stage="cache", clock=clock, store=store, mirror=SemanticMirror(256))


@pytest.fixture
def ctx(store: MemoryCacheStore, clock: FakeClock) -> CacheContext:
    return _ctx(store, clock)


def _at_cache(env: Envelope) -> Envelope:
    env.route = ["model", "postprocess", "audit"]  # what the runner leaves after popping "cache"
    return env


async def _answer_and_fill(env: Envelope, ctx: CacheContext, answer: str = "42", cost: int = 1234) -> None:
    env.answer = answer
    env.model = ModelResult(model="m-large", cost_micros=cost)
    await cache.fill([env], ctx)


async def test_miss_then_fill_then_exact_hit_skips_the_model(make_envelope: MakeEnv, ctx: CacheContext) -> None:
    first = _at_cache(make_envelope("What is the refund window?"))
    (first,) = await cache.process([first], ctx)
    assert first.cache is not None and first.cache.outcome == "miss" and "model" in first.route
    await _answer_and_fill(first, ctx, "30 days", cost=1500)

    again = _at_cache(make_envelope("what is the refund window"))
    (again,) = await cache.process([again], ctx)
    assert again.cache is not None
    assert (again.cache.outcome, again.cache.kind, again.cache.similarity) == ("hit", "exact", 1.0)
    assert again.cache.saved_micros == 1500 and again.answer == "30 days"
    assert again.route == ["postprocess", "audit"]


async def test_two_tenants_never_share_an_entry(make_envelope: MakeEnv, ctx: CacheContext) -> None:
    acme = _at_cache(make_envelope("What is our discount code?", tenant="acme"))
    await cache.process([acme], ctx)
    await _answer_and_fill(acme, ctx, "ACME-SECRET")

    same = make_envelope("What is our discount code?", tenant="globex")
    paraphrase = make_envelope("Please tell me our discount code", tenant="globex")
    assert exact_key(same) != exact_key(acme)
    out = await cache.process([_at_cache(same), _at_cache(paraphrase)], ctx)
    assert all(e.cache is not None and e.cache.outcome == "miss" and e.answer is None for e in out)
    # and acme itself still hits, exactly and semantically
    out = await cache.process([_at_cache(make_envelope("What is our discount code?", tenant="acme")),
                               _at_cache(make_envelope("Please tell me our discount code", tenant="acme"))], ctx)
    assert [e.cache.kind for e in out if e.cache] == ["exact", "semantic"]
    assert all(e.answer == "ACME-SECRET" for e in out)


async def test_semantic_hit_written_by_another_process(make_envelope: MakeEnv, store: MemoryCacheStore,
                                                       clock: FakeClock) -> None:
    writer, reader = _ctx(store, clock), _ctx(store, clock)
    env = _at_cache(make_envelope("How do I rotate my API key?"))
    await cache.process([env], writer)
    await _answer_and_fill(env, writer, "Dashboard → Keys → Rotate", cost=900)

    (hit,) = await cache.process([_at_cache(make_envelope("How can I rotate my API key"))], reader)
    assert hit.cache is not None and hit.cache.outcome == "hit" and hit.cache.kind == "semantic"
    assert hit.cache.similarity is not None and 0.88 <= hit.cache.similarity < 1.0
    assert hit.cache.saved_micros == 900 and "model" not in hit.route


async def test_opposite_question_is_a_recorded_near_miss(make_envelope: MakeEnv, ctx: CacheContext) -> None:
    env = _at_cache(make_envelope("Is ibuprofen safe with alcohol?"))
    await cache.process([env], ctx)
    await _answer_and_fill(env, ctx, "No, avoid combining them.")

    # A lenient policy threshold puts the opposite question above it: the guard alone must refuse it.
    lenient = PolicyDecision(semantic_threshold=0.6)
    flipped = _at_cache(make_envelope("Is ibuprofen not safe with alcohol?"))
    flipped.policy = lenient
    (flipped,) = await cache.process([flipped], ctx)
    assert flipped.cache is not None and flipped.cache.outcome == "miss"
    assert flipped.cache.rejected_near_miss and flipped.answer is None and "model" in flipped.route
    number = _at_cache(make_envelope("Is 2 ibuprofen safe with alcohol?"))
    number.policy = lenient
    (number,) = await cache.process([number], ctx)
    assert number.cache is not None and number.cache.outcome == "miss" and number.cache.rejected_near_miss


async def test_policy_threshold_wins_over_the_default(make_envelope: MakeEnv, ctx: CacheContext) -> None:
    env = _at_cache(make_envelope("How do I rotate my API key?"))
    await cache.process([env], ctx)
    await _answer_and_fill(env, ctx)
    strict = _at_cache(make_envelope("How can I rotate my API key"))
    strict.policy = PolicyDecision(semantic_threshold=0.9999)
    (strict,) = await cache.process([strict], ctx)
    assert strict.cache is not None and strict.cache.outcome == "miss"


@pytest.mark.parametrize("control", ["policy_forbids", "read_false"])
async def test_bypass(make_envelope: MakeEnv, ctx: CacheContext, control: str) -> None:
    env = _at_cache(make_envelope("What is the refund window?"))
    await cache.process([env], ctx)
    await _answer_and_fill(env, ctx)
    again = _at_cache(make_envelope("What is the refund window?"))
    if control == "policy_forbids":
        again.policy = PolicyDecision(cache_allowed=False)
    else:
        again.request.cache = CacheControl(read=False)
    (again,) = await cache.process([again], ctx)
    assert again.cache is not None and again.cache.outcome == "bypass" and again.answer is None


@pytest.mark.parametrize("control", [CacheControl(no_store=True), CacheControl(write=False)])
async def test_no_fill_when_told_not_to_store(make_envelope: MakeEnv, ctx: CacheContext, store: MemoryCacheStore,
                                              control: CacheControl) -> None:
    env = _at_cache(make_envelope("What is the refund window?", cache=control))
    await cache.process([env], ctx)
    await _answer_and_fill(env, ctx)
    assert store.entries == {}
    forbidden = _at_cache(make_envelope("What is the refund window?"))
    forbidden.policy = PolicyDecision(cache_allowed=False)
    await _answer_and_fill(forbidden, ctx)
    assert store.entries == {}


async def test_ttl_expires_entries(make_envelope: MakeEnv, ctx: CacheContext, clock: FakeClock) -> None:
    env = _at_cache(make_envelope("What is the refund window?", cache=CacheControl(ttl_s=60)))
    await cache.process([env], ctx)
    await _answer_and_fill(env, ctx)
    clock.advance_ms(61_000)
    out = await cache.process([_at_cache(make_envelope("What is the refund window?")),
                               _at_cache(make_envelope("Please, what is the refund window?"))], ctx)
    assert [e.cache.outcome for e in out if e.cache] == ["miss", "miss"]


async def test_different_context_or_params_miss(make_envelope: MakeEnv, ctx: CacheContext) -> None:
    env = _at_cache(make_envelope("Summarise the policy"))
    env.retrieval = RetrievalResult(passages=[Passage(doc_id="refund.md#0", score=0.8, text="...")])
    await cache.process([env], ctx)
    await _answer_and_fill(env, ctx)
    other_doc = _at_cache(make_envelope("Summarise the policy"))
    other_doc.retrieval = RetrievalResult(passages=[Passage(doc_id="keys.md#0", score=0.8, text="...")])
    hotter = _at_cache(make_envelope("Summarise the policy", params=GenerationParams(temperature=1.0)))
    hotter.retrieval = env.retrieval
    out = await cache.process([other_doc, hotter], ctx)
    assert [e.cache.outcome for e in out if e.cache] == ["miss", "miss"]


async def test_store_down_is_a_miss_and_the_request_goes_on(make_envelope: MakeEnv, ctx: CacheContext,
                                                            store: MemoryCacheStore) -> None:
    store.fail = True
    (env,) = await cache.process([_at_cache(make_envelope("anything"))], ctx)
    assert env.cache is not None and env.cache.outcome == "error" and "model" in env.route
    await _answer_and_fill(env, ctx)  # a failing fill is logged, never raised


async def test_failed_or_cached_answers_are_not_filled(make_envelope: MakeEnv, ctx: CacheContext,
                                                       store: MemoryCacheStore) -> None:
    from schemas.envelope import Status

    failed = _at_cache(make_envelope("q1"))
    failed.finish(Status.FAILED, code="model_error", stage="model")
    await _answer_and_fill(failed, ctx)
    assert store.entries == {}


async def test_a_candidate_gone_from_the_store_falls_through_to_the_next(make_envelope: MakeEnv, ctx: CacheContext,
                                                                         store: MemoryCacheStore) -> None:
    first = _at_cache(make_envelope("How do I rotate my API key?"))
    second = _at_cache(make_envelope("How do I rotate the API key?"))
    await _answer_and_fill(first, ctx, "first")
    await _answer_and_fill(second, ctx, "second")
    del store.entries[(first.tenant, exact_key(first))]  # evicted by Redis; this process's mirror still has it

    (hit,) = await cache.process([_at_cache(make_envelope("How can I rotate my API key"))], ctx)
    assert hit.cache is not None and hit.cache.outcome == "hit" and hit.cache.kind == "semantic"
    assert hit.answer == "second"


async def test_a_redelivered_request_is_not_served_its_own_answer(make_envelope: MakeEnv, ctx: CacheContext) -> None:
    # A crash between produce and commit redelivers a batch whose requests already went on and filled the cache:
    # serving them their own answer as a hit would make their second response differ from the first.
    first = _at_cache(make_envelope("What is the refund window?"))
    await cache.process([first], ctx)
    await _answer_and_fill(first, ctx, "30 days", cost=1500)

    redelivered = _at_cache(make_envelope("What is the refund window?", request_id=first.request_id))
    reworded = _at_cache(make_envelope("Tell me the refund window", request_id=first.request_id))
    for env in await cache.process([redelivered, reworded], ctx):
        assert env.cache is not None and env.cache.outcome == "miss" and "model" in env.route

    other = _at_cache(make_envelope("What is the refund window?"))
    (other,) = await cache.process([other], ctx)
    assert other.cache is not None and other.cache.outcome == "hit" and other.answer == "30 days"


def test_entries_written_by_a_newer_version_still_read() -> None:
    raw = b'{"answer":"a","cost_micros":1,"model":"m","prompt":"p","created_at_ms":1,"expires_at_ms":2,"new":true}'
    assert CacheEntry.from_json(raw).answer == "a"


async def test_a_new_process_reads_a_log_longer_than_one_page(make_envelope: MakeEnv, store: MemoryCacheStore,
                                                              clock: FakeClock,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # The lookup reads one page of the log with the exact keys; a full page means more is waiting, read before the
    # search (a process catching up on a long log).
    monkeypatch.setattr("workers.cache.store._READ_COUNT", 2)
    writer, reader = _ctx(store, clock), _ctx(store, clock)
    questions = ["How do I rotate my API key?", "What is the refund window?", "Where do I download invoices?",
                 "How do I add a teammate?", "Which regions host my data?"]
    for i, question in enumerate(questions):
        env = _at_cache(make_envelope(question))
        await cache.process([env], writer)
        await _answer_and_fill(env, writer, f"answer {i}")
    (hit,) = await cache.process([_at_cache(make_envelope("Please, which regions host my data?"))], reader)
    assert hit.cache is not None and (hit.cache.outcome, hit.cache.kind) == ("hit", "semantic")
    assert hit.answer == "answer 4" and reader.mirror.size("acme") == 5
    # an all-exact batch still moves the mirror on (its page is applied), without reading further
    await _answer_and_fill(_at_cache(make_envelope("How do I reset MFA?")), writer, "answer 5")
    (exact,) = await cache.process([_at_cache(make_envelope("What is the refund window?"))], reader)
    assert exact.cache is not None and exact.cache.kind == "exact" and reader.mirror.size("acme") == 6


def test_memoised_keys_follow_every_change_to_the_request(make_envelope: MakeEnv) -> None:
    env = make_envelope(prompt="How do I rotate the key?")

    def unmemoised() -> tuple[str, str]:
        scope = cache.scope_of(env)
        material = orjson.dumps([env.tenant, scope, cache.normalise_prompt(env.request.prompt)])
        return scope, hashlib.sha256(material).hexdigest()

    changes: list[Callable[[], object]] = [
        lambda: setattr(env.request.params, "temperature", -0.0),
        lambda: setattr(env.request.params, "temperature", 0),  # an int: its own memo entry, the same keys
        lambda: setattr(env.request.params, "temperature", 0.0),
        lambda: setattr(env.request.params, "max_tokens", True),
        lambda: setattr(env.request.params, "max_tokens", 1),
        lambda: setattr(env.request.params, "response_format", {"type": "json_object"}),
        lambda: setattr(env.request.params, "response_format", None),
        lambda: setattr(env.request, "model", "m-large"),
        lambda: setattr(env, "tenant", "globex"),
        lambda: env.request.messages.insert(0, Message(role="system", content="be brief")),
        lambda: setattr(env.request.messages[0], "content", "be thorough"),
        lambda: setattr(env.request.messages[-1], "content", "How do I rotate the key??"),
        lambda: setattr(env, "retrieval", RetrievalResult(passages=[Passage(doc_id="d1", score=1.0, text="x")])),
        lambda: env.retrieval.session_turns.append(Message(role="user", content="earlier")),  # type: ignore[union-attr]
        lambda: setattr(env.request.messages[-1], "content", "long " * 500),  # too long to keep: computed each time
    ]
    seen = {cache.cache_keys(env)}
    assert cache.cache_keys(env) == unmemoised()
    for change in changes:
        change()
        assert cache.cache_keys(env) == unmemoised()
        assert cache.cache_keys(env) == unmemoised()  # asked again: the memo's answer
        seen.add(cache.cache_keys(env))
    # Not new: temperature 0 and 0.0 (both written 0.0), max_tokens True then 1 (both 1), response_format None again,
    # "??" (stripped like "?").
    assert len(seen) == 11


def test_the_keys_memo_reads_every_generation_param() -> None:
    # cache_keys' memo (_key_inputs) names max_tokens, temperature and response_format; a new field of
    # GenerationParams must be added there too, or two requests differing only in it would share their keys.
    assert set(GenerationParams.model_fields) == {"max_tokens", "temperature", "response_format"}
