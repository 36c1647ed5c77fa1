"""Smoke test of the broker's authentication and ACLs (TOLLWAY_KAFKA_AUTH=scram), against a running broker.

    TOLLWAY_BOOTSTRAP_SERVERS=127.0.0.1:9092 python infra/acl_smoke.py [--rotate] [--matrix] [--bench-plain HOST:PORT]

Creates the topics of a fresh prefix ``s<hex>`` as admin, grants its ACLs (infra/kafka_acls.py) and checks:

* ``producer`` writes ``<p>.ingress`` and is refused (TopicAuthorizationFailedError) on ``<p>.model``,
  ``<p>.audit.log`` and ``<p>.policy.docs``; its idempotent producer still works after the refusals;
* ``stage-cache`` reads ``<p>.cache`` in its group and writes ``<p>.model``, and is refused on ``<p>.audit.log``,
  ``<p>.policy`` (an earlier stage) and reading ``<p>.model``;
* a wrong password is refused at connect, and so is a PLAINTEXT connection without SASL;
* ``--rotate``: ``infra/services.sh rotate-credentials producer`` keeps connected clients up, refuses the old
  password on new connections and takes the new one (same environment as the broker's ``services.sh up``);
* ``--matrix``: every principal's WRITE on every topic of the prefix matches the ACL table;
* ``--bench-plain``: produce→consume round trips (100 messages) over SASL here and over PLAINTEXT on that broker
  (start one with TOLLWAY_KAFKA_AUTH=none on other ports), p50/p99, plus connect times.

Needs only aiokafka. Exit status 0 when every check passed; the prefix's topics and ACLs are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaError,
    TopicAuthorizationFailedError,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kafka_acls

BOOTSTRAP = os.environ.get("TOLLWAY_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
REFUSED = (TopicAuthorizationFailedError,)
SERVICES = str(Path(__file__).resolve().parent / "services.sh")

results: list[tuple[bool, str]] = []


def check(ok: bool, what: str) -> None:
    results.append((ok, what))
    print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)


def kw(principal: str, bootstrap: str = BOOTSTRAP) -> dict[str, Any]:
    return kafka_acls.client_kwargs(principal, bootstrap_servers=bootstrap)


def topics_of(p: str) -> list[str]:
    names = [f"{p}.{s}{lane}" for s in ("ingress", *kafka_acls.STAGES) for lane in kafka_acls.LANES]
    return names + [f"{p}.{t}" for t in ("responses", "deadletter", "audit.log", "audit.checkpoints", "policy.docs",
                                          "index.chunks", "outcomes")]


async def producer_for(principal: str, **extra: Any) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(**kw(principal), enable_idempotence=True, request_timeout_ms=10_000, **extra)
    await producer.start()
    return producer


async def outcome(coro: Awaitable[Any]) -> str:
    """'ok', 'refused' (TopicAuthorizationFailedError) or the other error's name."""
    try:
        await asyncio.wait_for(coro, 15)
        return "ok"
    except REFUSED:
        return "refused"
    except GroupAuthorizationFailedError:
        return "group-refused"
    except (KafkaError, TimeoutError) as exc:
        return type(exc).__name__


async def send(producer: AIOKafkaProducer, topic: str, value: bytes = b"x") -> str:
    return await outcome(producer.send_and_wait(topic, value, key=b"k"))


async def setup(p: str) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(**kw("admin"), request_timeout_ms=15_000)
    await admin.start()
    await admin.create_topics([NewTopic(name, 1, 1) for name in topics_of(p)])
    for _ in range(100):
        described = await admin.describe_topics(topics_of(p))
        if all(t["error_code"] == 0 and t["partitions"] and t["partitions"][0]["leader"] >= 0 for t in described):
            break
        await asyncio.sleep(0.1)
    started = time.perf_counter()
    count = await kafka_acls.grant_prefix(admin, p)
    print(f"granted {count} ACLs for {p} in {1000 * (time.perf_counter() - started):.0f} ms (applied on the broker)")
    return admin


