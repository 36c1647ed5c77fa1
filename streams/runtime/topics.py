"""Topic topology: names, lanes and explicit configs, created on start.

    tollway.ingress[.batch]          producers publish requests here; the first stage of the route consumes it
    tollway.<stage>[.batch]          one topic per stage and lane (batch tier travels on the .batch lane)
    tollway.responses                one response per terminal outcome, keyed by request_id
    tollway.audit.log                tamper-evident audit records (long retention)
    tollway.audit.checkpoints        compacted: signed audit checkpoints with their leaves (the log's second witness)
    tollway.deadletter               what no stage could process, with the reason and the original bytes
    tollway.policy.docs              compacted: the current policy document
    tollway.index.chunks             compacted: retrieval chunks per tenant
    tollway.outcomes                 task outcomes (resolved/failed) keyed by task_id: the ledger's cost per outcome
    tollway.tools.approvals          compacted: held tool calls and `tollway approve|deny` decisions, by approval id
    tollway.routing.snapshots        compacted: the learning router's state per tenant, with the offsets it covers
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from functools import cached_property

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.protocol.offset import OffsetRequest

from schemas.envelope import STAGES, Tier
from schemas.errors import ServiceUnavailable
from streams.settings import Settings

LANES = ("", ".batch")


class LaneNames(dict[tuple[str, str], str]):
    """``lanes[stage, tier]``: the topic of ``stage`` in ``tier``'s lane (``<prefix>.<stage>``, ``.batch`` for the
    batch tier), each name formatted once and then looked up (the runner asks at every forward). At most one entry
    per stage and tier a caller names (a ``Tier`` and its value are the same key)."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def __missing__(self, key: tuple[str, str]) -> str:
        stage, tier = key
        name = self[key] = f"{self.prefix}.{stage}{'.batch' if tier == Tier.BATCH else ''}"
        return name


@dataclass(frozen=True)
class Topology:
    """Every topic name of one prefix, each formatted once per topology (the names are attributes after their first
    use, the stage lanes a :class:`LaneNames`): the runner, the chain, the ingress, the SDK and the publisher ask
    here rather than keep copies."""

    prefix: str
    lanes: LaneNames = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lanes", LaneNames(self.prefix))

    def stage(self, stage: str, tier: Tier | str = Tier.STANDARD) -> str:
        return self.lanes[stage, tier]

    def ingress(self, tier: Tier | str = Tier.STANDARD) -> str:
        return self.lanes["ingress", tier]

    def stage_lanes(self, stage: str) -> tuple[str, str]:
        """(interactive lane, batch lane) for a stage."""
        return self.lanes[stage, Tier.STANDARD], self.lanes[stage, Tier.BATCH]

    @cached_property
    def responses(self) -> str:
        return f"{self.prefix}.responses"

    @cached_property
    def replies_prefix(self) -> str:
        """Per-client reply topics (``request.reply_to``) must start with this."""
        return f"{self.prefix}.replies."

    @cached_property
    def audit_log(self) -> str:
        return f"{self.prefix}.audit.log"

    @cached_property
    def audit_checkpoints(self) -> str:
        return f"{self.prefix}.audit.checkpoints"

    @cached_property
    def deadletter(self) -> str:
        return f"{self.prefix}.deadletter"

    @cached_property
    def policy(self) -> str:
        return f"{self.prefix}.policy.docs"

    @cached_property
    def index(self) -> str:
        return f"{self.prefix}.index.chunks"

    @cached_property
    def outcomes(self) -> str:
        return f"{self.prefix}.outcomes"

    @cached_property
    def tool_approvals(self) -> str:
        return f"{self.prefix}.tools.approvals"

    @cached_property
    def routing_snapshots(self) -> str:
        return f"{self.prefix}.routing.snapshots"

    def group(self, stage: str) -> str:
        return f"{self.prefix}.{stage}"

    def all_topics(self, settings: Settings) -> list[NewTopic]:
        partitions, rf = settings.partitions, settings.replication_factor
        max_bytes = str(settings.max_message_bytes * 2)
        # Every topic: a write (acks=all) is acknowledged once this many replicas have it.
        isr = {"min.insync.replicas": str(settings.min_insync_replicas)}
        work = {"cleanup.policy": "delete", "retention.ms": str(7 * 24 * 3600 * 1000), "max.message.bytes": max_bytes,
                **isr}
        topics = [
            NewTopic(name, partitions, rf, topic_configs=dict(work))
            for stage in ("ingress", *STAGES)
            for name in self.stage_lanes(stage)
        ]
        topics += [
            NewTopic(self.responses, partitions, rf, topic_configs=dict(work)),
            NewTopic(self.deadletter, partitions, rf,
                     topic_configs={**work, "retention.ms": str(30 * 24 * 3600 * 1000)}),
            # Audit records are evidence: kept until an operator decides otherwise.
            NewTopic(self.audit_log, partitions, rf, topic_configs={"cleanup.policy": "delete", "retention.ms": "-1",
                                                                    "max.message.bytes": max_bytes, **isr}),
            # One key per (chain, tree size, first leaf): compaction only drops a checkpoint published twice, so the
            # topic keeps every checkpoint, outside the disk an attacker would rewrite.
            NewTopic(self.audit_checkpoints, 1, rf, topic_configs={"cleanup.policy": "compact", "retention.ms": "-1",
                                                                   "max.message.bytes": max_bytes, **isr}),
            NewTopic(self.policy, 1, rf, topic_configs={"cleanup.policy": "compact", **isr}),
            NewTopic(self.index, partitions, rf, topic_configs={"cleanup.policy": "compact",
                                                                "max.message.bytes": max_bytes, **isr}),
            # Outcomes: co-partitioned with responses (same count) for the ledger's Faust app; kept like audit.
            NewTopic(self.outcomes, partitions, rf, topic_configs={"cleanup.policy": "delete", "retention.ms": "-1",
                                                                   **isr}),
            # Held tool calls and their decisions (workers/tools/approvals.py): each approval's last word is kept.
            NewTopic(self.tool_approvals, 1, rf, topic_configs={"cleanup.policy": "compact", **isr}),
            # The learning router's snapshots (streams/followers/routing.py): the last round per tenant is kept.
            NewTopic(self.routing_snapshots, 1, rf, topic_configs={
                "cleanup.policy": "compact", "retention.ms": "-1",
                "max.message.bytes": str(settings.router_snapshot_max_bytes), **isr}),
        ]
        return topics


