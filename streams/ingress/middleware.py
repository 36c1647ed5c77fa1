"""What every ingress request passes through: header limits, OpenAI's error shape for every error (ours, aiohttp's
routing and body limits, and a bug's 500), and the request metrics.

aiohttp's HTTP parser refuses header lines over its own limit with a plain-text 400 before any middleware runs, so
:data:`PARSER_LIMITS` raises that limit well above :data:`MAX_HEADER_BYTES`, and :func:`openai_errors` refuses the
headers between the two with a 431 in OpenAI's shape; only a header over ``PARSER_LIMITS`` (64 KiB) still gets
aiohttp's plain 400.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import Counter, Histogram

from streams.ingress.errors import HttpError, from_status, invalid_request
from streams.ingress.openai import error_response

log = logging.getLogger(__name__)

REQUESTS = Counter("tollway_ingress_requests_total", "HTTP requests answered by the ingress", ["route", "status"])
LATENCY = Histogram("tollway_ingress_request_seconds", "HTTP request to answer, by route", ["route"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))

MAX_HEADER_BYTES = 8_190  # one header value (aiohttp's own default limit, now answered in OpenAI's shape)
MAX_HEADERS_BYTES = 32_768  # all header values together
MAX_PATH_BYTES = 8_190
PARSER_LIMITS = {"max_field_size": 65_536, "max_line_size": 65_536}  # aiohttp's RequestHandler arguments

_ROUTES = {"/v1/chat/completions": "chat", "/v1/models": "models", "/healthz": "healthz", "/metrics": "metrics"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def check_headers(request: web.Request) -> None:
    """Refuse oversized or undecodable headers (aiohttp hands bytes that are not UTF-8 on as lone surrogates,
    which would fail wherever a header is encoded again: key hashing, idempotency scopes, the envelope)."""
    if len(request.raw_path) > MAX_PATH_BYTES:
        raise from_status(414, f"the request target is longer than {MAX_PATH_BYTES} characters")
    total = 0
    for name, value in request.headers.items():
        size = len(value)
        total += size
        if size > MAX_HEADER_BYTES:
            raise HttpError(431, f"the {name} header is longer than {MAX_HEADER_BYTES} characters",
                            type_="invalid_request_error", code="header_too_large", param=name)
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError as exc:
                raise invalid_request(f"the {name} header is not valid UTF-8", code="invalid_header",
                                      param=name) from exc
    if total > MAX_HEADERS_BYTES:
        raise HttpError(431, f"the request headers are longer than {MAX_HEADERS_BYTES} characters together",
                        type_="invalid_request_error", code="header_too_large")


def _message_for(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 404:
        return f"{request.path} is not an endpoint here (POST /v1/chat/completions, GET /v1/models, /healthz, /metrics)"
    if exc.status == 405:
        return f"{request.method} is not allowed on {request.path}"
    return exc.text or exc.reason


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer that is not a success in OpenAI's error shape; count and time it by route."""
    started = time.perf_counter()
    route = _ROUTES.get(request.path, "other")
    try:
        check_headers(request)
        response = await handler(request)
    except HttpError as exc:
        response = error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # a redirect is not an error
        response = error_response(from_status(exc.status, _message_for(request, exc)))
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
    except Exception:
        log.exception("ingress %s %s failed", request.method, request.path)
        response = error_response(HttpError(500, "the ingress failed on this request (a bug: see its log)",
                                            type_="server_error", code="internal_error"))
    REQUESTS.labels(route, str(response.status)).inc()
    LATENCY.labels(route).observe(time.perf_counter() - started)
    return response