async def producer_checks(p: str) -> None:
    producer = await producer_for("producer")
    try:
        check(await send(producer, f"{p}.ingress") == "ok", "producer writes <p>.ingress (idempotent producer)")
        for topic in ("model", "audit.log", "policy.docs"):
            got = await send(producer, f"{p}.{topic}")
            check(got == "refused", f"producer refused on <p>.{topic} ({got})")
        check(await send(producer, f"{p}.ingress.batch") == "ok", "producer still writes after the refusals")
    finally:
        await producer.stop()
    admin = AIOKafkaAdminClient(**kw("producer"), request_timeout_ms=10_000)
    await admin.start()
    try:
        for topic, expected in ((f"{p}.replies.smoke", 0), (f"{p}.sneaky", TopicAuthorizationFailedError.errno)):
            response = await admin.create_topics([NewTopic(topic, 1, 1)])
            code = response.topic_errors[0][1]
            check(code == expected, f"producer creating {topic.replace(p, '<p>')}: error {code}, expected {expected}")
        visible = {t for t in await admin.list_topics() if t.startswith(f"{p}.")}
        check(set(topics_of(p)) <= visible, "producer sees every topic of the prefix (so ensure_topics creates none)")
    finally:
        await admin.close()


async def stage_cache_checks(p: str, admin_producer: AIOKafkaProducer) -> None:
    await admin_producer.send_and_wait(f"{p}.cache", b"work", key=b"k")
    consumer = AIOKafkaConsumer(f"{p}.cache", **kw("stage-cache"), group_id=f"{p}.cache",
                                auto_offset_reset="earliest", enable_auto_commit=False)
    try:
        await consumer.start()

        async def read_one() -> None:
            record = await consumer.getone()
            assert record.value == b"work"
            await consumer.commit()
        got = await outcome(read_one())
        check(got == "ok", f"stage-cache reads <p>.cache in group <p>.cache and commits ({got})")
    finally:
        await consumer.stop()
    producer = await producer_for("stage-cache")
    try:
        check(await send(producer, f"{p}.model") == "ok", "stage-cache writes <p>.model")
        for topic in ("audit.log", "policy", "policy.docs", "ingress"):
            got = await send(producer, f"{p}.{topic}")
            check(got == "refused", f"stage-cache refused on <p>.{topic} ({got})")
    finally:
        await producer.stop()
    # Reading a later stage's topic, and joining another stage's group.
    consumer = AIOKafkaConsumer(**kw("stage-cache"), group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(f"{p}.model", 0)])
        got = await outcome(consumer.getone())
        check(got == "refused", f"stage-cache refused reading <p>.model ({got})")
    finally:
        await consumer.stop()
    consumer = AIOKafkaConsumer(f"{p}.cache", **kw("stage-cache"), group_id=f"{p}.model")
    got = await outcome(consumer.start())
    if got == "ok":
        got = await outcome(consumer.getone())
    await consumer.stop()
    check(got == "group-refused", f"stage-cache refused in group <p>.model ({got})")


async def connect_checks() -> None:
    bad = {**kw("producer"), "sasl_plain_password": "not-the-password"}
    producer = AIOKafkaProducer(**bad, request_timeout_ms=5_000)
    got = await outcome(producer.start())
    await producer.stop()
    check(got not in ("ok", "TimeoutError"), f"wrong password refused at connect ({got})")
    plain = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, request_timeout_ms=3_000)
    started = time.perf_counter()
    got = await outcome(plain.start())
    await plain.stop()
    check(got != "ok", f"PLAINTEXT connection without SASL refused ({got}, {time.perf_counter() - started:.1f} s)")


async def rotation_checks(p: str) -> None:
    """`infra/services.sh rotate-credentials producer` while a producer is connected."""
    import subprocess

    before = kw("producer")
    connected = await producer_for("producer")
    try:
        started = time.perf_counter()
        done = await asyncio.to_thread(subprocess.run, [SERVICES, "rotate-credentials", "producer"],
                                       capture_output=True, text=True)
        took = time.perf_counter() - started
        failure = f": {done.stderr}" if done.returncode else ""
        check(done.returncode == 0, f"rotate-credentials producer ({took:.1f} s){failure}")
        after = kw("producer")
        check(after["sasl_plain_password"] != before["sasl_plain_password"], "kafka.json has a new password")
        check(await send(connected, f"{p}.ingress") == "ok", "a connection made before the rotation still writes")
        stale = AIOKafkaProducer(**before, request_timeout_ms=5_000)
        got = await outcome(stale.start())
        await stale.stop()
        check(got != "ok", f"the old password is refused on a new connection ({got})")
        fresh = await producer_for("producer")
        check(await send(fresh, f"{p}.ingress") == "ok", "the new password connects and writes")
        await fresh.stop()
    finally:
        await connected.stop()