def topology(settings: Settings) -> Topology:
    return Topology(settings.topic_prefix)


async def delete_prefix_topics(settings: Settings) -> list[str]:
    """Delete every topic of ``settings.topic_prefix`` (``<prefix>.…`` and the Faust ledger's ``<prefix>-…``): the
    throwaway prefixes of tests and benchmarks, so a shared broker is left as it was found. Returns the names."""
    from streams.runtime.connections import new_admin, start

    admin = new_admin(settings)
    await start(admin, settings, "topic admin")
    try:
        prefix = settings.topic_prefix
        doomed = [t for t in await admin.list_topics() if t.startswith((f"{prefix}.", f"{prefix}-"))]
        if doomed:
            await admin.delete_topics(doomed)
        return doomed
    finally:
        await admin.close()


async def ensure_topics(settings: Settings, *, timeout_s: float = 30.0) -> list[str]:
    """Create every tollway topic that does not exist yet; returns the names created.

    On a broker with authentication the prefix's ACLs (``streams/runtime/acls.py``) are granted first, so a worker
    that sees the topics exist can use them at once.
    """
    from streams.runtime import acls
    from streams.runtime.connections import kafka_security, new_admin, start

    admin = new_admin(settings)
    await start(admin, settings, "topic admin")
    try:
        wanted = topology(settings).all_topics(settings)
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t.name not in existing]
        if missing and kafka_security(settings, acls.ADMIN):
            await acls.grant_prefix(admin, settings.topic_prefix)
        if not missing:
            return []
        created = [t.name for t in missing]
        try:
            response = await admin.create_topics(missing)
        except TopicAlreadyExistsError:
            created = []  # another worker created them first (maybe a moment ago: still wait for their leaders)
        else:
            failed = [(name, code, msg) for name, code, msg in getattr(response, "topic_errors", [])
                      if code not in (0, TopicAlreadyExistsError.errno)]
            if failed:
                raise ServiceUnavailable(f"Kafka refused to create topics: {failed}")
        await _wait_for_leaders(admin, [t.name for t in missing], timeout_s)
        return created
    finally:
        await admin.close()


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: list[str], timeout_s: float) -> None:
    """Return once every partition of the new topics ``names`` answers at its leader.

    The metadata names a leader before that broker serves the partition: producers and consumers starting in
    between get NotLeaderForPartition (retried, but logged as errors for a second or so). A ListOffsets request to
    each leader — what a consumer sends first — answers without an error only once it does.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        described = await admin.describe_topics(names)
        if all(t["error_code"] == 0 and t["partitions"] and all(p["leader"] >= 0 for p in t["partitions"])
               for t in described):
            by_leader: dict[int, dict[str, list[tuple[int, int]]]] = {}
            for topic in described:
                for partition in topic["partitions"]:
                    by_leader.setdefault(partition["leader"], {}).setdefault(topic["topic"], []).append(
                        (partition["partition"], LATEST))
            if all([await _serves(admin, leader, topics) for leader, topics in by_leader.items()]):
                return
        await asyncio.sleep(0.05)
    raise ServiceUnavailable(f"topics {names} have no leader after {timeout_s:.0f} s")


LATEST = -1  # ListOffsets: the end offset


async def _serves(admin: AIOKafkaAdminClient, leader: int, topics: dict[str, list[tuple[int, int]]]) -> bool:
    """Whether ``leader`` answers ListOffsets for every partition of ``topics`` without an error."""
    request = OffsetRequest(-1, 0, list(topics.items()))
    try:
        # aiokafka's admin has no public ListOffsets; its own helper sends to one node once that node is ready.
        response = await admin._send_request_to_node(leader, request)
    except KafkaError:
        return False
    return all(error_code == 0 for _topic, partitions in response.topics for _p, error_code, *_ in partitions)
