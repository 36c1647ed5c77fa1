"""The Python SDK: publish requests to tollway and get their responses back, async or sync.

    async with TollwayClient(settings, api_key=KEY) as client:
        response = await client.complete("What is the refund policy?")     # submit + result
        rid = await client.submit("Summarise ticket 42", tier=Tier.BATCH)   # just the request id
        later = await client.result(rid, timeout=60)

    with SyncTollwayClient(settings) as client:                             # the same, for scripts
        print(client.complete("hello").answer)

**Tools** (streams/clients/tools.py): ``complete(prompt, tools=[...])`` with registered tool names runs them in the
pipeline (server-executed: the response is the final answer, ``response.steps`` lists each call);
``complete_with_tools(prompt, {"lookup_order": fn}, tools=[definition])`` runs the caller's own tools locally
(client-executed: the model's ``requested_tool_calls`` are run and posted back until it answers).

**Publishing** uses an idempotent producer (acks=all): a request is acknowledged only once the broker has it, and a
producer retry never duplicates it. ``submit`` returns after the acknowledgement.

**Correlation.** One :class:`ReplyReader` per client reads replies without a consumer group (no commits, no
rebalances) and resolves futures by request_id. It keeps only replies to ids this client registered *before*
publishing, so there is no race and no unbounded buffer of other clients' responses. By default it reads the shared
``<prefix>.responses`` topic: simple, and cheap for a handful of client processes. With ``reply_to=TOPIC`` the
envelopes carry ``request.reply_to`` and the stage that ends a request also publishes its response there, so the
client reads only its own replies — better when many processes wait (each would otherwise read every response of the
deployment: N readers × all traffic). The price is one topic per client (created here, 1 h retention; delete it with
``delete_reply_topic=True`` if it is ephemeral), so it suits long-lived producers such as an ingress instance, not
short scripts.

**Identity.** With ``api_key`` the client verifies the key against the policy in force (settings.policy_file, else
the policy topic) once at start and signs every envelope's principal with ``settings.principal_secret`` — so the SDK
belongs inside the trust boundary, like the ingress. Without a key, requests carry no principal and only tenants
with ``require_principal: false`` accept them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterable, Mapping
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.admin import NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from schemas.envelope import Envelope, Message, Tier
from schemas.errors import PolicyDenied, ServiceUnavailable
from schemas.response import Response
from streams.clients.envelopes import EnvelopeFactory
from streams.clients.principals import Identity, KeyCache, sign_envelope
from streams.clients.replies import ReplyReader
from streams.clients.tools import ToolHandler, as_function_tools, check_conversation, run_handlers, tool_turn
from streams.followers.policy import PolicyStore, load_policy_file
from streams.runtime.codec import encode
from streams.runtime.connections import new_admin, new_producer, start
from streams.runtime.topics import ensure_topics, topology
from streams.settings import Settings, get_settings
from workers.policy import PolicySource, StaticPolicy

T = TypeVar("T")

REPLY_RETENTION_MS = 3_600_000


async def ensure_reply_topic(settings: Settings, topic: str, *, partitions: int = 1) -> None:
    admin = new_admin(settings)
    await start(admin, settings, "reply topic")
    try:
        if topic not in set(await admin.list_topics()):
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(topic, partitions, settings.replication_factor, topic_configs={
                    "cleanup.policy": "delete", "retention.ms": str(REPLY_RETENTION_MS)})])
            for _ in range(100):  # new topics are usable once their partitions have a leader
                described = await admin.describe_topics([topic])
                if all(t["error_code"] == 0 and t["partitions"] for t in described):
                    return
                await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def delete_topic(settings: Settings, topic: str) -> None:
    admin = new_admin(settings)
    await start(admin, settings, "delete topic")
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()


def new_sdk_producer(settings: Settings) -> AIOKafkaProducer:
    # Idempotence forces acks=all; a short request timeout turns a dead broker into a prompt ServiceUnavailable.
    return new_producer(settings, role="producer", client_id=f"{settings.worker_id}-sdk",
                        request_timeout_ms=int(max(settings.ingress_publish_timeout_s, 1.0) * 1000))


class TollwayClient:
    """Async client: ``submit`` → request id, ``result(request_id, timeout)``, ``complete`` does both."""

    def __init__(self, settings: Settings | None = None, *, tenant: str = "acme", api_key: str | None = None,
                 policy: PolicySource | None = None, tier: Tier = Tier.STANDARD, reply_to: str | None = None,
                 delete_reply_topic: bool = False) -> None:
        self.settings = settings or get_settings()
        self.topology = topology(self.settings)
        self.tenant = tenant
        self.tier = tier
        self.reply_to = reply_to
        self.delete_reply_topic = delete_reply_topic
        self._api_key = api_key
        self._policy = policy
        self._store: PolicyStore | None = None
        self.identity: Identity | None = None
        self.producer: AIOKafkaProducer | None = None
        self.replies = ReplyReader(self.settings, reply_to or self.topology.responses)
        self._secret = self.settings.principal_secret.get_secret_value()

    async def start(self, *, replies_since_ms: int | None = None) -> TollwayClient:
        await ensure_topics(self.settings)
        if self.reply_to:
            await ensure_reply_topic(self.settings, self.reply_to)
        if self._api_key is not None:
            self.identity = await self._authenticate(self._api_key)
        producer = new_sdk_producer(self.settings)
        await start(producer, self.settings, "SDK producer")
        self.producer = producer
        await self.replies.start(since_ms=replies_since_ms)
        return self

    async def _authenticate(self, api_key: str) -> Identity:
        if self._policy is None:
            if self.settings.policy_file is not None:
                doc = load_policy_file(self.settings.policy_file)
                self._policy = StaticPolicy(doc)
            else:
                self._store = PolicyStore(self.settings)
                await self._store.start()
                self._policy = self._store
        identity = await KeyCache(self._policy).authenticate(api_key)
        if identity is None:
            raise PolicyDenied("unauthenticated", "the API key is not valid under the policy in force"
                               " (unknown, revoked, or no policy loaded)")
        return identity

    async def close(self) -> None:
        await self.replies.stop()
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None
        if self._store is not None:
            await self._store.stop()
            self._store = None
        if self.reply_to and self.delete_reply_topic:
            with contextlib.suppress(KafkaError, OSError):
                await delete_topic(self.settings, self.reply_to)

    async def __aenter__(self) -> TollwayClient:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ requests
    def envelope(self, prompt: str | list[Message], *, tier: Tier | None = None, budget_ms: int | None = None,
                 request_id: str | None = None, tenant: str | None = None, **request_fields: Any) -> Envelope:
        """A new envelope for this client's tenant and tier (not yet signed or published). ``tools`` may be given
        in OpenAI's shape, ours or as registered tool names (:func:`streams.clients.tools.as_function_tools`)."""
        if request_fields.get("tools"):
            request_fields["tools"] = as_function_tools(request_fields["tools"])
        if not isinstance(prompt, str):
            check_conversation(prompt)
        factory = EnvelopeFactory(self.settings, policy=self._policy, identity=self.identity)
        return factory.new(prompt, tenant=tenant or self.tenant, tier=tier or self.tier, budget_ms=budget_ms,
                           request_id=request_id, **request_fields)

    async def submit(self, prompt: str | list[Message], **fields: Any) -> str:
        """Publish one request; returns its request id once the broker has acknowledged it."""
        (rid,) = await self.submit_envelopes([self.envelope(prompt, **fields)])
        return rid

    async def submit_envelopes(self, envs: Iterable[Envelope], *, sign: bool = True) -> list[str]:
        """Publish envelopes (signed with this client's identity, reply_to set) and wait for every acknowledgement."""
        if self.producer is None:
            raise ServiceUnavailable("the client is not started: use `async with TollwayClient(...)` or start()")
        batch = list(envs)
        for env in batch:
            if sign and self.identity is not None:
                sign_envelope(env, self.identity, self._secret)
            if self.reply_to:
                env.request.reply_to = self.reply_to
        self.replies.expect(env.request_id for env in batch)
        try:
            deliveries = [await self.producer.send(self.topology.ingress(env.tier), encode(env),
                                                   key=env.request_id.encode()) for env in batch]
            await asyncio.wait_for(asyncio.gather(*deliveries), self.settings.ingress_publish_timeout_s)
        except (TimeoutError, KafkaError, OSError) as exc:
            for env in batch:
                self.replies.forget(env.request_id)
            raise ServiceUnavailable(f"Kafka did not acknowledge the request(s) within "
                                     f"{self.settings.ingress_publish_timeout_s:g} s: {exc!r}") from exc
        return [env.request_id for env in batch]

    async def complete_envelopes(self, envs: Iterable[Envelope], timeout_s: float = 30.0,
                                 *, sign: bool = False) -> list[Response]:
        """Publish ready-made envelopes and wait for all their responses (tests, the demo, ``tollway submit``)."""
        ids = await self.submit_envelopes(envs, sign=sign)
        return list(await asyncio.gather(*(self.result(rid, timeout_s) for rid in ids)))

    def expect(self, request_ids: Iterable[str]) -> None:
        """Wait for replies to ids published elsewhere (e.g. a previous run of a backfill)."""
        self.replies.expect(request_ids)

    async def result(self, request_id: str, timeout: float = 30.0) -> Response:  # noqa: ASYNC109 - the API
        """The response for a request this client submitted (TimeoutError when none arrives in time)."""
        return await self.replies.wait(request_id, timeout)

    async def complete(self, prompt: str | list[Message], *, timeout: float = 30.0,  # noqa: ASYNC109
                       **fields: Any) -> Response:
        return await self.result(await self.submit(prompt, **fields), timeout)

    async def complete_with_tools(self, prompt: str | list[Message], handlers: Mapping[str, ToolHandler], *,
                                  tools: Iterable[Any], max_rounds: int = 4, timeout: float = 30.0,  # noqa: ASYNC109
                                  **fields: Any) -> tuple[Response, list[Message]]:
        """Client-executed tools: complete, run the calls the model asks for with ``handlers`` (by tool name, sync or
        async), post their results back, until the model answers (at most ``max_rounds`` tool rounds). Returns the
        last response and the conversation that led to it."""
        messages = [Message(role="user", content=prompt)] if isinstance(prompt, str) else list(prompt)
        definitions = as_function_tools(tools)
        fields.setdefault("tools_mode", "client")
        response = await self.complete(messages, timeout=timeout, tools=definitions, **fields)
        for _ in range(max_rounds):
            if not response.requested_tool_calls:
                break
            results = await run_handlers(response.requested_tool_calls, handlers)
            messages += tool_turn(response, results)
            response = await self.complete(messages, timeout=timeout, tools=definitions, **fields)
        return response, messages


