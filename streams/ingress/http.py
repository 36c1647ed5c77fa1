"""``tollway serve``: an OpenAI-compatible HTTP front door that publishes each request to Kafka and answers with its
response.

    POST /v1/chat/completions   chat completion; ``stream: true`` answers as server-sent events (the final answer in
                                chunks: the pipeline produces whole answers)
    GET  /v1/models             the model catalog (what the caller's tenant may reach), plus ``auto`` (routed)
    GET  /healthz               200 when Kafka and a policy (or dev mode) are ready, 503 otherwise
    GET  /metrics               Prometheus

**Keys.** ``Authorization: Bearer tw_…`` is verified against the policy in force (the policy topic, or
``TOLLWAY_POLICY_FILE``) — one scrypt per key and policy version, cached (streams/clients/principals.py); the
envelope then
carries the key id and a signed principal, never the key. With no policy in force the ingress fails closed (503),
unless ``TOLLWAY_INGRESS_DEV_MODE=true``: then requests need no key and the tenant is ``X-Tollway-Tenant`` (default
``dev``), as the policy stage allows everything without a policy.

**Errors** use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``; the status follows the outcome
(:func:`http_status_for`). **Extras** — request id, status, cost, cache, end-to-end and per-stage latency — travel in
``x-tollway-*`` and ``Server-Timing`` headers and in a ``tollway`` field that OpenAI clients ignore. Tollway-only
request options go in a ``tollway`` body field (``extra_body`` in the OpenAI SDK): tier, budget_ms, task_id,
session_id, quality_tier, cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.envelope import CacheControl, Envelope, GenerationParams, Message, Request, Status, Tier
from schemas.errors import ConfigError, ServiceUnavailable
from schemas.policy import PolicyDocument
from schemas.response import Response
from streams.clients.principals import Identity, KeyCache, PolicySource, sign_envelope
from streams.clients.sdk import TollwayClient
from streams.followers.policy import PolicyStore, load_policy_file
from streams.ingress.idempotency import (
    Claim,
    IdempotencyStore,
    RedisIdempotencyStore,
    fingerprint,
    request_id_for,
    scope_of,
)
from streams.settings import Settings
from workers.routing.catalog import ModelCatalog, get_catalog

log = logging.getLogger(__name__)

REQUESTS = Counter("tollway_ingress_requests_total", "HTTP requests answered by the ingress", ["route", "status"])
LATENCY = Histogram("tollway_ingress_request_seconds", "HTTP request to answer, by route", ["route"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
GRACE_S = 2.0  # the pipeline answers deadline_exceeded itself; wait this much past the deadline before giving up


class Gateway(Protocol):
    """The Kafka side: publish an envelope (ServiceUnavailable when Kafka is down), await its response."""

    @property
    def ready(self) -> bool: ...

    async def publish(self, env: Envelope) -> None: ...

    async def wait(self, request_id: str, timeout_s: float) -> Response: ...


# ---------------------------------------------------------------------------------------------- errors and statuses
class HttpError(Exception):
    def __init__(self, status: int, message: str, *, type_: str, code: str, param: str | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.retry_after_s = retry_after_s


_DENIAL_STATUS: dict[str, tuple[int, str]] = {
    "unauthenticated": (401, "authentication_error"),
    "forbidden_model": (403, "permission_error"),
    "residency_violation": (403, "permission_error"),
    "pii_blocked": (403, "permission_error"),
    "injection_blocked": (403, "permission_error"),
    "rate_limited": (429, "rate_limit_error"),
    "budget_exceeded": (429, "insufficient_quota"),
}


def http_status_for(response: Response) -> tuple[int, str]:
    """(HTTP status, OpenAI error type) for a response's status and code."""
    if response.status in (Status.OK, Status.CACHE_HIT):
        return 200, ""
    if response.status is Status.DENIED:
        return _DENIAL_STATUS.get(response.code, (403, "permission_error"))
    if response.status is Status.DEADLINE_EXCEEDED:
        return 504, "timeout_error"
    if response.status is Status.FAILED and response.code == "model_error":
        return 502, "server_error"
    return 500, "server_error"


def error_body(status: int, message: str, type_: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code or None}}


def json_response(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)


