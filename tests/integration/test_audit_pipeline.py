"""Audit on the real pipeline: every outcome type gives exactly one record (on the topic and in the chain on disk),
duplicates and dead letters included, and PII fixtures never reach the audit log."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner, Result

from schemas.envelope import CacheResult, Status
from streams.cli.audit_topics import read_audit_topics
from streams.cli.main import app
from streams.clients.envelopes import new_envelope
from streams.clients.sdk import TollwayClient
from streams.runtime.codec import encode
from streams.runtime.topics import topology
from streams.settings import Settings, get_settings
from streams.stages.audit import audit_dir, signer_from_settings
from streams.testing import seal_outcome
from tests.kafka_helpers import produce_raw, read_until
from workers.audit.chain import ChainState, parse_line
from workers.audit.sink import CHECKPOINTS, chain_dirs, segments
from workers.audit.verify import verify_dir, verify_topic
from workers.audit.witness import collect_witness

pytestmark = pytest.mark.integration
PII = ("jane.doe@example.com", "4111 1111 1111 1111", "078-05-1120")
PII_TEXT = f"I am {PII[0]}, card {PII[1]}, SSN {PII[2]}. Why was I charged twice?"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(topic_prefix=f"t{uuid.uuid4().hex[:10]}", partitions=2, state_dir=tmp_path,
                    kafka_credentials_file=Settings().kafka_credentials_path,
                    audit_checkpoint_records=5, audit_checkpoint_interval_s=1.0)


async def test_every_outcome_is_audited_exactly_once_without_pii(pipeline: Settings) -> None:
    settings = pipeline
    topo = topology(settings)
    injected = []
    for status in (Status.OK, Status.CACHE_HIT, Status.DENIED, Status.FAILED, Status.DEADLINE_EXCEEDED):
        env = new_envelope(PII_TEXT, tenant="acme", settings=settings)
        env.answer = f"Dear {PII[0]}, we refunded card {PII[1]}" if status in (Status.OK, Status.CACHE_HIT) else None
        if status is Status.CACHE_HIT:
            env.cache = CacheResult(outcome="hit", kind="semantic", similarity=0.96)
        env.finish(status, code=status.value, stage="model", message=f"about {PII[2]}")
        env.responded = True
        injected.append(seal_outcome(env, settings))
    # each injected outcome arrives twice (an upstream redelivery); the audit stage keeps one
    await produce_raw(settings, topo.stage("audit"), [encode(e) for e in injected for _ in range(2)])
    await produce_raw(settings, topo.stage("policy"), [b"\x00not json"])  # dead-lettered, no request id
    real = new_envelope(PII_TEXT, tenant="acme", settings=settings)
    expired = new_envelope("too late", tenant="acme", budget_ms=1, settings=settings)
    expired.deadline_at_ns = expired.created_at_ns - 1
    async with TollwayClient(settings) as submitter:
        responses = await submitter.complete_envelopes([real, expired], timeout_s=60)
    assert [r.status for r in responses] == [Status.OK, Status.DEADLINE_EXCEEDED]

    expected = len(injected) + 3
    records = await read_until(settings, topo.audit_log, lambda rs: len(rs) >= expected)
    extra = await read_until(settings, topo.audit_log, lambda rs: len(rs) > expected, timeout_s=2)
    assert len(extra) == expected, "a duplicate audit record reached the topic"
    rows = [orjson.loads(r.value) for r in records]
    by_id = {row["request_id"]: row for row in rows if row["request_id"]}
    assert {e.request_id: by_id[e.request_id]["status"] for e in injected} == \
        {e.request_id: e.outcome.status.value for e in injected if e.outcome}
    assert by_id[real.request_id]["status"] == "ok" and by_id[expired.request_id]["status"] == "deadline_exceeded"
    (letter,) = [row for row in rows if row["source"] == "deadletter"]
    assert letter["status"] == "dead_lettered" and letter["deadletter_source"].startswith(topo.stage("policy"))
    assert by_id[injected[1].request_id]["cache_similarity"] == 0.96

    root = audit_dir(settings)
    on_disk = b"".join(p.read_bytes() for p in root.rglob("seg-*.jsonl"))
    for value in PII:
        assert value.encode() not in on_disk and all(value.encode() not in r.value for r in records)
    report = verify_dir(root, signer_from_settings(settings))
    assert report.ok and report.records == expected, report


async def test_the_checkpoints_topic_witnesses_the_log_and_catches_a_rewrite(
        pipeline: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = pipeline
    topo, signer = topology(settings), signer_from_settings(settings)
    envelopes = [new_envelope(f"question {i}?", tenant="acme", settings=settings) for i in range(7)]
    async with TollwayClient(settings) as submitter:
        await submitter.complete_envelopes(envelopes, timeout_s=60)
    await read_until(settings, topo.audit_checkpoints, lambda messages: sum(
        chain.covered for chain in collect_witness([m.value for m in messages], signer).chains.values()) >= 7)
    witness_values, records = await read_audit_topics(settings)
    witness = collect_witness(witness_values, signer)
    topic_report = verify_topic(records, witness)
    assert topic_report.ok and topic_report.records == 7, topic_report
    root = audit_dir(settings)
    assert verify_dir(root, signer, witness=witness.chains).ok

    # the attacker edits record 4 on disk, recomputes the chain and deletes the checkpoints
    (chain_dir,) = chain_dirs(root)
    lines = [line for seg in segments(chain_dir) for line in seg.read_bytes().splitlines()]
    stored = [parse_line(line)[2] for line in lines]
    stored[4] = stored[4].replace(b'"tenant":"acme"', b'"tenant":"evil"')
    for seg in segments(chain_dir):
        seg.unlink()
    state = ChainState(chain_dir.name)
    (chain_dir / "seg-000000000000.jsonl").write_bytes(b"".join(state.append(r) for r in stored))
    (chain_dir / CHECKPOINTS).unlink()
    (chain,) = verify_dir(root, signer, witness=witness.chains).chains
    assert chain.first_bad_index == 4 and "witness" in chain.reason

    monkeypatch.setenv("TOLLWAY_TOPIC_PREFIX", settings.topic_prefix)
    monkeypatch.setenv("TOLLWAY_STATE_DIR", str(settings.state_dir))
    monkeypatch.setenv("TOLLWAY_KAFKA_CREDENTIALS_FILE", str(settings.kafka_credentials_path))
    get_settings.cache_clear()
    try:
        def tollway(*args: str) -> Result:  # in a thread: the CLI runs its own event loop
            return CliRunner().invoke(app, ["audit", "verify", *args])

        assert (await asyncio.to_thread(tollway, "--topic")).exit_code == 0
        assert (await asyncio.to_thread(tollway, "--dir", str(root))).exit_code == 1
        both = await asyncio.to_thread(tollway, "--topic", "--dir", str(root), "--json")
        assert both.exit_code == 1
        files = orjson.loads(both.stdout)["sources"]["files vs topic"]["chains"][0]
        assert files["first_bad_index"] == 4
    finally:
        get_settings.cache_clear()
