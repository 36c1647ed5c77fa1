"""SDK pieces that need no broker: key verification cache, principal signing, reply bookkeeping."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import KafkaConnectionError

from schemas.envelope import Status
from schemas.errors import ServiceUnavailable
from schemas.policy import KeyRecord, PolicyDocument, TenantPolicy
from schemas.response import Response
from streams.clients.principals import Identity, KeyCache, sign_envelope
from streams.clients.replies import ReplyReader
from streams.runtime.codec import encode
from streams.settings import Settings
from workers.keys import create_key, verify_principal
from workers.policy import StaticPolicy


def policy(version: str, *records: KeyRecord) -> PolicyDocument:
    return PolicyDocument(version=version, tenants={"acme": TenantPolicy(keys=list(records))})


@pytest.fixture
def key() -> tuple[str, KeyRecord]:
    return create_key("acme", scrypt_n=2**10)


async def test_a_key_is_verified_once_per_policy_version(key: tuple[str, KeyRecord]) -> None:
    raw, record = key
    source = StaticPolicy(policy("v1", record))
    cache = KeyCache(source)
    results = await asyncio.gather(*(cache.authenticate(raw) for _ in range(20)))
    assert set(results) == {Identity("acme", record.key_id)}
    assert cache.verifications == 1, "concurrent first requests share one scrypt"
    await cache.authenticate(raw)
    assert cache.verifications == 1
    source.document = policy("v2", record.model_copy(update={"revoked": True}))
    assert await cache.authenticate(raw) is None, "a new policy version is checked again: the key is revoked"


async def test_wrong_keys_and_no_policy_authenticate_nobody(key: tuple[str, KeyRecord]) -> None:
    raw, record = key
    cache = KeyCache(StaticPolicy(policy("v1", record)))
    assert await cache.authenticate(raw[:-3] + "xyz") is None
    assert await cache.authenticate("sk-not-a-tollway-key") is None
    assert await KeyCache(StaticPolicy(None)).authenticate(raw) is None


def test_sign_envelope_puts_a_verifiable_principal_and_never_the_key(make_envelope, key) -> None:  # type: ignore[no-untyped-def]
    raw, record = key
    env = sign_envelope(make_envelope(tenant="someone-else"), Identity("acme", record.key_id), "secret")
    assert env.tenant == "acme" and env.principal is not None
    assert verify_principal("secret", env.request_id, "acme", record.key_id, env.principal.signature)
    assert raw not in env.model_dump_json()


def response(rid: str) -> Response:
    return Response(request_id=rid, tenant="acme", status=Status.OK, answer="a")


async def test_reply_reader_keeps_only_registered_ids_and_trims_unclaimed_results() -> None:
    reader = ReplyReader(Settings(), "t.responses", keep_results=2)
    reader.expect(["a", "b", "c"])
    reader._resolve("stranger", encode(response("stranger")))
    for rid in ("a", "b", "c"):
        reader._resolve(rid, encode(response(rid)))
    assert list(reader._futures) == ["b", "c"], "the oldest unclaimed result goes, strangers are never kept"
    reader.expect(["d"])
    assert (await reader.wait("c", 1)).request_id == "c"
    assert "c" not in reader._futures
    with pytest.raises(TimeoutError, match=r"no reply to request d on t\.responses within 0\.01 s"):
        await reader.wait("d", 0.01)
    assert reader.pending() == 1
    with pytest.raises(KeyError):
        await reader.wait("never-submitted", 0.01)


async def test_reply_reader_bounds_the_ids_waiting_for_a_reply() -> None:
    """A long-lived ingress whose requests time out must not keep a future per lost reply for ever."""
    reader = ReplyReader(Settings(), "t.responses", max_pending=3)
    reader.expect(["abandoned-1", "abandoned-2", "waited"])
    waiting = asyncio.create_task(reader.wait("waited", 5))
    await asyncio.sleep(0)  # let the waiter register
    reader.expect(["new-1", "new-2"])  # room is made by dropping ids nobody waits on, oldest first
    assert list(reader._futures) == ["waited", "new-1", "new-2"]
    with pytest.raises(ServiceUnavailable, match="already waiting for replies"):
        reader._waiters.update({"new-1": 1, "new-2": 1})  # every pending id has a caller now
        reader.expect(["one-too-many"])
    reader._resolve("waited", encode(response("waited")))
    assert (await waiting).request_id == "waited"


async def test_waits_fail_at_once_when_the_reader_stops() -> None:
    class BrokenConsumer:
        async def getmany(self, timeout_ms: int, max_records: int | None = None) -> dict[object, object]:
            raise KafkaConnectionError("broker gone")

    reader = ReplyReader(Settings(), "t.responses")
    reader.expect(["a"])
    reader._consumer = BrokenConsumer()  # type: ignore[assignment]
    waiting = asyncio.create_task(reader.wait("a", 60))
    await reader._tail()  # the follower's loop: the failure ends it and fails every wait
    with pytest.raises(ServiceUnavailable, match="no longer read"):
        await asyncio.wait_for(waiting, 1)
    with pytest.raises(ServiceUnavailable):
        reader.expect(["b"])
