"""Who may read and write which tollway topic: the broker's ACLs for one topic prefix, as data.

Zero trust, layer 1. With ``TOLLWAY_KAFKA_AUTH=scram`` (infra/services.sh) the broker runs StandardAuthorizer with
``allow.everyone.if.no.acl.found=false``: a principal can touch nothing it has no ACL for. Topic names start with a
prefix that varies (``tollway`` in production, ``t<hex>`` per test), and Kafka's PREFIXED patterns only match the
leading characters of a name, so the ACLs are granted per prefix, in one CreateAcls request, by whoever creates that
prefix's topics (the admin principal):

    admin = new_admin(settings, role="admin")    # streams/runtime/connections.py
    await admin.start()
    await grant_prefix(admin, "t1234abcd")         # ~150 bindings, one request

or ``infra/services.sh acl PREFIX`` / ``python -m streams.runtime.acls grant PREFIX``. ``ensure_topics`` grants the
ACLs of the prefix whose topics it creates.

Stage topics are granted LITERALLY, never as prefixes: ``<p>.policy`` as a prefix would also match
``<p>.policy.docs`` and ``<p>.audit`` would match ``<p>.audit.log``.

aiokafka (0.12-0.14) has no public create_acls, so the CreateAcls/DescribeAcls/DeleteAcls requests it already defines
are sent through the admin client's connection.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from schemas.envelope import STAGES

LANES = ("", ".batch")

# Kafka's wire codes (org.apache.kafka.common.resource / acl).
TOPIC, GROUP, CLUSTER = 2, 3, 4
ANY, MATCH, LITERAL, PREFIXED = 1, 2, 3, 4  # pattern types (ANY and MATCH are filters only)
READ, WRITE, CREATE, DESCRIBE, DESCRIBE_CONFIGS = 3, 4, 5, 8, 10
ALLOW = 3

RESOURCE_NAMES = {TOPIC: "TOPIC", GROUP: "GROUP", CLUSTER: "CLUSTER"}
PATTERN_NAMES = {LITERAL: "LITERAL", PREFIXED: "PREFIXED"}
OPERATION_NAMES = {READ: "READ", WRITE: "WRITE", CREATE: "CREATE", DESCRIBE: "DESCRIBE",
                   DESCRIBE_CONFIGS: "DESCRIBE_CONFIGS"}

PRODUCER = "producer"
POLICY_ADMIN = "policy-admin"
LEDGER = "ledger"
AUDITOR = "auditor"  # compliance readers: `tollway audit tail|verify --topic`
BACKFILL = "backfill"  # `tollway backfill --resume` reads what it already published
ADMIN = "admin"  # super user: needs no ACL
STAGE_PRINCIPALS = tuple(f"stage-{stage}" for stage in STAGES)
# A process that runs several stages (`tollway worker all`, a co-located chain) connects as this principal: the
# union of the stage principals' rights (one process, one credential).
ALL_STAGES = "stages"
PRINCIPALS = (PRODUCER, *STAGE_PRINCIPALS, ALL_STAGES, POLICY_ADMIN, LEDGER, AUDITOR, BACKFILL)


def stage_principal(stages: Iterable[str]) -> str:
    names = list(stages)
    return f"stage-{names[0]}" if len(names) == 1 else ALL_STAGES


@dataclass(frozen=True, order=True)
class Rule:
    """``principal`` may do ``operations`` on the ``resource`` named ``name`` (``{p}`` is the topic prefix)."""

    principal: str
    resource: int
    pattern: int
    name: str
    operations: tuple[int, ...]


def _lanes(p: str, topic: str) -> list[str]:
    return [f"{p}.{topic}{lane}" for lane in LANES]


def rules(p: str = "{p}") -> list[Rule]:
    """The ACL table of prefix ``p`` (with the default, the template itself)."""
    out: list[Rule] = []

    def allow(principal: str, names: Iterable[str], *ops: int, resource: int = TOPIC, pattern: int = LITERAL) -> None:
        out.extend(Rule(principal, resource, pattern, name, tuple(ops)) for name in names)

    for principal in PRINCIPALS:
        # Topic names are not secret, and `ensure_topics` must see that the topics exist (metadata and
        # list_topics only show what a principal may DESCRIBE) rather than try to create them.
        allow(principal, [f"{p}."], DESCRIBE, pattern=PREFIXED)
        allow(principal, [f"{p}.policy.docs", f"{p}.index.chunks"], READ)

    # SDK, CLI, HTTP ingress, backfill: requests in, replies and outcomes.
    allow(PRODUCER, [*_lanes(p, "ingress"), f"{p}.outcomes"], WRITE)
    allow(PRODUCER, [f"{p}.responses"], READ)
    allow(PRODUCER, [f"{p}.replies."], READ, WRITE, CREATE, pattern=PREFIXED)  # the SDK creates its reply topic

    for i, stage in enumerate(STAGES):
        for principal in (f"stage-{stage}", ALL_STAGES):
            allow(principal, _lanes(p, stage) + (_lanes(p, "ingress") if i == 0 else []), READ)
            # Forward: any later stage of retrieval→policy→cache→model→postprocess→audit (routes may skip);
            # retrieval and policy may also hand to each other (policy first when the embedder is remote).
            later = [name for nxt in STAGES[i + 1:] for name in _lanes(p, nxt)]
            # The tools stage hands each request back to the model (an agent loop: model → tools → model → …).
            back = {"retrieval": _lanes(p, "policy"), "policy": _lanes(p, "retrieval"),
                    "tools": _lanes(p, "model")}.get(stage, [])
            allow(principal, [*later, *back], WRITE)
            allow(principal, [f"{p}.responses", f"{p}.deadletter"], WRITE)
            allow(principal, [f"{p}.replies."], WRITE, pattern=PREFIXED)
            # The stage's consumer group, and any group under it (audit's `<p>.audit.deadletter`).
            allow(principal, [f"{p}.{stage}"], READ, resource=GROUP, pattern=PREFIXED)
    allow(ALL_STAGES, [f"{p}.chain."], READ, resource=GROUP, pattern=PREFIXED)  # co-located chains' groups

    # The learning router (TOLLWAY_ROUTER_LEARNING): model workers rebuild it from responses and task outcomes.
    allow("stage-model", [f"{p}.responses", f"{p}.outcomes"], READ)
    allow(ALL_STAGES, [f"{p}.responses", f"{p}.outcomes"], READ)
    # … and snapshot its state (only the process that runs the follower: the model stage, alone or in a chain).
    allow("stage-model", [f"{p}.routing.snapshots"], READ, WRITE)
    allow(ALL_STAGES, [f"{p}.routing.snapshots"], READ, WRITE)

    for audit in ("stage-audit", ALL_STAGES):
        allow(audit, [f"{p}.audit.log", f"{p}.audit.checkpoints"], READ, WRITE)
        allow(audit, [f"{p}.deadletter"], READ)

    # The operator's principal: `tollway policy apply` and `tollway index add|rm`.
    allow(POLICY_ADMIN, [f"{p}.policy.docs", f"{p}.index.chunks"], WRITE)
    # Held tool calls: the tools stage asks (pending) and follows the decisions `tollway approve|deny` write.
    for principal in ("stage-tools", ALL_STAGES, POLICY_ADMIN):
        allow(principal, [f"{p}.tools.approvals"], READ, WRITE)

    allow(LEDGER, [f"{p}.responses", f"{p}.outcomes", f"{p}.audit.log"], READ)
    allow(AUDITOR, [f"{p}.audit.log", f"{p}.audit.checkpoints"], READ)
    # Ingress records are unredacted prompts of every tenant: only the backfill's resume scan may read them back.
    allow(BACKFILL, _lanes(p, "ingress"), READ)
    # The Faust app (id `<p>-ledger`) creates and owns its changelog and assignor topics and its group.
    allow(LEDGER, [f"{p}-ledger", f"{p}.ledger"], READ, WRITE, CREATE, DESCRIBE_CONFIGS, pattern=PREFIXED)
    allow(LEDGER, [f"{p}-ledger", f"{p}.ledger"], READ, resource=GROUP, pattern=PREFIXED)
    return out


Binding = tuple[int, str, int, str, str, int, int]  # resource, name, pattern, principal, host, operation, permission


def bindings(prefix: str) -> list[Binding]:
    """One (resource, name, pattern, principal, host, operation, permission) per operation of every rule."""
    if not prefix or any(c in prefix for c in "{} "):
        raise ValueError(f"bad topic prefix {prefix!r}")
    return [(r.resource, r.name, r.pattern, f"User:{r.principal}", "*", op, ALLOW)
            for r in rules(prefix) for op in r.operations]


# ---- the requests (aiokafka defines them but has no public method for them) ----------------------------------------

def _requests() -> Any:
    from aiokafka.protocol import admin as proto
    try:  # aiokafka >= 0.13: a Request builds the struct of the version negotiated with the broker
        from aiokafka.protocol.api import Request
    except ImportError:  # pragma: no cover - older aiokafka sends structs as they are
        Request = None
    return proto, Request


def _request(api: str, items: list[Any]) -> Any:
    """A v1 CreateAcls/DeleteAcls request with all ``items`` (aiokafka's own builders take one ACL each)."""
    proto, request_base = _requests()
    struct = getattr(proto, f"{api}Request_v1")
    if request_base is None or not hasattr(request_base, "prepare"):
        return struct(items)  # pragma: no cover

    class Batched(request_base[struct]):  # type: ignore[valid-type,misc]
        API_KEY = struct.API_KEY

        def build(self, request_struct_class: Any) -> Any:
            return request_struct_class(items)

    return Batched()


def _describe_request(resource: int = 1, name: str | None = None, pattern: int = ANY) -> Any:
    proto, request_base = _requests()
    args = (resource, name, pattern, None, None, 1, 1)  # any principal, host, operation and permission
    if request_base is None or not hasattr(request_base, "prepare"):
        return proto.DescribeAclsRequest_v1(*args)  # pragma: no cover
    return proto.DescribeAclsRequest(*args)


async def _send(admin: Any, request: Any) -> Any:
    return await admin._send_request(request)


def _errors(response: Any, field: str) -> list[tuple[int, str]]:
    return [(code, msg) for code, msg, *_ in getattr(response, field) if code != 0]


async def describe(admin: Any, resource: int = 1, name: str | None = None, pattern: int = ANY) -> set[Binding]:
    """The ACLs the answering broker holds (its authorizer's view, which is what enforcement uses); by default all."""
    response = await _send(admin, _describe_request(resource, name, pattern))
    if response.error_code:
        raise RuntimeError(f"DescribeAcls failed: {response.error_code} {response.error_message}")
    return {(res_type, name, pattern, principal, host, op, perm)
            for res_type, name, pattern, acls in response.resources
            for principal, host, op, perm in acls}


async def grant_prefix(admin: Any, prefix: str, *, wait_s: float = 30.0) -> int:
    """Create every ACL of ``prefix`` (idempotent: existing ones stay) in one request; returns how many bindings.

    ``admin`` is a started AIOKafkaAdminClient authenticated as the super user. CreateAcls goes through the KRaft
    controller; the broker enforces an ACL once it has applied that metadata record, which can be a few ms after the
    response (measured: 5-25 ms; over 10 s once on a freshly started broker at load 13, so the default waits 30 s):
    with ``wait_s`` the call returns only when the broker has them. The controller
    writes one CreateAcls as one atomic batch, so the ACLs of one topic name stand for all (and the check costs the
    same however many prefixes the broker has ACLs for).
    """
    wanted = bindings(prefix)
    response = await _send(admin, _request("CreateAcls", wanted))
    failed = _errors(response, "creation_responses")
    if failed:
        raise RuntimeError(f"CreateAcls for prefix {prefix!r} refused {len(failed)} of {len(wanted)}: {failed[:3]}")
    if wait_s > 0:
        probe = f"{prefix}.outcomes"
        sample = {b for b in wanted if b[0] == TOPIC and b[1] == probe and b[2] == LITERAL}
        deadline = time.monotonic() + wait_s
        while not sample <= await describe(admin, TOPIC, probe, LITERAL):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the broker did not apply the ACLs of prefix {prefix!r} within {wait_s} s "
                                   "(a broker still starting or starved of CPU; the grant is idempotent: start again)")
            await asyncio.sleep(0.02)
    return len(wanted)