class SyncTollwayClient:
    """The async client on a private event loop in a background thread, for scripts and notebooks."""

    def __init__(self, settings: Settings | None = None, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tollway-sdk", daemon=True)
        self._thread.start()
        self._client = TollwayClient(settings, **options)
        self._started = False

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> SyncTollwayClient:
        self._call(self._client.start())
        self._started = True
        return self

    def submit(self, prompt: str | list[Message], **fields: Any) -> str:
        return self._call(self._client.submit(prompt, **fields))

    def result(self, request_id: str, timeout: float = 30.0) -> Response:
        return self._call(self._client.result(request_id, timeout))

    def complete(self, prompt: str | list[Message], *, timeout: float = 30.0, **fields: Any) -> Response:
        return self._call(self._client.complete(prompt, timeout=timeout, **fields))

    def complete_with_tools(self, prompt: str | list[Message], handlers: Mapping[str, ToolHandler], *,
                            tools: Iterable[Any], timeout: float = 30.0,
                            **fields: Any) -> tuple[Response, list[Message]]:
        return self._call(self._client.complete_with_tools(prompt, handlers, tools=tools, timeout=timeout, **fields))

    def close(self) -> None:
        if self._started:
            self._call(self._client.close())
            self._started = False
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> SyncTollwayClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
