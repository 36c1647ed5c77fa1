"""What the HTTP ingress answers when it does not answer 200: :class:`HttpError` for the ingress's own refusals, and
the HTTP status each pipeline outcome maps to (:func:`http_status_for`).

Every error leaves the ingress in OpenAI's shape (``streams/ingress/openai.py: error_body``); a client's mistake is a
4xx, never a 500.
"""

from __future__ import annotations

from schemas.envelope import Status
from schemas.response import Response


class HttpError(Exception):
    """A request the ingress refuses itself, before or instead of the pipeline: status, OpenAI type and code."""

    def __init__(self, status: int, message: str, *, type_: str, code: str, param: str | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.retry_after_s = retry_after_s


def invalid_request(message: str, *, code: str = "invalid_value", param: str | None = None,
                    status: int = 400) -> HttpError:
    """The caller sent something we cannot take (a 4xx ``invalid_request_error``)."""
    return HttpError(status, message, type_="invalid_request_error", code=code, param=param)


# OpenAI's error type and a code for a status aiohttp itself raises (unknown route, wrong method, body too large, …).
_TYPE_BY_STATUS = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
_CODE_BY_STATUS = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large", 414: "uri_too_long",
                   415: "unsupported_media_type", 431: "header_too_large"}


def from_status(status: int, message: str) -> HttpError:
    """An :class:`HttpError` for a status raised outside our handlers (aiohttp's routing and body reading)."""
    type_ = _TYPE_BY_STATUS.get(status, "invalid_request_error" if status < 500 else "server_error")
    return HttpError(status, message, type_=type_, code=_CODE_BY_STATUS.get(status, f"http_{status}"))


_DENIAL_STATUS: dict[str, tuple[int, str]] = {
    "unauthenticated": (401, "authentication_error"),
    "forbidden_model": (403, "permission_error"),
    "residency_violation": (403, "permission_error"),
    "pii_blocked": (403, "permission_error"),
    "injection_blocked": (403, "permission_error"),
    "rate_limited": (429, "rate_limit_error"),
    "budget_exceeded": (429, "insufficient_quota"),
}


# The router's words for a model it skipped because its backend is failing (workers/routing/router.py): the request
# itself was fine, so it is worth retrying once the circuit closes.
_TRANSIENT_ROUTING = "circuit open"


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
    if response.status is Status.FAILED and response.code == "no_eligible_model":
        # A routing decision, not a crash: no model satisfies the request's tier, model, policy and context window
        # (the caller must change the request: 400), or the only ones that would are behind an open circuit (503).
        if _TRANSIENT_ROUTING in response.message:
            return 503, "server_error"
        return 400, "invalid_request_error"
    return 500, "server_error"
