"""Backfill input handling without a broker: rates, lines, deterministic ids, a torn output."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from schemas.envelope import Envelope
from streams.clients.backfill import (
    BackfillOptions,
    Item,
    Summary,
    _publish,
    parse_line,
    parse_rate,
    read_done,
    read_input,
)
from streams.settings import Settings


@pytest.mark.parametrize(("text", "per_s"), [("200/s", 200.0), ("6000/m", 100.0), ("50", 50.0), ("7200/h", 2.0)])
def test_parse_rate(text: str, per_s: float) -> None:
    assert parse_rate(text) == per_s


@pytest.mark.parametrize("text", ["0/s", "fast", "-3/s", "10/d"])
def test_bad_rates_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--rate"):
        parse_rate(text)


def test_request_ids_are_deterministic_and_scoped_by_job_and_tenant() -> None:
    raw = b'{"prompt": "hello"}'
    a = parse_line(1, raw, job="j", tenant="acme")
    assert a.request_id == parse_line(1, raw, job="j", tenant="acme").request_id
    assert a.request_id != parse_line(2, raw, job="j", tenant="acme").request_id, "same content, other line"
    assert a.request_id != parse_line(1, raw, job="k", tenant="acme").request_id
    with_id = b'{"id": "t-1", "prompt": "hello"}'
    assert parse_line(1, with_id, job="j", tenant="acme").request_id == \
        parse_line(9, b'{"id": "t-1", "prompt": "edited"}', job="j", tenant="acme").request_id, "the id decides"


def test_openai_batch_lines_are_understood() -> None:
    raw = (b'{"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "nano-us", '
           b'"messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}}')
    item = parse_line(1, raw, job="j", tenant="acme")
    assert item.source_id == "r1" and item.fields["model"] == "nano-us"
    assert item.fields["params"].max_tokens == 20 and item.messages[0].content == "hi"


def test_bad_lines_are_reported_with_numbers_and_skipped(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "a"}\nnot json\n\n{"prompt": "b", "colour": "red"}\n{"id": "x", "prompt": "c"}\n'
                      '{"id": "x", "prompt": "d"}\n{"messages": []}\n{"prompt": "e", "messages": '
                      '[{"role": "user", "content": "e"}]}\n')
    items, bad = read_input(source, job="j", tenant="acme")
    assert [i.line for i in items] == [1, 5]
    assert [b.line for b in bad] == [2, 4, 6, 7, 8]
    assert "duplicate of line 5" in bad[2].error


def test_a_torn_last_line_is_cut_off(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"request_id": "a"}\n{"request_id": "b"}\n{"request_id": "c", "ans')
    assert read_done(out) == {"a", "b"}
    assert out.read_bytes().endswith(b'"b"}\n')
    assert read_done(tmp_path / "missing.jsonl") == set()


class _AckingClient:
    """Stands in for the SDK client: every submit is acknowledged at once."""

    def __init__(self) -> None:
        self.submitted: list[str] = []

    async def submit_envelopes(self, envs: list[Envelope]) -> list[str]:
        self.submitted.extend(env.request_id for env in envs)
        return [env.request_id for env in envs]


async def test_publishing_never_holds_more_window_slots_than_the_window_has(tmp_path: Path) -> None:
    """The resumed run of a backfill hung for good under load: while results of the previous run's in-flight requests
    held every slot of the window, time passed, so the rate allowed a group larger than the window; the group then
    waited for slots that only its own (not yet created) collectors could free."""
    max_in_flight = 10
    options = BackfillOptions(input_file=tmp_path / "in.jsonl", out=tmp_path / "out.jsonl", rate_per_s=1000,
                              max_in_flight=max_in_flight)
    items = [parse_line(n, orjson.dumps({"prompt": f"q{n}"}), job="j", tenant="acme") for n in range(1, 61)]
    window = asyncio.Semaphore(max_in_flight)
    for _ in range(max_in_flight):  # the previous run's in-flight requests, answered a little later
        await window.acquire()
    answered_later = asyncio.get_running_loop().call_later(0.05, lambda: [window.release()
                                                                            for _ in range(max_in_flight)])
    collectors: list[asyncio.Task[None]] = []

    async def collect(item: Item) -> None:
        window.release()  # answered at once

    client = _AckingClient()
    summary = Summary()
    try:
        await asyncio.wait_for(_publish(client, Settings(), options, items, window,  # type: ignore[arg-type]
                                        collect, collectors, summary), 10)
        await asyncio.gather(*collectors)
    finally:
        answered_later.cancel()
    assert client.submitted == [item.request_id for item in items] and summary.published == len(items)
