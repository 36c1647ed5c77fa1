"""The openai backend against the fake OpenAI-compatible server: success, 500, 429, timeouts, broken bodies."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from schemas.envelope import FunctionTool, Message, Passage, ToolCall, ToolCallRecord
from schemas.errors import BackendError, ConfigError, RateLimitedByBackend
from tests.fakes.openai_server import FakeOpenAI, openai_server
from workers.backends.base import ModelCall
from workers.backends.openai_compat import OpenAICompatBackend, parse_retry_after

__all__ = ["openai_server"]


def call(model: str = "m", prompt: str = "hello", **fields: object) -> ModelCall:
    return ModelCall(request_id=f"r-{prompt}", model=model, messages=[Message(role="user", content=prompt)],
                     **fields)  # type: ignore[arg-type]


@pytest.fixture
async def backend(openai_server: FakeOpenAI) -> OpenAICompatBackend:
    return OpenAICompatBackend("fake", openai_server.base_url, api_key=SecretStr("sk-test"))


async def test_success_reports_text_usage_and_sends_key_and_context(openai_server: FakeOpenAI,
                                                                    backend: OpenAICompatBackend) -> None:
    openai_server.cached_tokens = 7
    passages = [Passage(doc_id="d1", score=0.9, text="Refunds within 30 days.")]
    (reply,) = await backend.complete([call(prompt="refunds?", passages=passages, max_tokens=64)])
    await backend.aclose()
    assert reply.ok and reply.text == "fake answer to: refunds?"
    assert reply.usage.input_tokens == 20 and reply.usage.cached_input_tokens == 7
    assert reply.usage.output_tokens == 4
    body = openai_server.received[0]
    assert body["max_tokens"] == 64 and body["messages"][0]["role"] == "system" and "[d1]" in body["messages"][0][
        "content"]
    assert openai_server.headers[0]["Authorization"] == "Bearer sk-test"


async def test_a_batch_is_served_concurrently_and_failures_stay_per_request(openai_server: FakeOpenAI,
                                                                           backend: OpenAICompatBackend) -> None:
    openai_server.script("bad", "500")
    replies = await backend.complete([call("good", "a"), call("bad", "b"), call("good", "c")])
    await backend.aclose()
    assert [r.ok for r in replies] == [True, False, True]
    assert [r.request_id for r in replies] == ["r-a", "r-b", "r-c"]


@pytest.mark.parametrize(("behaviour", "retryable", "words"), [
    ("500", True, "HTTP 500"),
    ("400", False, "HTTP 400"),
    ("malformed", True, "malformed completion"),
    ("truncated", True, "fake"),
])
async def test_errors_are_converted(openai_server: FakeOpenAI, backend: OpenAICompatBackend, behaviour: str,
                                   retryable: bool, words: str) -> None:
    openai_server.script("m", behaviour)  # type: ignore[arg-type]
    (reply,) = await backend.complete([call()])
    await backend.aclose()
    assert isinstance(reply.error, BackendError) and not isinstance(reply.error, RateLimitedByBackend)
    assert reply.error.retryable is retryable
    assert words in str(reply.error)


async def test_429_carries_retry_after(openai_server: FakeOpenAI, backend: OpenAICompatBackend) -> None:
    openai_server.retry_after = "2"
    openai_server.script("m", "429", "429-date")
    first, second = (await backend.complete([call()]))[0], (await backend.complete([call()]))[0]
    await backend.aclose()
    assert isinstance(first.error, RateLimitedByBackend) and first.error.retry_after_s == 2.0
    assert isinstance(second.error, RateLimitedByBackend) and second.error.retry_after_s == 0.0  # a date long past


async def test_timeout_follows_the_calls_budget(openai_server: FakeOpenAI, backend: OpenAICompatBackend) -> None:
    openai_server.script("m", "slow")
    (reply,) = await backend.complete([call(timeout_s=0.2)])
    await backend.aclose()
    assert isinstance(reply.error, BackendError) and reply.error.retryable
    assert "no reply within 200 ms" in str(reply.error)


async def test_connection_refused_is_a_backend_error() -> None:
    backend = OpenAICompatBackend("gone", "http://127.0.0.1:9/v1")
    (reply,) = await backend.complete([call(timeout_s=2)])
    await backend.aclose()
    assert isinstance(reply.error, BackendError) and "gone" in str(reply.error)


def test_missing_required_key_says_how_to_fix() -> None:
    with pytest.raises(ConfigError, match="TOLLWAY_MODEL_API_KEY"):
        OpenAICompatBackend("paid", "http://127.0.0.1:1/v1", api_key_required=True)


def test_parse_retry_after() -> None:
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", now_s=90) == 10.0


async def test_tools_go_out_in_openai_shape_and_tool_calls_come_back(openai_server: FakeOpenAI,
                                                                     backend: OpenAICompatBackend) -> None:
    openai_server.script("m", "tool_calls")
    lookup = FunctionTool(name="lookup_order", parameters={"type": "object", "properties": {}})
    (asked,) = await backend.complete([call(prompt="where is A-1?", tools=["lookup_order"],
                                            tool_definitions=[lookup])])
    assert asked.ok and asked.finish_reason == "tool_calls"
    assert asked.tool_calls == [ToolCall(id="call_fake", name="lookup_order", arguments={"q": "where is A-1?"})]
    assert openai_server.received[0]["tools"] == [{"type": "function", "function": {
        "name": "lookup_order", "description": "", "parameters": {"type": "object", "properties": {}}}}]
    # The next turn: the tools stage's result of that call, and the session's remembered client-side turn.
    history = [Message(role="user", content="before"),
               Message(role="assistant", content="", tool_calls=[ToolCall(id="h1", name="f")]),
               Message(role="tool", content="1", tool_call_id="h1"), Message(role="assistant", content="ok")]
    result = ToolCallRecord(call_id="call_fake", name="lookup_order", step=1, status="ok", content='{"s": 1}')
    (answered,) = await backend.complete([call(prompt="where is A-1?", tool_results=[result], history=history)])
    await backend.aclose()
    assert answered.ok and answered.text == "fake answer to: where is A-1?"
    sent = openai_server.received[1]["messages"]
    assert [(m["role"], m.get("tool_call_id")) for m in sent] == [
        ("user", None), ("assistant", None), ("tool", "h1"), ("assistant", None), ("user", None), ("assistant", None),
        ("tool", "call_fake")]
    assert sent[1]["tool_calls"][0]["function"] == {"name": "f", "arguments": "{}"} and sent[1]["content"] is None
    assert "tools" not in openai_server.received[1]


async def test_two_samples_ask_for_n_and_fill_in_with_a_second_call(openai_server: FakeOpenAI,
                                                                   backend: OpenAICompatBackend) -> None:
    (one,) = await backend.complete([call(prompt="what is a lease?")])
    (two,) = await backend.complete([call(prompt="what is a lease?", samples=2, seed=7)])
    first, *extra = openai_server.received[1:]
    assert first["n"] == 2 and first["seed"] == 7 and "n" not in openai_server.received[0]
    # the fake server ignores n: the backend made one more call (another seed) and billed both
    assert len(extra) == 1 and extra[0]["seed"] == 8 and "n" not in extra[0]
    assert two.alternatives == ["fake answer to: what is a lease?"]
    assert two.usage.output_tokens == 2 * one.usage.output_tokens and one.alternatives == []
