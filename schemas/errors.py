"""One exception tree for all of tollway.

    TollwayError
    ├── ConfigError            settings, catalogs or policy documents that do not validate
    ├── BadEvent               bytes on a topic that are not a valid event (dead-lettered, never fatal)
    │   └── UnknownSchemaVersion
    ├── PolicyDenied           a request refused by governance; carries a machine-readable ``code``
    ├── ToolFailure            a tool call refused by governance or failed; its ``code`` goes back to the model
    ├── DeadlineExceeded       the request cannot finish within its latency budget
    ├── BackendError           a model, embedder, Redis or Kafka call failed (``retryable`` says if it may pass later)
    │   └── RateLimitedByBackend  a backend answered 429; ``retry_after_s`` when it said so
    ├── ServiceUnavailable     a required service (Kafka, Redis) cannot be reached
    └── AuditLogCorrupt        an audit chain on disk does not verify; the stage refuses to append to it

Errors from aiokafka, redis and httpx are converted where they enter our code (``raise BackendError(...) from exc``).
"""

from __future__ import annotations


class TollwayError(Exception):
    """Root of every error tollway raises on purpose."""


class ConfigError(TollwayError):
    """A configuration, catalog or policy document is invalid; the message names the offending field."""


class BadEvent(TollwayError):
    """Bytes that cannot be turned into a valid event. ``reason`` is a short machine-readable tag."""

    def __init__(self, message: str, *, reason: str = "invalid_event") -> None:
        super().__init__(message)
        self.reason = reason


class UnknownSchemaVersion(BadEvent):
    def __init__(self, version: object) -> None:
        super().__init__(f"unknown schema_version {version!r}", reason="unknown_schema_version")


class PolicyDenied(TollwayError):
    """A governance decision refused the request. ``code`` is one of the documented denial codes."""

    def __init__(self, code: str, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after_s = retry_after_s


class ToolFailure(TollwayError):
    """A tool call that could not run (denied, bad arguments, over its deadline) or failed. It never ends the request:
    the tools stage turns it into a structured tool error the model sees and the audit records."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class DeadlineExceeded(TollwayError):
    """The remaining latency budget cannot cover the work left."""


class BackendError(TollwayError):
    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class RateLimitedByBackend(BackendError):
    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message, retryable=True)
        self.retry_after_s = retry_after_s


class ServiceUnavailable(TollwayError):
    """Kafka or Redis cannot be reached."""


class AuditLogCorrupt(TollwayError):
    """An audit chain does not verify (or cannot be leased); run ``tollway audit verify`` to find the bad index."""
