"""RepliesApart: responses on their own producer, every record still acknowledged by ``flush``."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from streams.runtime.publisher import KafkaPublisher, RepliesApart
from streams.runtime.topics import Topology, topology
from streams.settings import Settings


class Recording:
    """Stands in for a KafkaPublisher: what was published, and how often it was sent and flushed."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, bytes | None]] = []
        self.sends = 0
        self.flushes = 0

    def publish(self, topic: str, value: bytes, *, key: bytes | None = None) -> None:
        self.records.append((topic, value, key))

    async def send(self) -> None:
        self.sends += 1

    async def flush(self) -> None:
        self.flushes += 1


def _topology() -> Topology:
    return topology(Settings(topic_prefix="tw"))


def test_is_reply_names_the_responses_and_reply_topics_only() -> None:
    topo = _topology()
    assert topo.is_reply("tw.responses")
    assert topo.is_reply("tw.replies.serve-1")
    assert not topo.is_reply("tw.audit.log")
    assert not topo.is_reply("tw.deadletter")
    assert not topo.is_reply("tw.retrieval")
    assert not topo.is_reply("other.responses")


def test_responses_go_to_their_own_publisher_and_both_are_sent_and_flushed() -> None:
    topo = _topology()
    main, replies = Recording(), Recording()
    split = RepliesApart(cast(KafkaPublisher, main), cast(KafkaPublisher, replies), topo.is_reply)
    split.publish("tw.responses", b"r1", key=b"a")
    split.publish("tw.audit.log", b"a1", key=b"a")
    split.publish("tw.replies.serve-1", b"r2", key=b"b")
    split.publish("tw.deadletter", b"d1")
    assert replies.records == [("tw.responses", b"r1", b"a"), ("tw.replies.serve-1", b"r2", b"b")]
    assert main.records == [("tw.audit.log", b"a1", b"a"), ("tw.deadletter", b"d1", None)]

    async def go() -> None:
        await split.send()
        await split.flush()

    asyncio.run(go())
    assert (main.sends, main.flushes, replies.sends, replies.flushes) == (1, 1, 1, 1)


def test_a_failed_flush_on_either_side_fails_the_flush() -> None:
    class Failing(Recording):
        async def flush(self) -> None:
            raise RuntimeError("not acknowledged")

    topo = _topology()
    for main, replies in ((Failing(), Recording()), (Recording(), Failing())):
        split = RepliesApart(cast(Any, main), cast(Any, replies), topo.is_reply)
        try:
            asyncio.run(split.flush())
        except RuntimeError as exc:
            assert "not acknowledged" in str(exc)
        else:
            raise AssertionError("a failed flush must fail the batch's tail")
