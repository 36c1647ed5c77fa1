"""The learning router's snapshot: a round trip decides identically; a bad snapshot is refused (full rebuild)."""

from __future__ import annotations

import random

import orjson
import pytest

from schemas.envelope import RouteRecord, Status
from schemas.response import Response
from workers.routing.features import extract
from workers.routing.online import LearnerConfig, Observation, OnlineRouter, OutcomeJoin, design_row, task_kind
from workers.routing.snapshot import (
    Offsets,
    SnapshotError,
    decode_manifest,
    decode_tenant,
    encode_manifest,
    encode_tenant,
    restore,
)

PROMPTS = ["capital of Peru?", "hello there", "Summarise this paragraph in one line: the cat sat on the mat.",
           "Write a Python function that parses ISO dates and handle time zones.",
           "Prove that there are infinitely many primes of the form 4k+3, and derive a bound.",
           "Plan a migration of a 252-table database with zero downtime; list steps, risks, rollback.",
           "What is 17 * 23?", "Translate 'good morning' to French."]
OFFSETS: Offsets = {"responses": {0: 40, 1: 37}, "outcomes": {0: 12, 1: 9}}


def learnt(seed: int = 7, n: int = 400) -> tuple[OnlineRouter, OutcomeJoin]:
    rng = random.Random(seed)
    router, join = OnlineRouter(), OutcomeJoin()
    for i in range(n):
        prompt = rng.choice(PROMPTS)
        f = extract(prompt)
        kind = task_kind(f)
        tenant = rng.choice(["acme", "globex"])
        served = rng.randrange(3)
        router.observe(Observation(tenant, kind, tuple(design_row(f, kind)), served, rng.random() < 0.3,
                                   rng.random() < 0.1, rng.uniform(-1, 1), 0.0))
        if i % 50 == 0:  # a response waiting for its task's outcome
            join.on_response(Response(request_id=f"r{i}", tenant=tenant, status=Status.OK, task_id=f"t{i}",
                                      route=RouteRecord(kind=kind, features=list(f.values), tier="small")))
    return router, join


def decisions(router: OnlineRouter) -> list[object]:
    return [router.decide(extract(p), tenant, f"req-{i}") for i, p in enumerate(PROMPTS * 3)
            for tenant in ("acme", "globex", "initech")]


def round_trip(router: OnlineRouter, join: OutcomeJoin) -> tuple[OnlineRouter, OutcomeJoin, dict[str, Offsets]]:
    tenants = sorted({*router._tenants, *(t for t, _ in join.waiting)})
    raws = {t: encode_tenant(router, join, t, round_id=3, offsets=OFFSETS) for t in tenants}
    manifest = decode_manifest(encode_manifest(3, OFFSETS, tenants))
    again, join2 = OnlineRouter(), OutcomeJoin()
    floors = restore(again, join2, manifest, {t: decode_tenant(raw, again.config) for t, raw in raws.items()})
    return again, join2, floors


def test_a_restored_router_decides_as_the_original_and_keeps_learning_the_same() -> None:
    router, join = learnt()
    again, join2, floors = round_trip(router, join)
    assert decisions(again) == decisions(router)
    assert all(again._tenants[t].tried == state.tried and state.tried for t, state in router._tenants.items())
    assert floors == {"acme": OFFSETS, "globex": OFFSETS}
    assert join2.waiting == join.waiting
    more = learnt(seed=8, n=23)[0]  # the same further observations (mid-refit cadence) on both
    for state in more._tenants.values():
        for obs in state.observations:
            router.observe(obs)
            again.observe(obs)
    assert decisions(again) == decisions(router)


def test_an_unknown_version_a_corrupt_snapshot_or_another_learner_is_refused() -> None:
    router, join = learnt(n=60)
    raw = encode_tenant(router, join, "acme", round_id=1, offsets=OFFSETS)
    doc = orjson.loads(raw)
    doc["body"]["version"] = 99
    with pytest.raises(SnapshotError, match="version"):
        decode_tenant(orjson.dumps(doc), router.config)
    doc = orjson.loads(raw)
    doc["body"]["state"]["log_lambda"] += 1.0  # tampered: the digest no longer matches
    with pytest.raises(SnapshotError, match="digest"):
        decode_tenant(orjson.dumps(doc), router.config)
    for bad in (b"", b"not json", raw[: len(raw) // 2], b'{"digest": "x", "body": 3}'):
        with pytest.raises(SnapshotError):
            decode_tenant(bad, router.config)
    with pytest.raises(SnapshotError, match="configuration"):
        decode_tenant(raw, LearnerConfig(refit_every=7))


def test_an_incomplete_round_restores_nothing() -> None:
    router, join = learnt(n=60)
    manifest = decode_manifest(encode_manifest(2, OFFSETS, ["acme", "globex"]))
    only_acme = {"acme": decode_tenant(encode_tenant(router, join, "acme", round_id=2, offsets=OFFSETS),
                                       router.config)}
    with pytest.raises(SnapshotError, match="globex"):
        restore(OnlineRouter(), OutcomeJoin(), manifest, only_acme)
    older = {t: decode_tenant(encode_tenant(router, join, t, round_id=1, offsets=OFFSETS), router.config)
             for t in ("acme", "globex")}
    with pytest.raises(SnapshotError):
        restore(OnlineRouter(), OutcomeJoin(), manifest, older)