async def revoke_prefix(admin: Any, prefix: str) -> int:
    """Delete every ACL of ``prefix`` (tests that drop their topics should drop these too); returns how many."""
    filters = [(res, name, pattern, principal, host, op, perm)
               for res, name, pattern, principal, host, op, perm in bindings(prefix)]
    response = await _send(admin, _request("DeleteAcls", filters))
    failed = _errors(response, "filter_responses")
    if failed:
        raise RuntimeError(f"DeleteAcls for prefix {prefix!r} failed: {failed[:3]}")
    return sum(len(matches) for _code, _msg, matches in response.filter_responses)


def table(prefix: str = "{p}") -> str:
    """The ACL table as text, one line per rule."""
    lines = []
    for r in rules(prefix):
        ops = ",".join(OPERATION_NAMES[o] for o in r.operations)
        lines.append(f"{r.principal:<18} {RESOURCE_NAMES[r.resource]:<6} {PATTERN_NAMES[r.pattern]:<9} "
                     f"{r.name:<26} {ops}")
    return "\n".join(lines)


async def _main(argv: list[str]) -> int:
    usage = "usage: python -m streams.runtime.acls grant|revoke|table PREFIX..."
    if len(argv) < 2 or argv[0] not in ("grant", "revoke", "table"):
        print(usage, file=sys.stderr)
        return 2
    if argv[0] == "table":
        for prefix in argv[1:]:
            print(table(prefix))
        return 0
    from streams.runtime.connections import new_admin, start
    from streams.settings import load_settings

    settings = load_settings()
    admin = new_admin(settings, role=ADMIN)
    await start(admin, settings, "ACL admin")
    try:
        for prefix in argv[1:]:
            started = time.perf_counter()
            if argv[0] == "grant":
                count = await grant_prefix(admin, prefix)
                print(f"granted {count} ACLs for prefix {prefix} in {1000 * (time.perf_counter() - started):.0f} ms")
            else:
                count = await revoke_prefix(admin, prefix)
                print(f"revoked {count} ACLs of prefix {prefix} in {1000 * (time.perf_counter() - started):.0f} ms")
    finally:
        await admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(_main(sys.argv[1:])))
