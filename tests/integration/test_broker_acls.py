"""Zero trust, layer 1: the broker itself refuses writes a principal has no ACL for (SASL/SCRAM + ACLs that
`make up` configures). Together with tests/streams/test_zero_trust.py (layer 2: the stages verify) this is the probe
suite: a forged envelope either never reaches a topic, or reaches it and is refused."""

from __future__ import annotations

import pytest
from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError
from pydantic import SecretStr

from schemas.errors import ServiceUnavailable
from streams.runtime.connections import kafka_security, new_producer, start
from streams.runtime.topics import ensure_topics, topology
from streams.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def secured(settings: Settings) -> Settings:
    if not kafka_security(settings, "admin"):
        pytest.skip("the broker runs without authentication (TOLLWAY_KAFKA_AUTH=none)")
    await ensure_topics(settings)  # creates the prefix's topics and grants its ACLs
    return settings


async def can_write(settings: Settings, role: str, topic: str) -> bool:
    producer = new_producer(settings, role=role, linger_ms=0, request_timeout_ms=5_000)
    await start(producer, settings, role)
    try:
        await producer.send_and_wait(topic, b"{}", key=b"probe")
        return True
    except TopicAuthorizationFailedError:
        return False
    finally:
        await producer.stop()


async def test_a_producer_may_write_only_the_ingress(secured: Settings) -> None:
    topo = topology(secured)
    assert await can_write(secured, "producer", topo.ingress())
    for topic in (topo.stage("policy"), topo.stage("model"), topo.stage("audit"), topo.audit_log, topo.policy,
                  topo.responses, topo.index):
        assert not await can_write(secured, "producer", topic), topic


async def test_a_stage_writes_only_forward_and_only_audit_writes_the_audit_log(secured: Settings) -> None:
    topo = topology(secured)
    assert await can_write(secured, "stage-cache", topo.stage("model"))
    assert not await can_write(secured, "stage-cache", topo.stage("policy"))  # no way back around the policy
    assert not await can_write(secured, "stage-cache", topo.audit_log)
    assert not await can_write(secured, "stage-model", topo.policy)
    assert await can_write(secured, "stage-audit", topo.audit_log)
    assert await can_write(secured, "policy-admin", topo.policy)


async def test_a_wrong_password_or_no_credentials_is_refused(secured: Settings) -> None:
    forged = secured.model_copy(update={"kafka_username": "producer", "kafka_password": SecretStr("not-the-password")})
    with pytest.raises(ServiceUnavailable):
        await start(new_producer(forged, role="producer"), forged, "forger")
    from aiokafka import AIOKafkaProducer

    plaintext = AIOKafkaProducer(bootstrap_servers=secured.bootstrap_servers, request_timeout_ms=3_000)
    with pytest.raises((KafkaConnectionError, TimeoutError)):
        await plaintext.start()
    await plaintext.stop()