def tollway_headers(response: Response) -> dict[str, str]:
    total_ms = max(0, response.completed_at_ns - response.created_at_ns) / 1e6
    headers = {
        "x-tollway-request-id": response.request_id,
        "x-tollway-status": response.status.value + (f"; code={response.code}" if response.code else ""),
        "x-tollway-cost-micros": str(response.cost_micros),
        "x-tollway-latency-ms": f"{total_ms:.2f}",
        "x-tollway-stage-latency": ", ".join(f"{h.stage};queue={h.queue_ms:.2f};service={h.service_ms:.2f}"
                                             for h in response.hops),
        "Server-Timing": ", ".join(f"{h.stage};dur={h.queue_ms + h.service_ms:.2f}" for h in response.hops),
    }
    if response.cache:
        headers["x-tollway-cache"] = response.cache
    if response.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(response.retry_after_s)))
    return headers


def tollway_extension(response: Response) -> dict[str, Any]:
    return {"request_id": response.request_id, "status": response.status.value, "code": response.code or None,
            "cost_micros": response.cost_micros, "saved_micros": response.saved_micros, "cache": response.cache,
            "latency_ms": round(max(0, response.completed_at_ns - response.created_at_ns) / 1e6, 3),
            "hops": [h.model_dump() for h in response.hops]}


def error_from_response(response: Response) -> web.Response:
    status, type_ = http_status_for(response)
    message = response.message or f"request {response.status.value}" + (f" ({response.code})" if response.code else "")
    body = error_body(status, message, type_, response.code or response.status.value)
    body["tollway"] = tollway_extension(response)
    return json_response(body, status=status, headers=tollway_headers(response))


def error_response(exc: HttpError) -> web.Response:
    headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))} if exc.retry_after_s else None
    return json_response(error_body(exc.status, exc.message, exc.type, exc.code, exc.param), status=exc.status,
                         headers=headers)


# ---------------------------------------------------------------------------------------------- the request body
class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TollwayOptions(_Body):
    model_config = ConfigDict(extra="forbid")
    tier: Tier | None = None
    budget_ms: int | None = Field(default=None, ge=1, le=86_400_000)
    task_id: str | None = None
    session_id: str | None = None
    quality_tier: str | None = None
    cache: CacheControl | None = None


class ChatBody(_Body):
    model: str = "auto"
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=32_768)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=32_768)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    response_format: dict[str, Any] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(default=1, ge=1, le=1)
    tollway: TollwayOptions = Field(default_factory=TollwayOptions)


_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool",
          "function": "tool"}


