"""``tollway serve``'s aiohttp application: an OpenAI-compatible front door that publishes each request to Kafka and
answers with its response.

    POST /v1/chat/completions   chat completion; ``stream: true`` answers as server-sent events (the final answer in
                                chunks: the pipeline produces whole answers)
    GET  /v1/models             the model catalog (what the caller's tenant may reach), plus ``auto`` (routed)
    GET  /healthz               200 when Kafka and a policy (or dev mode) are ready, 503 otherwise
    GET  /metrics               Prometheus

**Keys.** ``Authorization: Bearer tw_…`` is verified against the policy in force (the policy topic, or
``TOLLWAY_POLICY_FILE``) — one scrypt per key and policy version, cached (streams/clients/principals.py); the
envelope then carries the key id and a signed principal, never the key. With no policy in force the ingress fails
closed (503), unless ``TOLLWAY_INGRESS_DEV_MODE=true``: then requests need no key and the tenant is
``X-Tollway-Tenant`` (default ``dev``), as the policy stage allows everything without a policy.

**Errors** use OpenAI's shape (streams/ingress/openai.py); the status follows the outcome
(streams/ingress/errors.py). Tollway-only request options go in a ``tollway`` body field (``extra_body`` in the
OpenAI SDK): tier, budget_ms, task_id, session_id, quality_tier, cache, tools_mode.

**Tools** (streams/ingress/tools.py): OpenAI's ``tools`` / ``tool_choice`` / ``tool_calls`` / ``role: tool``,
server-executed (registered tools, tollway answers) or client-executed (``finish_reason: "tool_calls"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from schemas.envelope import Tier
from schemas.errors import ServiceUnavailable
from schemas.policy import PolicyDocument
from schemas.response import Response
from streams.clients.envelopes import EnvelopeFactory
from streams.clients.principals import Identity, KeyCache, PolicySource
from streams.ingress.envelope import envelope_for
from streams.ingress.errors import HttpError, http_status_for
from streams.ingress.gateway import Gateway
from streams.ingress.idempotency import Claim, IdempotencyStore, fingerprint, request_id_for, scope_of
from streams.ingress.middleware import PARSER_LIMITS, openai_errors
from streams.ingress.openai import (
    ChatBody,
    completion_body,
    error_from_response,
    invalid_body,
    json_response,
    parse_body,
    sse_events,
    to_messages,
    tollway_headers,
)
from streams.ingress.tools import MODE_HEADER, check_registered, check_tools, function_tools, mode_of
from streams.runtime import tracing
from streams.settings import Settings
from workers.routing.catalog import ModelCatalog
from workers.tools.governance import offered_tools

log = logging.getLogger(__name__)

GRACE_S = 2.0  # the pipeline answers deadline_exceeded itself; wait this much past the deadline before giving up


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

    def registered_tools(self, identity: Identity) -> list[str]:
        """The tools tollway may run for this tenant (none without a policy)."""
        doc = self.policy.current()
        if not isinstance(doc, PolicyDocument):
            return []
        return offered_tools(doc, doc.tenant(identity.tenant))

    # ------------------------------------------------------------------ handlers
    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise HttpError(413, f"the request body is larger than {self.settings.max_message_bytes} bytes",
                            type_="invalid_request_error", code="request_too_large") from exc
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
        budget_ms = options.budget_ms or self.settings.budget_ms_for(tier)
        wait_s = budget_ms / 1000 + GRACE_S
        tools_mode = mode_of(request.headers.get(MODE_HEADER), options.tools_mode)
        check_tools(body.tools, body.tool_choice, to_messages(body.messages),
                    legacy={i for i, m in enumerate(body.messages) if m.role == "function"})
        check_registered(function_tools(body.tools), tools_mode, self.registered_tools(identity))

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
            # The caller's W3C trace context is continued (a malformed one is ignored, as W3C asks).
            caller = tracing.incoming(request.headers.get("traceparent"), request.headers.get("tracestate"))
            env = envelope_for(body, identity, tier, budget_ms, request_id,
                               EnvelopeFactory(self.settings, policy=self.policy), parent_trace=caller,
                               tools_mode=tools_mode)
            await self.gateway.publish(env)
        except BaseException as exc:
            # Nothing is in flight: free the key whatever went wrong, so the caller's retry is worked instead of
            # waiting on a lease (a retry gets the same request id, and the pipeline deduplicates by it).
            await self._release(scope, claim)
            if isinstance(exc, ValidationError):
                raise invalid_body(exc) from exc
            if isinstance(exc, ServiceUnavailable):
                raise HttpError(503, f"Kafka is unreachable: {exc}", type_="server_error",
                                code="kafka_unavailable", retry_after_s=1) from exc
            raise
        try:
            response = await self.gateway.wait(env.request_id, wait_s)
        except TimeoutError as exc:
            raise HttpError(504, f"no response within the {budget_ms} ms budget", type_="timeout_error",
                            code="deadline_exceeded") from exc
        if scope is not None and claim is not None and self.idempotency is not None:
            try:
                await self.idempotency.finish(scope, claim, response)
            except ServiceUnavailable as exc:
                # The answer exists: give it. A retry with the key finds it pending until the lease runs out, then
                # is worked again under the same request id, which the pipeline answers as a replay.
                log.warning("idempotency record not stored for %s: %s", env.request_id, exc)
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
                try:
                    stored = await self.idempotency.get(scope)
                except ServiceUnavailable as exc:
                    raise HttpError(503, str(exc), type_="server_error", code="redis_unavailable") from exc
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
        return json_response(completion_body(response, body), headers=headers)

    async def models(self, request: web.Request) -> web.Response:
        identity = await self.identify(request)
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



INGRESS = web.AppKey("ingress", Ingress)


def build_app(ingress: Ingress) -> web.Application:
    app = web.Application(client_max_size=ingress.settings.max_message_bytes, middlewares=[openai_errors],
                          handler_args=PARSER_LIMITS)
    app.router.add_post("/v1/chat/completions", ingress.chat)
    app.router.add_get("/v1/models", ingress.models)
    app.router.add_get("/healthz", ingress.healthz)
    app.router.add_get("/metrics", ingress.metrics)
    app[INGRESS] = ingress
    return app
