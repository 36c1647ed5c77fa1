"""The learning router's state snapshot: one versioned record per tenant, so a restart replays only the tail.

A snapshot of tenant T holds everything :class:`~workers.routing.online.OnlineRouter` and
:class:`~workers.routing.online.OutcomeJoin` keep for T — the kept observations (the refits read them), both heads'
posterior mean and covariance, λ, the counters, the refit cadence — and the topic offsets it covers (per partition
of the responses and outcomes topics: the next offset not yet applied). Snapshots are written in **rounds**: every
tenant at the same offsets, then a manifest naming the round, its offsets and its tenants
(:data:`MANIFEST_KEY`). Restoring (``restore``) takes the manifest's round: every tenant it names must have a
valid snapshot of that round or a later one, else nothing is restored (a full rebuild). A record is then applied to
a tenant only past that tenant's own offsets.

The encoding: an orjson document whose observation rows are a zlib-compressed float64 block (base64), sealed by a
SHA-256 digest of the rest. An unknown ``version``, another feature set (``columns``), another learner
configuration or a digest that does not match → :class:`SnapshotError`; the caller logs it and rebuilds in full.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections import defaultdict, deque
from dataclasses import asdict, dataclass
from typing import Any, Final

import numpy as np
import orjson

from schemas.envelope import RouteRecord
from workers.routing.online import (
    COLUMN_NAMES,
    LearnerConfig,
    Observation,
    OnlineRouter,
    OutcomeJoin,
    _Head,
    _TenantState,
)

VERSION: Final = 2  # 2: the per kind × tier verdict counts (the probes' decay)
MANIFEST_KEY: Final = "\x00manifest"  # no tenant is named so (control character)
Offsets = dict[str, dict[int, int]]  # topic role ("responses", "outcomes") → partition → next offset


class SnapshotError(ValueError):
    """A snapshot that cannot be used (unknown version, another learner, corrupt): rebuild in full instead."""


def config_digest(config: LearnerConfig) -> str:
    return hashlib.sha256(orjson.dumps(asdict(config))).hexdigest()[:16]


def _seal(doc: dict[str, Any]) -> bytes:
    body = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    return orjson.dumps({"digest": hashlib.sha256(body).hexdigest(), "body": orjson.Fragment(body)})


def _open(raw: bytes) -> dict[str, Any]:
    try:
        outer = orjson.loads(raw)
        body = orjson.dumps(outer["body"], option=orjson.OPT_SORT_KEYS)
        doc = outer["body"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise SnapshotError(f"not a snapshot: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise SnapshotError(f"unknown snapshot version {doc.get('version') if isinstance(doc, dict) else None!r}")
    if hashlib.sha256(body).hexdigest() != outer.get("digest"):
        raise SnapshotError("snapshot digest does not match its content")
    return doc


def _offsets_out(offsets: Offsets) -> dict[str, dict[str, int]]:
    return {name: {str(p): int(o) for p, o in parts.items()} for name, parts in offsets.items()}


def _offsets_in(raw: Any) -> Offsets:
    if not isinstance(raw, dict) or set(raw) != {"responses", "outcomes"}:
        raise SnapshotError("snapshot offsets must name responses and outcomes")
    return {name: {int(p): int(o) for p, o in parts.items()} for name, parts in raw.items()}


def _block(values: list[tuple[float, ...]]) -> str:
    array = np.asarray(values, dtype="<f8").reshape(len(values), len(COLUMN_NAMES))
    return base64.b64encode(zlib.compress(array.tobytes(), 6)).decode()


def _unblock(text: str, rows: int) -> np.ndarray[Any, np.dtype[np.float64]]:
    array = np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype="<f8")
    if array.size != rows * len(COLUMN_NAMES):
        raise SnapshotError("observation block has the wrong size")
    return array.reshape(rows, len(COLUMN_NAMES))


def _head_out(head: _Head) -> dict[str, Any]:
    return {"mean": head.mean.tolist(), "cov": head.cov.tolist()}


def _head_in(raw: dict[str, Any]) -> _Head:
    d = len(COLUMN_NAMES)
    mean = np.asarray(raw["mean"], dtype=np.float64)
    cov = np.asarray(raw["cov"], dtype=np.float64)
    if mean.shape != (d,) or cov.shape != (d, d) or not (np.isfinite(mean).all() and np.isfinite(cov).all()):
        raise SnapshotError("a head has the wrong shape or non-finite values")
    return _Head(mean, cov)


def encode_tenant(router: OnlineRouter, join: OutcomeJoin, tenant: str, *, round_id: int,
                  offsets: Offsets) -> bytes:
    """Tenant ``tenant``'s learner and pending outcome joins, covering ``offsets``."""
    state = router._tenants.get(tenant)
    doc: dict[str, Any] = {"version": VERSION, "kind": "tenant", "tenant": tenant, "round": round_id,
                           "offsets": _offsets_out(offsets), "columns": list(COLUMN_NAMES),
                           "config": config_digest(router.config), "state": None,
                           "waiting": [[task, [r.model_dump(mode="json") for r in records]]
                                       for (t, task), records in join.waiting.items() if t == tenant]}
    if state is not None:
        obs = list(state.observations)
        doc["state"] = {
            "rows": _block([o.row for o in obs]) if obs else "",
            "n": len(obs),
            "kinds": [o.kind for o in obs],
            "meta": [[o.served_rank, int(o.failed), int(o.probe), o.prior_medium, o.prior_large] for o in obs],
            "medium": _head_out(state.medium), "large": _head_out(state.large),
            "since_fit": state.since_fit, "per_kind": dict(state.per_kind),
            "tried": dict(state.tried), "log_lambda": state.log_lambda,
            "failures": state.failures, "successes": state.successes,
            "large_served": state.large_served, "large_failed": state.large_failed,
        }
    return _seal(doc)


