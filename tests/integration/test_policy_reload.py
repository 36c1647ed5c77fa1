"""Policy as data on the real pipeline: hot reload without restart, denials as audited terminal responses."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest
import yaml
from typer.testing import CliRunner, Result

from schemas.envelope import Principal, Status
from schemas.policy import PolicyDocument, parse_policy
from streams.cli.main import app
from streams.clients.envelopes import new_envelope
from streams.clients.sdk import TollwayClient
from streams.followers.policy import publish_policy
from streams.runtime.topics import topology
from streams.settings import Settings, get_settings
from tests.kafka_helpers import read_until
from workers.keys import sign_principal

MODELS = {"lite-us": {"region": "us", "input_micros_per_mtok": 150_000, "output_micros_per_mtok": 600_000},
          "lite-eu": {"region": "eu", "input_micros_per_mtok": 165_000, "output_micros_per_mtok": 660_000}}


def policy(version: str, regions: list[str]) -> PolicyDocument:
    return parse_policy({"version": version, "models": MODELS,
                         "tenants": {"acme": {"require_principal": False, "regions": regions,
                                              "allowed_models": ["lite-us"]}}})


async def test_hot_reload_changes_the_next_decision(pipeline: Settings) -> None:
    settings = pipeline
    await publish_policy(settings, policy("v1", ["us"]))
    async with TollwayClient(settings) as submitter:
        # the worker started before v1 was published: wait until it decides under v1 (bounded, no sleeps)
        deadline = time.monotonic() + 15
        while True:
            (first,) = await submitter.complete_envelopes([new_envelope("hello", tenant="acme", settings=settings)])
            if first.status is Status.OK or time.monotonic() > deadline:
                break
        assert first.status is Status.OK, first

        published_at = time.monotonic()
        await publish_policy(settings, policy("v2", ["eu"]))  # lite-us is the only allowed model: not in the EU
        while True:
            again = new_envelope("hello again", tenant="acme", settings=settings)
            (after,) = await submitter.complete_envelopes([again])
            if after.status is not Status.OK or time.monotonic() - published_at > 15:
                break
        reload_s = time.monotonic() - published_at
        assert after.status is Status.DENIED and after.code == "residency_violation", after
        assert "(policy v2)" in after.message
        assert reload_s < 15
        # from then on every request is decided under v2
        responses = await submitter.complete_envelopes([new_envelope(f"q{i}", tenant="acme", settings=settings)
                                              for i in range(5)])
        assert {(r.status, r.code) for r in responses} == {(Status.DENIED, "residency_violation")}
        assert all([h.stage for h in r.hops] == ["retrieval", "policy"] for r in responses)

    audit = await read_until(settings, topology(settings).audit_log,
                             lambda rs: after.request_id in {orjson.loads(r.value)["request_id"] for r in rs})
    assert after.request_id in {orjson.loads(r.value)["request_id"] for r in audit}, "denials are audited"


async def test_forged_principal_is_unauthenticated(pipeline: Settings) -> None:
    settings = pipeline
    doc = parse_policy({"version": "p1", "tenants": {"acme": {"require_principal": True}}})
    await publish_policy(settings, doc)
    async with TollwayClient(settings) as submitter:
        deadline = time.monotonic() + 15
        while True:
            env = new_envelope("hi", tenant="acme", settings=settings)
            env.principal = Principal(key_id="k_0123456789abcdef",
                                      signature=sign_principal("wrong-secret", env.request_id, "acme",
                                                               "k_0123456789abcdef"))
            (response,) = await submitter.complete_envelopes([env])
            if response.code == "unauthenticated" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0)
    assert response.status is Status.DENIED and response.code == "unauthenticated"
    assert "signature" in response.message


async def test_apply_refuses_a_changed_document_under_the_version_in_force(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`tollway policy apply`: a version names one document (decisions record only the version)."""
    def write(name: str, doc: PolicyDocument) -> str:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(doc.model_dump(mode="json"), sort_keys=False))
        return str(path)

    v1, v1_changed, v2 = write("v1.yaml", policy("v1", ["us"])), write("v1b.yaml", policy("v1", ["eu"])), \
        write("v2.yaml", policy("v2", ["eu"]))
    monkeypatch.setenv("TOLLWAY_TOPIC_PREFIX", settings.topic_prefix)
    monkeypatch.setenv("TOLLWAY_STATE_DIR", str(settings.state_dir))
    monkeypatch.setenv("TOLLWAY_KAFKA_CREDENTIALS_FILE", str(settings.kafka_credentials_path))
    get_settings.cache_clear()
    try:
        def apply(path: str) -> Result:  # in a thread: the CLI runs its own event loop
            return CliRunner().invoke(app, ["policy", "apply", path, "--json"])

        first = await asyncio.to_thread(apply, v1)
        assert first.exit_code == 0 and orjson.loads(first.stdout)["published"] is True, first.output
        again = await asyncio.to_thread(apply, v1)  # the identical document: a no-op, same offset
        assert again.exit_code == 0, again.output
        assert orjson.loads(again.stdout) == {**orjson.loads(first.stdout), "published": False}
        changed = await asyncio.to_thread(apply, v1_changed)
        assert changed.exit_code == 2
        assert "policy version 'v1' is already in force with a different document: bump `version`" in changed.stderr
        bumped = await asyncio.to_thread(apply, v2)
        assert bumped.exit_code == 0, bumped.output
        assert orjson.loads(bumped.stdout)["offset"] == orjson.loads(first.stdout)["offset"] + 1
    finally:
        get_settings.cache_clear()
    records = await read_until(settings, topology(settings).policy, lambda got: len(got) >= 2, timeout_s=10)
    assert [orjson.loads(r.value)["version"] for r in records] == ["v1", "v2"]