def to_messages(raw: list[dict[str, Any]]) -> list[Message]:
    """OpenAI messages → ours: text parts joined, ``developer`` as ``system``; anything else is a 400."""
    messages = []
    for index, item in enumerate(raw):
        role = _ROLES.get(str(item.get("role")))
        if role is None:
            raise HttpError(400, f"messages[{index}].role {item.get('role')!r} is not supported",
                            type_="invalid_request_error", code="invalid_value", param=f"messages[{index}].role")
        content = item.get("content")
        if isinstance(content, list):
            texts = [part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"]
            if len(texts) != len(content):
                raise HttpError(400, "only text content parts are supported", type_="invalid_request_error",
                                code="invalid_value", param=f"messages[{index}].content")
            content = "\n".join(texts)
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise HttpError(400, f"messages[{index}].content must be a string or a list of text parts",
                            type_="invalid_request_error", code="invalid_type", param=f"messages[{index}].content")
        messages.append(Message(role=role, content=content))
    return messages


def parse_body(raw: bytes) -> ChatBody:
    try:
        return ChatBody.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise HttpError(400, f"{param or 'body'}: {first['msg']}" if param else f"invalid request body: {first['msg']}",
                        type_="invalid_request_error", code="invalid_request", param=param) from exc


# ---------------------------------------------------------------------------------------------- the application
@dataclass
class Ingress:
    settings: Settings
    gateway: Gateway
    policy: PolicySource
    idempotency: IdempotencyStore | None
    catalog: ModelCatalog | None

    def __post_init__(self) -> None:
        self.keys = KeyCache(self.policy)
        self.secret = self.settings.principal_secret.get_secret_value()

    # ------------------------------------------------------------------ identity
    async def identify(self, request: web.Request) -> Identity:
        doc = self.policy.current()
        header = request.headers.get("Authorization", "")
        raw_key = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if doc is None:
            if self.settings.ingress_dev_mode:
                return Identity(tenant=request.headers.get("X-Tollway-Tenant", "dev"))
            raise HttpError(503, "no policy is in force yet (publish one with `tollway policy apply`, or run the "
                            "ingress with TOLLWAY_INGRESS_DEV_MODE=true)", type_="server_error",
                            code="no_policy")
        if not raw_key:
            raise HttpError(401, "no API key: send `Authorization: Bearer <key>`", type_="authentication_error",
                            code="missing_api_key")
        identity = await self.keys.authenticate(raw_key)
        if identity is None:
            raise HttpError(401, "the API key is not valid (unknown or revoked)", type_="authentication_error",
                            code="invalid_api_key")
        return identity

    def models_for(self, identity: Identity) -> list[str]:
        names = [m.name for m in self.catalog.models] if self.catalog else []
        doc = self.policy.current()
        tenant = doc.tenant(identity.tenant) if isinstance(doc, PolicyDocument) else None
        if tenant is not None and self.catalog is not None:
            regions = set(tenant.regions)
            names = [m.name for m in self.catalog.models
                     if (not tenant.allowed_models or m.name in tenant.allowed_models)
                     and (not regions or m.region in regions)]
        return ["auto", *names]

    # ------------------------------------------------------------------ handlers
    async def chat(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            result = await self._chat(request)
        except HttpError as exc:
            result = error_response(exc)
        REQUESTS.labels("chat", str(result.status)).inc()
        LATENCY.labels("chat").observe(time.perf_counter() - started)
        return result

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        identity = await self.identify(request)
        body = parse_body(raw)
        if self.catalog is not None and body.model not in ("auto", "") and body.model not in self.catalog:
            raise HttpError(404, f"The model `{body.model}` does not exist", type_="invalid_request_error",
                            code="model_not_found", param="model")
        options = body.tollway
        header_tier = request.headers.get("X-Tollway-Tier")
        if header_tier is not None and header_tier not in {t.value for t in Tier}:
            raise HttpError(400, "X-Tollway-Tier must be interactive, standard or batch",
                            type_="invalid_request_error", code="invalid_value", param="X-Tollway-Tier")
        tier = options.tier or (Tier(header_tier) if header_tier else Tier.STANDARD)
        budget_ms = options.budget_ms or {Tier.INTERACTIVE: self.settings.budget_interactive_ms,
                                          Tier.STANDARD: self.settings.budget_standard_ms,
                                          Tier.BATCH: self.settings.budget_batch_ms}[tier]
        wait_s = budget_ms / 1000 + GRACE_S

        idem_key = request.headers.get("Idempotency-Key")
        scope = claim = None
        request_id = None
        if idem_key:
            if self.idempotency is None:
                raise HttpError(503, "idempotency keys need Redis", type_="server_error", code="unavailable")
            if len(idem_key) > 255:
                raise HttpError(400, "Idempotency-Key is longer than 255 characters", type_="invalid_request_error",
                                code="invalid_value", param="Idempotency-Key")
            scope = scope_of(identity.tenant, identity.key_id, idem_key)
            claim = await self._claim(scope, fingerprint(raw), wait_s)
            request_id = request_id_for(scope, claim.attempt)
            if not claim.claimed:
                response = claim.response or await self._await_duplicate(scope, request_id, wait_s)
                return await self.render(request, response, body, replayed=True)

        try:
            params = GenerationParams(max_tokens=body.max_completion_tokens or body.max_tokens or 256,
                                      temperature=body.temperature or 0.0, response_format=body.response_format)
            env = Envelope(
                request_id=request_id or _new_request_id(), tenant=identity.tenant, tier=tier,
                created_at_ns=(now := time.time_ns()), deadline_at_ns=now + budget_ms * 1_000_000,
                request=Request(messages=to_messages(body.messages), params=params,
                                model=None if body.model in ("auto", "") else body.model,
                                quality_tier=options.quality_tier, session_id=options.session_id,
                                task_id=options.task_id, cache=options.cache or CacheControl()),
            )
        except ValidationError as exc:
            await self._release(scope, claim)
            first = exc.errors()[0]
            raise HttpError(400, f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}",
                            type_="invalid_request_error", code="invalid_request") from exc
        except HttpError:
            await self._release(scope, claim)
            raise
        sign_envelope(env, identity, self.secret)
        try:
            await self.gateway.publish(env)
        except ServiceUnavailable as exc:
            await self._release(scope, claim)
            raise HttpError(503, f"Kafka is unreachable: {exc}", type_="server_error", code="kafka_unavailable",
                            retry_after_s=1) from exc
        try:
            response = await self.gateway.wait(env.request_id, wait_s)
        except TimeoutError as exc:
            raise HttpError(504, f"no response within the {budget_ms} ms budget", type_="timeout_error",
                            code="deadline_exceeded") from exc
        if scope is not None and claim is not None and self.idempotency is not None:
            await self.idempotency.finish(scope, claim, response)
        return await self.render(request, response, body, replayed=False)

    async def _claim(self, scope: str, fp: str, lease_s: float) -> Claim:
        assert self.idempotency is not None
        try:
            claim = await self.idempotency.claim(scope, fp, lease_s)
        except ServiceUnavailable as exc:
            raise HttpError(503, str(exc), type_="server_error", code="redis_unavailable") from exc
        if claim.fingerprint != fp:
            raise HttpError(400, "this Idempotency-Key was used with a different request body",
                            type_="invalid_request_error", code="idempotency_key_reused", param="Idempotency-Key")
        return claim

    async def _release(self, scope: str | None, claim: Claim | None) -> None:
        if scope is not None and claim is not None and claim.claimed and self.idempotency is not None:
            with contextlib.suppress(ServiceUnavailable):
                await self.idempotency.release(scope, claim)

    async def _await_duplicate(self, scope: str, request_id: str, wait_s: float) -> Response:
        """A concurrent duplicate: wait for the first request's response (from the topic, or once it is stored)."""
        assert self.idempotency is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            try:
                return await self.gateway.wait(request_id, min(0.25, max(0.0, deadline - loop.time())))
            except TimeoutError:
                # The first ingress may have seen the reply before this one started waiting; it stores it.
                stored = await self.idempotency.get(scope)
                if stored is not None and stored.response is not None:
                    return stored.response
                if loop.time() >= deadline:
                    raise HttpError(504, "the first request with this Idempotency-Key has not finished",
                                    type_="timeout_error", code="deadline_exceeded") from None

    async def render(self, request: web.Request, response: Response, body: ChatBody, *,
                     replayed: bool) -> web.StreamResponse:
        status, _ = http_status_for(response)
        if status != 200:
            return error_from_response(response)
        headers = tollway_headers(response)
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        if body.stream:
            stream = web.StreamResponse(status=200, headers={**headers, "Content-Type": "text/event-stream",
                                                             "Cache-Control": "no-cache"})
            await stream.prepare(request)
            for event in sse_events(response, body):
                await stream.write(b"data: " + orjson.dumps(event) + b"\n\n")
            await stream.write(b"data: [DONE]\n\n")
            await stream.write_eof()
            return stream
        completion = {
            "id": f"chatcmpl-{response.request_id}", "object": "chat.completion",
            "created": response.created_at_ns // 1_000_000_000, "model": response.model or body.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": response.answer or ""},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": usage_of(response), "system_fingerprint": None, "tollway": tollway_extension(response),
        }
        return json_response(completion, headers=headers)

    async def models(self, request: web.Request) -> web.Response:
        try:
            identity = await self.identify(request)
        except HttpError as exc:
            return error_response(exc)
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "tollway"}
                for name in self.models_for(identity)]
        return json_response({"object": "list", "data": data})

    async def healthz(self, request: web.Request) -> web.Response:
        doc = self.policy.current()
        policy_ok = doc is not None or self.settings.ingress_dev_mode
        ok = self.gateway.ready and policy_ok
        return json_response({"status": "ok" if ok else "unavailable", "kafka": self.gateway.ready,
                              "policy_version": doc.version if doc else None,
                              "dev_mode": doc is None and self.settings.ingress_dev_mode}, status=200 if ok else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def usage_of(response: Response) -> dict[str, Any]:
    usage = response.usage
    return {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens}}


