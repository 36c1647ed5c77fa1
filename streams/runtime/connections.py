"""The one place that opens connections: Kafka producers, consumers and admin clients, and Redis clients (the
librdkafka clients of ``TOLLWAY_KAFKA_CLIENT=librdkafka`` are built in ``streams/runtime/rdkafka.py`` from the same
address and security, :func:`kafka_security`).

Every client gets the broker's address, the configured security (SASL credentials when the broker asks for them)
and timeouts from :class:`~streams.settings.Settings`, so no caller can forget one; starting a Kafka client that
cannot reach its broker raises :class:`~schemas.errors.ServiceUnavailable` naming the address, within a bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import Set
from pathlib import Path
from typing import Any, Protocol

import hiredis
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import Connection

from schemas.errors import ConfigError, ServiceUnavailable
from streams.settings import Settings

# Kafka clients give up on a request after this long; a start that cannot reach the broker fails after START_TIMEOUT_S.
REQUEST_TIMEOUT_MS = 10_000
START_TIMEOUT_S = 15.0


def kafka_security(settings: Settings, role: str) -> dict[str, Any]:
    """How a client connects as ``role`` (a principal of ``streams/runtime/acls.py``): none on a plaintext broker.

    ``TOLLWAY_KAFKA_USERNAME``/``_PASSWORD`` (an operator's own Kafka, one principal per process) win; otherwise the
    role's password comes from the credentials file ``infra/services.sh`` writes (``<state>/credentials/kafka.json``);
    with neither the broker is taken to be plaintext.
    """
    if settings.kafka_username is not None:
        if settings.kafka_password is None:
            raise ConfigError("TOLLWAY_KAFKA_USERNAME is set but TOLLWAY_KAFKA_PASSWORD is not")
        username, password = settings.kafka_username, settings.kafka_password.get_secret_value()
    else:
        credentials = _credentials(settings.kafka_credentials_path)
        if credentials is None:
            return {}
        if role not in credentials:
            raise ConfigError(f"no Kafka credentials for principal {role!r} in {settings.kafka_credentials_path}")
        username, password = role, credentials[role]
    return {
        "security_protocol": settings.kafka_security_protocol,
        "sasl_mechanism": settings.kafka_sasl_mechanism,
        "sasl_plain_username": username,
        "sasl_plain_password": password,
    }


_CREDENTIALS: dict[Path, tuple[float, dict[str, str]]] = {}


def _credentials(path: Path) -> dict[str, str] | None:
    """The principal → password map, re-read when the file changes (``infra/services.sh rotate-credentials``)."""
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    cached = _CREDENTIALS.get(path)
    if cached is None or cached[0] != mtime:
        try:
            loaded = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read the Kafka credentials {path}: {exc}") from exc
        cached = _CREDENTIALS[path] = (mtime, {str(k): str(v) for k, v in loaded.items()})
    return cached[1]


def new_producer(settings: Settings, *, role: str, client_id: str | None = None, linger_ms: int | None = None,
                 **options: Any) -> AIOKafkaProducer:
    """An idempotent producer: idempotence forces acks=all (aiokafka's default acks=1 can lose acknowledged records
    on a leader change)."""
    params: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": client_id or f"{settings.worker_id}-producer",
        "enable_idempotence": True,
        "linger_ms": settings.producer_linger_ms if linger_ms is None else linger_ms,
        "max_batch_size": 512 * 1024,
        "max_request_size": settings.max_message_bytes * 2,
        "request_timeout_ms": REQUEST_TIMEOUT_MS * 3,
        **kafka_security(settings, role),
    }
    params.update(options)
    return AIOKafkaProducer(**params)


def new_consumer(settings: Settings, *topics: str, role: str, group_id: str | None = None,
                 **options: Any) -> AIOKafkaConsumer:
    """A consumer; without ``group_id`` it is a follower (no group, no commits, it chooses its own positions)."""
    params: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "group_id": group_id,
        "enable_auto_commit": False,
        "request_timeout_ms": REQUEST_TIMEOUT_MS * 4,
        "max_partition_fetch_bytes": settings.max_message_bytes * 2,
        **kafka_security(settings, role),
    }
    params.update(options)
    return AIOKafkaConsumer(*topics, **params)


Batches = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]


class StageConsumer(Protocol):
    """What the stage runtime (the runner, the lane poller, a chain) uses of a group consumer: aiokafka's
    ``AIOKafkaConsumer`` or :class:`streams.runtime.rdkafka.RdKafkaConsumer` (:func:`new_stage_consumer`)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def assignment(self) -> Set[TopicPartition]: ...

    async def getmany(self, *partitions: TopicPartition, timeout_ms: int = 0,
                      max_records: int | None = None) -> Batches: ...

    def highwater(self, partition: TopicPartition) -> int | None: ...

    async def position(self, partition: TopicPartition) -> int: ...

    def last_poll_timestamp(self, partition: TopicPartition) -> int: ...

    def pause(self, *partitions: TopicPartition) -> None: ...

    def resume(self, *partitions: TopicPartition) -> None: ...

    def paused(self) -> Set[TopicPartition]: ...

    async def commit(self, offsets: dict[TopicPartition, int]) -> None: ...


def new_stage_consumer(settings: Settings, *topics: str, role: str, group_id: str, client_id: str,
                       group_instance_id: str | None, **aiokafka_options: Any) -> StageConsumer:
    """A stage's (or a co-located chain's) group consumer on the client ``TOLLWAY_KAFKA_CLIENT`` names (``auto`` is
    resolved per worker process by :func:`streams.runtime.worker_process.run_workers`; unresolved, it is aiokafka)."""
    if settings.kafka_client == "librdkafka":
        from streams.runtime.rdkafka import RdKafkaConsumer

        return RdKafkaConsumer(settings, *topics, role=role, group_id=group_id, client_id=client_id,
                               group_instance_id=group_instance_id)
    consumer: StageConsumer = new_consumer(settings, *topics, role=role, group_id=group_id, client_id=client_id,
                                           group_instance_id=group_instance_id, **aiokafka_options)
    return consumer


def new_admin(settings: Settings, *, role: str = "admin") -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, request_timeout_ms=REQUEST_TIMEOUT_MS,
                               **kafka_security(settings, role))


