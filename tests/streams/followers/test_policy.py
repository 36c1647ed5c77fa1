"""The policy follower on the real broker: catch-up on start, hot reload, invalid records skipped."""

from __future__ import annotations

import pytest

from schemas.errors import ConfigError
from schemas.policy import PolicyDocument, parse_policy
from streams.followers.policy import POLICY_KEY, PolicyStore, decode_policy, encode_policy, publish_policy
from streams.runtime.topics import ensure_topics, topology
from streams.settings import Settings
from tests.kafka_helpers import produce_raw


def doc(version: str) -> PolicyDocument:
    return parse_policy({"version": version, "tenants": {"acme": {"require_principal": False}}})


def test_encode_decode_round_trip() -> None:
    original = doc("v1")
    assert decode_policy(encode_policy(original)) == original
    with pytest.raises(ConfigError, match=r"tenants\.acme\.regions"):
        decode_policy(b'{"version": "x", "tenants": {"acme": {"regions": "eu"}}}')


@pytest.mark.integration
async def test_catch_up_then_hot_reload(settings: Settings) -> None:
    await ensure_topics(settings)
    await publish_policy(settings, doc("v1"))
    store = PolicyStore(settings)
    await store.start()
    try:
        assert store.version == "v1", "start() returns only once the topic is read to its end"
        await publish_policy(settings, doc("v2"))
        await store.wait_for_version("v2", timeout_s=10)
        # an invalid record and a tombstone leave the policy in force
        await produce_raw(settings, topology(settings).policy, [b'{"version": ""}', None])
        await publish_policy(settings, doc("v3"))
        await store.wait_for_version("v3", timeout_s=10)
        assert store.rejected == 1
    finally:
        await store.stop()


@pytest.mark.integration
async def test_no_policy_published(settings: Settings) -> None:
    store = PolicyStore(settings)
    await store.start()
    try:
        assert store.current() is None
    finally:
        await store.stop()


def test_policy_key_is_constant() -> None:
    # one key on a compacted topic: compaction keeps exactly the latest document
    assert POLICY_KEY == b"policy"


def test_a_changed_document_under_the_same_version_is_logged_as_an_error(caplog: pytest.LogCaptureFixture) -> None:
    store = PolicyStore(Settings())
    first = parse_policy({"version": "v1", "tenants": {"acme": {"regions": ["us"]}}})
    changed = parse_policy({"version": "v1", "tenants": {"acme": {"regions": ["eu"]}}})
    store._apply(encode_policy(first), 0)
    store._apply(encode_policy(first), 1)  # the same document again: no error
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    store._apply(encode_policy(changed), 2)
    # Still taken, so every worker agrees on the latest record (a new one only ever reads that one after compaction).
    assert store.current() == changed and store.offset == 2
    assert "republished with a different document under the same version" in caplog.text
