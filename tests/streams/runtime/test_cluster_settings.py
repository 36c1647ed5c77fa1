"""A replicated cluster from the settings: addresses, replication, min ISR on every topic, static member ids."""

from __future__ import annotations

import pytest

from schemas.errors import ConfigError
from streams.runtime.runner import consumer_options
from streams.runtime.topics import Topology
from streams.settings import load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TOLLWAY_BOOTSTRAP_SERVERS", "TOLLWAY_KAFKA_PORT", "TOLLWAY_KAFKA_BROKERS", "TOLLWAY_INSTANCE_ID",
                 "TOLLWAY_REPLICATION_FACTOR", "TOLLWAY_MIN_INSYNC_REPLICAS", "TOLLWAY_SESSION_TIMEOUT_MS"):
        monkeypatch.delenv(name, raising=False)


def test_single_node_is_the_default() -> None:
    settings = load_settings()
    assert settings.bootstrap_servers == "127.0.0.1:9092"
    assert (settings.replication_factor, settings.min_insync_replicas) == (1, 1)
    assert settings.group_instance_id("policy") is None


def test_three_brokers_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLLWAY_KAFKA_PORT", "9182")
    monkeypatch.setenv("TOLLWAY_KAFKA_BROKERS", "3")
    settings = load_settings()
    assert settings.bootstrap_servers == "127.0.0.1:9182,127.0.0.1:9192,127.0.0.1:9202"
    assert (settings.replication_factor, settings.min_insync_replicas) == (3, 2)


def test_explicit_values_win_and_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLLWAY_KAFKA_BROKERS", "3")
    monkeypatch.setenv("TOLLWAY_BOOTSTRAP_SERVERS", "kafka:9092")
    monkeypatch.setenv("TOLLWAY_MIN_INSYNC_REPLICAS", "3")
    settings = load_settings()
    assert settings.bootstrap_servers == "kafka:9092" and settings.replication_factor == 3
    assert settings.min_insync_replicas == 3
    monkeypatch.setenv("TOLLWAY_REPLICATION_FACTOR", "2")
    with pytest.raises(ConfigError, match="min_insync_replicas 3 exceeds replication_factor 2"):
        load_settings()


def test_every_topic_carries_the_replication_and_min_isr() -> None:
    settings = load_settings(kafka_brokers=3)
    for topic in Topology("t").all_topics(settings):
        assert topic.replication_factor == 3, topic.name
        assert topic.topic_configs["min.insync.replicas"] == "2", topic.name


def test_static_membership_and_session_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLLWAY_INSTANCE_ID", "stage-policy-2")
    monkeypatch.setenv("TOLLWAY_SESSION_TIMEOUT_MS", "15000")
    settings = load_settings()
    assert settings.group_instance_id("policy") == "stage-policy-2-policy"
    assert consumer_options(settings)["session_timeout_ms"] == 15_000