class _Startable(Protocol):
    async def start(self) -> None: ...


async def start(client: _Startable, settings: Settings, what: str = "Kafka client") -> None:
    """Start a Kafka client, or fail within :data:`START_TIMEOUT_S` with the address it could not reach."""
    try:
        await asyncio.wait_for(client.start(), START_TIMEOUT_S)
    except Exception as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # Python 3.11's wait_for returns the start's own failure when a cancel arrives as the start fails
            # (a refused connection fails at once): converted, the caller's reconnect loop would never end.
            raise asyncio.CancelledError from exc
        raise ServiceUnavailable(f"{what}: Kafka is not reachable at {settings.bootstrap_servers}: "
                                 f"{exc or type(exc).__name__}") from exc


_PACKED_AS_IS = frozenset({bytes, str, int})


class HiredisPackConnection(Connection):
    """redis-py's asyncio connection, its commands packed by hiredis in C.

    redis-py packs a command in Python (an encode call, a join and a length per argument): half the CPU of a
    pipeline of cache writes here. hiredis writes the same bytes for ``bytes``, ``str`` (UTF-8) and ``int``
    arguments, and a float is first written as redis-py writes it (``repr``); any other argument (a bool, which
    redis-py refuses, a memoryview …) or another encoding takes redis-py's own path, errors included.
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        encoder = self.encoder
        if encoder.encoding != "utf-8" or encoder.encoding_errors != "strict" or not args:
            return super().pack_command(*args)
        packed: list[Any] = []
        for arg in args:
            kind = type(arg)
            if kind is float:
                packed.append(repr(arg).encode())
            elif kind in _PACKED_AS_IS:
                packed.append(arg)
            else:
                return super().pack_command(*args)
        first = packed[0]
        # As redis-py does: a command name with spaces ("CONFIG GET") is sent as separate arguments.
        if isinstance(first, str):
            packed[:1] = first.encode().split()
        elif b" " in first:
            packed[:1] = first.split()
        return [hiredis.pack_command(tuple(packed))]


def redis_client(settings: Settings, *, timeout_ms: int | None = None, max_connections: int = 64) -> Redis:
    """A pooled Redis client with timeouts: on the request path a slow Redis must become a miss, never a stall."""
    timeout_s = (timeout_ms if timeout_ms is not None else settings.redis_timeout_ms) / 1000
    options: dict[str, Any] = {}
    if settings.redis_url.startswith("redis://"):  # TCP (rediss:// and unix:// keep their own connection classes)
        options["connection_class"] = HiredisPackConnection
    pool = ConnectionPool.from_url(settings.redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                   max_connections=max_connections, health_check_interval=30, **options)
    return Redis(connection_pool=pool)