async def matrix_checks(p: str) -> None:
    """Every principal's WRITE on every topic of the prefix, against what the table says."""
    allowed: dict[str, set[str]] = {}
    for b in kafka_acls.bindings(p):
        res, name, pattern, principal, _host, op, _perm = b
        if res == kafka_acls.TOPIC and op == kafka_acls.WRITE:
            allowed.setdefault(principal.removeprefix("User:"), set()).add(
                name if pattern == kafka_acls.LITERAL else name + "*")
    mismatches = 0
    started = time.perf_counter()
    for principal in kafka_acls.PRINCIPALS:
        producer = await producer_for(principal)
        try:
            for topic in topics_of(p):
                expected = "ok" if topic in allowed.get(principal, set()) else "refused"
                got = await send(producer, topic)
                if got != expected:
                    mismatches += 1
                    print(f"  {principal} WRITE {topic}: expected {expected}, got {got}")
        finally:
            await producer.stop()
    n = len(kafka_acls.PRINCIPALS) * len(topics_of(p))
    check(mismatches == 0, f"write matrix: {n} (principal, topic) pairs as the table says "
                           f"({time.perf_counter() - started:.1f} s)")


async def round_trips(bootstrap: str, topic: str, n: int, extra: dict[str, Any],
                      admin_kw: dict[str, Any]) -> dict[str, Any]:
    admin = AIOKafkaAdminClient(**admin_kw, request_timeout_ms=15_000)
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            await admin.create_topics([NewTopic(topic, 1, 1)])
            await asyncio.sleep(0.5)
    finally:
        await admin.close()
    t0 = time.perf_counter()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, linger_ms=0, **extra)
    await producer.start()
    connect_ms = 1000 * (time.perf_counter() - t0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, fetch_max_wait_ms=5, **extra)
    await consumer.start()
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    await consumer.seek_to_end(tp)
    await consumer.position(tp)
    samples = []
    try:
        for i in range(n + 10):  # the first 10 warm up
            sent = time.perf_counter()
            await producer.send_and_wait(topic, str(i).encode(), key=b"k")
            while True:
                record = await consumer.getone()
                if record.value == str(i).encode():
                    break
            if i >= 10:
                samples.append(1000 * (time.perf_counter() - sent))
    finally:
        await consumer.stop()
        await producer.stop()
    samples.sort()
    return {"n": len(samples), "p50": statistics.median(samples), "p99": samples[int(0.99 * (len(samples) - 1))],
            "max": samples[-1], "connect_ms": connect_ms}


async def bench(p: str, plain_bootstrap: str, n: int = 100, rounds: int = 3) -> None:
    sasl = {k: v for k, v in kw("producer").items() if k != "bootstrap_servers"}
    topic = f"{p}.replies.bench"  # producer may create, read and write its replies topics
    print(f"round trips: produce (acks=all, idempotent) → consume, {n} messages, 1 partition, {rounds} rounds each")
    for r in range(rounds):
        for name, bootstrap, extra, admin_kw in (
                ("SASL_PLAINTEXT/SCRAM", BOOTSTRAP, sasl, kw("producer")),
                ("PLAINTEXT", plain_bootstrap, {}, {"bootstrap_servers": plain_bootstrap})):
            got = await round_trips(bootstrap, topic, n, extra, admin_kw)
            print(f"  round {r + 1} {name:<21} p50 {got['p50']:6.2f} ms  p99 {got['p99']:6.2f} ms  "
                  f"max {got['max']:6.2f} ms  producer start {got['connect_ms']:6.1f} ms")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--matrix", action="store_true")
    parser.add_argument("--rotate", action="store_true", help="rotate producer's password (services.sh, same env)")
    parser.add_argument("--bench-plain", metavar="HOST:PORT")
    parser.add_argument("--keep", action="store_true", help="keep the prefix's topics and ACLs")
    args = parser.parse_args()
    p = f"s{uuid.uuid4().hex[:10]}"
    print(f"broker {BOOTSTRAP}, prefix {p}, credentials {kafka_acls.credentials_file()}")
    admin = await setup(p)
    admin_producer = await producer_for("admin")
    try:
        await producer_checks(p)
        await stage_cache_checks(p, admin_producer)
        await connect_checks()
        if args.rotate:
            await rotation_checks(p)
        if args.matrix:
            await matrix_checks(p)
        if args.bench_plain:
            await bench(p, args.bench_plain)
    finally:
        await admin_producer.stop()
        if not args.keep:
            await admin.delete_topics([t for t in await admin.list_topics() if t.startswith(f"{p}.")])
            print(f"revoked {await kafka_acls.revoke_prefix(admin, p)} ACLs of {p}")
        await admin.close()
    failed = [what for ok, what in results if not ok]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
