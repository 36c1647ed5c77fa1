"""The model stage: micro-batching, capacity, accounting, failures; fallbacks and the breaker on the fake server."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client import REGISTRY

from schemas.envelope import CacheResult, Envelope, Passage, PolicyDecision, RetrievalResult, Status, Usage
from schemas.errors import BackendError
from tests.fakes.openai_server import FakeOpenAI, openai_server
from workers.backends.base import ModelCall, ModelReply
from workers.backends.local import LocalBackend
from workers.backends.openai_compat import OpenAICompatBackend
from workers.context import FakeClock
from workers.model import ModelContext, _Pending, attempt_timeout_ms, process
from workers.routing.catalog import ModelCatalog, load_catalog, parse_catalog, price_of
from workers.routing.router import BreakerBoard, prompt_tokens

__all__ = ["openai_server"]
MakeEnvelope = Callable[..., Envelope]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def context(catalog: ModelCatalog | None = None, **fields: object) -> ModelContext:
    fields.setdefault("backends", {"local": LocalBackend(latency_scale=0)})
    return ModelContext(stage="model", catalog=catalog or load_catalog(), **fields)  # type: ignore[arg-type]


async def test_answers_with_accounting_and_reasons(make_envelope: MakeEnvelope) -> None:
    env = make_envelope("What is the refund policy for annual plans?")
    env.retrieval = RetrievalResult(confidence=0.9, passages=[
        Passage(doc_id="refunds.md", score=0.9, text="Annual plans are refunded in full within 30 days.")])
    (out,) = await process([env], context())
    assert out.outcome is None and out.answer == "Annual plans are refunded in full within 30 days [refunds.md]."
    result = out.model
    assert result is not None and result.model == "nano-us" and result.backend == "local" and result.attempts == 1
    assert result.usage.input_tokens > 0 and result.usage.output_tokens > 0
    assert result.cost_micros == price_of("nano-us", result.usage)
    assert result.routing[0].startswith("tier auto small") and result.routing[-1].startswith("chose nano-us")


async def test_a_default_model_context_uses_the_default_catalog(make_envelope: MakeEnvelope) -> None:
    (out,) = await process([make_envelope("hello")], ModelContext(stage="model"))
    assert out.answer and out.model and out.model.model == "nano-us"


async def test_micro_batching_serves_a_group_in_one_call(make_envelope: MakeEnvelope) -> None:
    envs = [make_envelope(f"question {i}?") for i in range(20)]
    batched, single = LocalBackend(latency_scale=0), LocalBackend(latency_scale=0)
    await process(envs, context(backends={"local": batched}))
    assert batched.calls == 1
    await process([make_envelope(f"question {i}?") for i in range(20)],
                  context(backends={"local": single}, micro_batching=False))
    assert single.calls == 20


async def test_capacity_spills_to_the_next_model(make_envelope: MakeEnvelope) -> None:
    document = load_catalog().model_dump()
    document["models"][0]["capacity"] = 4  # nano-us
    envs = [make_envelope(f"question {i}?") for i in range(10)]
    await process(envs, context(parse_catalog(document)))
    served = [e.model.model for e in envs if e.model]
    assert served.count("nano-us") == 4 and served.count("lite-us") == 6
    assert any("nano-us: at capacity" in r for r in envs[-1].model.routing)  # type: ignore[union-attr]


async def test_cache_hits_are_not_sent_to_a_model(make_envelope: MakeEnvelope) -> None:
    env = make_envelope("hi")
    env.cache, env.answer = CacheResult(outcome="hit", kind="exact"), "cached answer"
    backend = LocalBackend(latency_scale=0)
    (out,) = await process([env], context(backends={"local": backend}))
    assert out.answer == "cached answer" and out.model is None and backend.calls == 0


async def test_no_eligible_model_and_deadline_are_terminal_and_explained(make_envelope: MakeEnvelope) -> None:
    denied = make_envelope("hi")
    denied.policy = PolicyDecision(allowed_models=["retired"])
    late = make_envelope("hi", budget_ms=20)
    await process([denied, late], context(clock=FakeClock(late.created_at_ns)))
    assert denied.outcome and denied.outcome.status is Status.FAILED and denied.outcome.code == "no_eligible_model"
    assert denied.route == ["audit"]
    assert late.outcome and late.outcome.status is Status.DEADLINE_EXCEEDED and late.outcome.stage == "model"
    assert "cannot cover any eligible model" in late.outcome.message


class Flaky:
    """An in-memory backend failing the first ``failures`` calls."""

    name = "flaky"

    def __init__(self, failures: int, error: BackendError | None = None) -> None:
        self.failures, self.error, self.calls = failures, error or BackendError("boom"), 0

    async def complete(self, requests: list[ModelCall]) -> list[ModelReply]:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return [ModelReply(r.request_id, text="ok", usage=Usage(input_tokens=10, output_tokens=2)) for r in requests]

    async def aclose(self) -> None:
        return None


def two_backend_catalog(remote_url: str = "http://127.0.0.1:9/v1") -> ModelCatalog:
    document = load_catalog().model_dump()
    document["backends"]["remote"] = {"kind": "openai", "base_url": remote_url}
    remote = dict(document["models"][0], name="remote-small", backend="remote", upstream_model="tiny")
    remote["prices"] = dict(remote["prices"], input_micros_per_mtok=1000, output_micros_per_mtok=1000,
                            cached_input_micros_per_mtok=0)
    document["models"] = [remote, *[m for m in document["models"] if m["name"] in ("lite-us", "core-us")]]
    return parse_catalog(document)


async def test_failures_fall_back_then_fail_with_model_error(make_envelope: MakeEnvelope) -> None:
    flaky = Flaky(failures=1)
    env = make_envelope("hi")
    backends = {"remote": flaky, "local": LocalBackend(latency_scale=0)}
    await process([env], context(two_backend_catalog(), backends=backends))
    assert env.model and env.model.model == "lite-us" and env.model.attempts == 2
    assert "fallback to lite-us" in env.model.routing
    env = make_envelope("hi", model="remote-small")
    await process([env], context(two_backend_catalog(), backends={"remote": Flaky(failures=9)}))
    assert env.outcome and env.outcome.code == "model_error" and "boom" in env.outcome.message


# ------------------------------------------------------------------ against the fake OpenAI-compatible server
def remote_context(server: FakeOpenAI, **fields: object) -> ModelContext:
    catalog = two_backend_catalog(server.base_url)
    backends = {"remote": OpenAICompatBackend("remote", server.base_url), "local": LocalBackend(latency_scale=0)}
    return context(catalog, backends=backends, **fields)


async def test_remote_success_uses_reported_usage(openai_server: FakeOpenAI, make_envelope: MakeEnvelope) -> None:
    env = make_envelope("hi")
    await process([env], remote_context(openai_server))
    assert env.answer == "fake answer to: hi" and env.model and env.model.model == "remote-small"
    assert env.model.usage.input_tokens == 10 and openai_server.received[0]["model"] == "tiny"


@pytest.mark.parametrize("behaviour", ["500", "malformed", "truncated", "400"])
async def test_remote_errors_fall_back_to_the_next_candidate(openai_server: FakeOpenAI, make_envelope: MakeEnvelope,
                                                             behaviour: str) -> None:
    openai_server.script("tiny", behaviour)  # type: ignore[arg-type]
    env = make_envelope("hi")
    await process([env], remote_context(openai_server))
    assert env.outcome is None and env.model and env.model.model == "lite-us" and env.model.attempts == 2
    assert any(r.startswith("attempt 1 on remote-small failed") for r in env.model.routing)


async def test_timeout_falls_back_within_the_budget(openai_server: FakeOpenAI, make_envelope: MakeEnvelope) -> None:
    # slower than the whole budget: the attempt gives up while lite-us still fits in what is left
    openai_server.script("tiny", "slow")
    env = make_envelope("hi", budget_ms=4_000)
    clock = FakeClock(env.created_at_ns)  # pinned: the budget left is exactly 4 s whatever the machine's load
    timeouts = sample("tollway_model_calls_total", model="remote-small", result="timeout")
    fallbacks = sample("tollway_model_fallbacks_total", from_model="remote-small", to_model="lite-us")
    ctx = remote_context(openai_server, clock=clock)
    await process([env], ctx)
    assert env.outcome is None and env.model and env.model.model == "lite-us"
    (reason,) = [r for r in env.model.routing if "timed out after" in r]
    waited_ms = float(reason.split("timed out after ")[1].split(" ms")[0])
    # 4 s − 10 % for post-process and audit − 3 × lite-us's expected time, kept for the fallback
    lite_expected_ms = ctx.catalog.get("lite-us").latency.expected_ms(prompt_tokens(env), 160)
    assert waited_ms == pytest.approx(4_000 - 400 - 3 * lite_expected_ms, abs=1)
    assert sample("tollway_model_calls_total", model="remote-small", result="timeout") == timeouts + 1
    assert sample("tollway_model_fallbacks_total", from_model="remote-small", to_model="lite-us") == fallbacks + 1


async def test_a_backend_slower_than_its_catalog_latency_is_waited_for_within_the_budget(
        openai_server: FakeOpenAI, make_envelope: MakeEnvelope) -> None:
    # The catalog says ~36 ms; the server takes 600 ms; the request has 10 s. Timing out at 3 × 36 ms (250 ms floor)
    # failed requests whose budgets had seconds left (issue 16, item 9).
    document = two_backend_catalog(openai_server.base_url).model_dump()
    document["models"][0]["latency"] = {"overhead_ms": 20, "prefill_ms_per_1k_tokens": 0, "decode_ms_per_token": 0.1}
    catalog = parse_catalog(document)
    openai_server.slow_s = 0.6
    openai_server.script("tiny", "slow")
    backends = {"remote": OpenAICompatBackend("remote", openai_server.base_url), "local": LocalBackend(latency_scale=0)}
    env = make_envelope("hi", budget_ms=10_000)
    await process([env], context(catalog, backends=backends))
    assert env.outcome is None and env.model and env.model.model == "remote-small" and env.model.attempts == 1


def test_attempt_timeout_follows_the_remaining_budget() -> None:
    clock = FakeClock()
    catalog = two_backend_catalog()
    remote, lite = catalog.get("remote-small"), catalog.get("lite-us")
    ctx = context(catalog, clock=clock)
    env = Envelope(request_id="r", tenant="acme", created_at_ns=clock.now_ns(),
                   deadline_at_ns=clock.now_ns() + 10_000 * 1_000_000, route=["postprocess", "audit"],
                   request={"messages": [{"role": "user", "content": "hi"}]})
    alone = _Pending(env, [remote], 10, 160, clock.now_ns(), [])
    assert attempt_timeout_ms(alone, clock.now_ns(), ctx) == 10_000 - 1_000  # post-process + audit keep 10 %
    chained = _Pending(env, [remote, lite], 10, 160, clock.now_ns(), [])
    keep = 3 * chained.expected_ms(lite)
    assert attempt_timeout_ms(chained, clock.now_ns(), ctx) == pytest.approx(9_000 - keep)
    clock.advance_ms(8_500)  # too little left to keep a fallback's time: the current model gets all of it
    assert attempt_timeout_ms(chained, clock.now_ns(), ctx) == pytest.approx(500)
    clock.advance_ms(400)  # into the later stages' share: the floor, while the deadline allows it
    assert attempt_timeout_ms(chained, clock.now_ns(), ctx) == pytest.approx(250)
    clock.advance_ms(1_000)  # never past the deadline
    assert attempt_timeout_ms(chained, clock.now_ns(), ctx) == pytest.approx(100)


async def test_429_retry_after_is_honoured_on_the_same_model(openai_server: FakeOpenAI,
                                                             make_envelope: MakeEnvelope) -> None:
    openai_server.retry_after = "0.05"
    openai_server.script("tiny", "429")
    env = make_envelope("hi")
    await process([env], remote_context(openai_server))
    assert env.model and env.model.model == "remote-small" and env.model.attempts == 2
    assert "retrying remote-small after its Retry-After of 0.05 s" in env.model.routing
    assert env.model.latency_ms >= 50


async def test_429_longer_than_the_budget_falls_back_at_once(openai_server: FakeOpenAI,
                                                             make_envelope: MakeEnvelope) -> None:
    openai_server.retry_after = "30"
    openai_server.script("tiny", "429")
    env = make_envelope("hi", budget_ms=5_000)
    await process([env], remote_context(openai_server))
    assert env.model and env.model.model == "lite-us" and openai_server.calls_for("tiny") == 1


async def test_breaker_opens_on_a_failing_backend_and_the_router_skips_it(openai_server: FakeOpenAI,
                                                                           make_envelope: MakeEnvelope) -> None:
    openai_server.script("tiny", "500", "500", "500")
    ctx = remote_context(openai_server, breakers=BreakerBoard(failure_threshold=3, cooldown_ms=60_000))
    for _ in range(3):
        (env,) = await process([make_envelope("hi")], ctx)
        assert env.model and env.model.model == "lite-us"
    assert ctx.breakers("remote").state(ctx.clock.now_ns()) == "open"
    (env,) = await process([make_envelope("hi")], ctx)
    assert env.model and env.model.model == "lite-us" and env.model.attempts == 1
    assert "remote-small: backend remote circuit open" in env.model.routing
    assert openai_server.calls_for("tiny") == 3