def encode_manifest(round_id: int, offsets: Offsets, tenants: list[str]) -> bytes:
    return _seal({"version": VERSION, "kind": "manifest", "round": round_id, "offsets": _offsets_out(offsets),
                  "tenants": sorted(tenants)})


@dataclass(frozen=True)
class TenantSnapshot:
    tenant: str
    round_id: int
    offsets: Offsets
    state: _TenantState | None
    waiting: list[tuple[str, list[RouteRecord]]]


@dataclass(frozen=True)
class Manifest:
    round_id: int
    offsets: Offsets
    tenants: tuple[str, ...]


def decode_manifest(raw: bytes) -> Manifest:
    doc = _open(raw)
    try:
        if doc["kind"] != "manifest":
            raise SnapshotError("not a manifest")
        return Manifest(int(doc["round"]), _offsets_in(doc["offsets"]), tuple(str(t) for t in doc["tenants"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"invalid manifest: {exc}") from exc


def decode_tenant(raw: bytes, config: LearnerConfig) -> TenantSnapshot:
    doc = _open(raw)
    try:
        if doc["kind"] != "tenant":
            raise SnapshotError("not a tenant snapshot")
        if doc["columns"] != list(COLUMN_NAMES):
            raise SnapshotError("snapshot of another feature set")
        if doc["config"] != config_digest(config):
            raise SnapshotError("snapshot of another learner configuration")
        tenant = str(doc["tenant"])
        waiting = [(str(task), [RouteRecord.model_validate(r) for r in records]) for task, records in doc["waiting"]]
        state = None
        if doc["state"] is not None:
            s = doc["state"]
            n = int(s["n"])
            rows = _unblock(s["rows"], n) if n else np.zeros((0, len(COLUMN_NAMES)))
            if len(s["kinds"]) != n or len(s["meta"]) != n or n > config.window:
                raise SnapshotError("observation columns disagree")
            observations: deque[Observation] = deque(maxlen=config.window)
            for row, kind, (rank, failed, probe, pm, pl) in zip(rows, s["kinds"], s["meta"], strict=True):
                observations.append(Observation(tenant, str(kind), tuple(float(v) for v in row), int(rank),
                                                bool(failed), bool(probe), float(pm), float(pl)))
            per_kind: defaultdict[str, int] = defaultdict(int, {str(k): int(v) for k, v in s["per_kind"].items()})
            tried: defaultdict[str, int] = defaultdict(int, {str(k): int(v) for k, v in s["tried"].items()})
            state = _TenantState(observations, _head_in(s["medium"]), _head_in(s["large"]), int(s["since_fit"]),
                                 per_kind, tried, float(s["log_lambda"]), int(s["failures"]), int(s["successes"]),
                                 int(s["large_served"]), int(s["large_failed"]))
        return TenantSnapshot(tenant, int(doc["round"]), _offsets_in(doc["offsets"]), state, waiting)
    except SnapshotError:
        raise
    except (KeyError, TypeError, ValueError, zlib.error, AttributeError) as exc:
        raise SnapshotError(f"invalid tenant snapshot: {exc}") from exc


def covers(later: Offsets, earlier: Offsets) -> bool:
    """Every offset of ``later`` is at or past ``earlier``'s."""
    return all(later.get(name, {}).get(p, 0) >= o for name, parts in earlier.items() for p, o in parts.items())


def restore(router: OnlineRouter, join: OutcomeJoin, manifest: Manifest,
            tenants: dict[str, TenantSnapshot]) -> dict[str, Offsets]:
    """Load a round into ``router`` and ``join`` (both empty). Returns each restored tenant's own offsets (a
    record of that tenant is applied only past them); raises :class:`SnapshotError` when the round is incomplete."""
    for name in manifest.tenants:
        snap = tenants.get(name)
        if snap is None or snap.round_id < manifest.round_id or not covers(snap.offsets, manifest.offsets):
            raise SnapshotError(f"tenant {name!r} of round {manifest.round_id} has no snapshot of that round")
    floors: dict[str, Offsets] = {}
    for name, snap in tenants.items():
        if snap.round_id < manifest.round_id or not covers(snap.offsets, manifest.offsets):
            continue  # an older round's tenant not in the manifest: its state is in no snapshot we use
        if snap.state is not None:
            router._tenants[name] = snap.state
        for task, records in snap.waiting:
            join.waiting[(name, task)] = list(records)
        floors[name] = snap.offsets
    return floors


__all__ = ["MANIFEST_KEY", "VERSION", "Manifest", "Offsets", "SnapshotError", "TenantSnapshot", "covers",
           "decode_manifest", "decode_tenant", "encode_manifest", "encode_tenant", "restore"]
