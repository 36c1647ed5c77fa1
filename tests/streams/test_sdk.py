"""SDK pieces that need no broker: key verification cache, principal signing, reply bookkeeping."""

from __future__ import annotations

import asyncio

import pytest

from schemas.envelope import Status
from schemas.policy import KeyRecord, PolicyDocument, TenantPolicy
from schemas.response import Response
from streams.client import ReplyReader
from streams.principals import Identity, KeyCache, sign_envelope
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
    for rid in ("a", "b", "c"):
        reader._futures[rid].set_result(response(rid))
    reader.expect(["d"])  # trimming happens on registration: the oldest finished result goes
    assert list(reader._futures) == ["b", "c", "d"]
    assert (await reader.wait("c", 1)).request_id == "c"
    assert "c" not in reader._futures
    with pytest.raises(TimeoutError):
        await reader.wait("d", 0.01)
    assert reader.pending() == 1
    with pytest.raises(KeyError):
        await reader.wait("never-submitted", 0.01)