def _new_request_id() -> str:
    return uuid.uuid4().hex


SSE_CHUNK_WORDS = 8


def sse_events(response: Response, body: ChatBody) -> list[dict[str, Any]]:
    """The final answer as ``chat.completion.chunk`` events: role, the content in word chunks, stop, [usage]."""
    base = {"id": f"chatcmpl-{response.request_id}", "object": "chat.completion.chunk",
            "created": response.created_at_ns // 1_000_000_000, "model": response.model or body.model,
            "system_fingerprint": None}

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}

    words = (response.answer or "").split(" ")
    pieces = [" ".join(words[i:i + SSE_CHUNK_WORDS]) + (" " if i + SSE_CHUNK_WORDS < len(words) else "")
              for i in range(0, len(words), SSE_CHUNK_WORDS)]
    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": piece}) for piece in pieces if piece]
    events.append(chunk({}, "stop", tollway=tollway_extension(response)))
    if (body.stream_options or {}).get("include_usage"):
        events.append({**base, "choices": [], "usage": usage_of(response)})
    return events


INGRESS = web.AppKey("ingress", Ingress)


def build_app(ingress: Ingress) -> web.Application:
    app = web.Application(client_max_size=ingress.settings.max_message_bytes)
    app.router.add_post("/v1/chat/completions", ingress.chat)
    app.router.add_get("/v1/models", ingress.models)
    app.router.add_get("/healthz", ingress.healthz)
    app.router.add_get("/metrics", ingress.metrics)
    app[INGRESS] = ingress
    return app


