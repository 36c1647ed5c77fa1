"""TOLLWAY_KAFKA_CLIENT=auto, resolved per worker process: librdkafka when its stages run alone, aiokafka when it
runs a co-located chain (docs/PERFORMANCE.md has the figures behind the choice); a named client is kept."""

from __future__ import annotations

import pytest

from streams.runtime.worker_process import resolve_kafka_client
from streams.settings import Settings
from streams.stages.registry import resolve_units


@pytest.mark.parametrize(("units", "client"), [
    (["all"], "librdkafka"),
    (["model"], "librdkafka"),
    (["all+"], "aiokafka"),
    (["retrieval+policy+cache", "model", "postprocess", "audit"], "aiokafka"),
])
def test_auto_picks_by_the_shape_of_the_process(units: list[str], client: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOLLWAY_KAFKA_CLIENT", raising=False)
    assert Settings().kafka_client == "auto"
    assert resolve_kafka_client(Settings(), resolve_units(units)).kafka_client == client


@pytest.mark.parametrize("named", ["aiokafka", "librdkafka"])
def test_a_named_client_is_kept(named: str) -> None:
    settings = Settings(kafka_client=named)
    assert resolve_kafka_client(settings, resolve_units(["all+"])).kafka_client == named
    assert resolve_kafka_client(settings, resolve_units(["all"])).kafka_client == named