def load_catalog_or_none(settings: Settings) -> ModelCatalog | None:
    try:
        return get_catalog(settings.models_file)
    except ConfigError as exc:
        log.warning("no model catalog (%s): /v1/models lists only `auto` and any model name is accepted", exc)
        return None


# ---------------------------------------------------------------------------------------------- the Kafka side
class KafkaGateway:
    """The SDK client as the ingress's gateway. It connects in the background and keeps retrying, so the server is
    up (answering 503 and failing /healthz) while Kafka is not, instead of crash-looping."""

    def __init__(self, settings: Settings, *, reply_topic: str | None = None) -> None:
        self.client = TollwayClient(settings, reply_to=reply_topic)
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready

    async def connect(self, *, first_delay_s: float = 0.5, max_delay_s: float = 10.0) -> None:
        delay = first_delay_s
        while True:
            try:
                await self.client.start()
            except ServiceUnavailable as exc:
                log.warning("Kafka not reachable yet (%s); retrying in %.1f s", exc, delay)
                await self.client.close()
                await asyncio.sleep(delay)  # reconnect backoff, not synchronisation
                delay = min(delay * 2, max_delay_s)
                continue
            self._ready = True
            return

    async def publish(self, env: Envelope) -> None:
        if not self._ready:
            raise ServiceUnavailable("not connected to Kafka")
        await self.client.submit_envelopes([env], sign=False)

    async def wait(self, request_id: str, timeout_s: float) -> Response:
        self.client.replies.expect([request_id])
        return await self.client.replies.wait(request_id, timeout_s)

    async def close(self) -> None:
        self._ready = False
        await self.client.close()


class _Followed:
    """The policy in force: a fixed document from the policy file, or the policy topic's follower once started."""

    def __init__(self, settings: Settings) -> None:
        self.fixed = load_policy_file(settings.policy_file) if settings.policy_file else None
        self.store = None if self.fixed else PolicyStore(settings)
        self.started = False

    def current(self) -> PolicyDocument | None:
        if self.fixed is not None:
            return self.fixed
        return self.store.current() if self.store is not None and self.started else None

    async def connect(self) -> None:
        if self.store is None:
            return
        delay = 0.5
        while True:
            try:
                await self.store.start()
            except ServiceUnavailable as exc:
                log.warning("policy topic not readable yet (%s); retrying in %.1f s", exc, delay)
                await self.store.stop()
                self.store = PolicyStore(self.store.settings)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self.started = True
            return

    async def stop(self) -> None:
        if self.store is not None and self.started:
            await self.store.stop()


@contextlib.asynccontextmanager
async def serving(settings: Settings, *, host: str = "127.0.0.1", port: int = 8080,
                  reply_topic: str | None = None, wait_ready_s: float | None = None,
                  ) -> AsyncIterator[tuple[Ingress, int]]:
    """Run the ingress on ``host:port`` (0: a free port) until the block exits; yields it and the bound port.

    It serves at once (503 until Kafka and the policy are reached); ``wait_ready_s`` waits for both first.
    """
    gateway = KafkaGateway(settings, reply_topic=reply_topic)
    policy = _Followed(settings)
    redis_client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
    ingress = Ingress(settings=settings, gateway=gateway, policy=policy,
                      idempotency=RedisIdempotencyStore(redis_client, prefix=settings.topic_prefix,
                                                        ttl_s=settings.idempotency_ttl_s),
                      catalog=load_catalog_or_none(settings))
    connecting = [asyncio.create_task(gateway.connect(), name="ingress-kafka"),
                  asyncio.create_task(policy.connect(), name="ingress-policy")]
    runner = web.AppRunner(build_app(ingress), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=2048)
        await site.start()
        bound = runner.addresses[0][1]
        if wait_ready_s is not None:
            await asyncio.wait_for(asyncio.gather(*(asyncio.shield(t) for t in connecting)), wait_ready_s)
        if settings.ingress_dev_mode:
            log.warning("ingress dev mode: while no policy is in force, requests need no API key")
        yield ingress, bound
    finally:
        for task in connecting:
            task.cancel()
        await asyncio.gather(*connecting, return_exceptions=True)
        await runner.cleanup()
        await gateway.close()
        await policy.stop()
        await redis_client.aclose()
