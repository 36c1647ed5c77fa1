"""The approval hold: a call of a tool the tenant holds (``tools.approval``) waits until an operator approves or
denies it (``tollway approve ID`` / ``tollway deny ID``), or until its deadline — the tenant's
``approval_timeout_ms``, cut to what the request's budget leaves. Denied → ``approval_denied``, nobody answered →
``approval_timeout``: both structured errors the model reads and the audit records; the tool never ran.

The book is a Protocol: :class:`MemoryApprovals` here (tests, ``streams.testing``), the Kafka one in
``streams/stages/tools.py`` (the compacted approvals topic, followed by every tools worker).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from typing import Protocol

from schemas.approvals import ApprovalEvent
from schemas.errors import ToolFailure


def approval_id(effect_key: str) -> str:
    return "ap_" + hashlib.sha256(effect_key.encode()).hexdigest()[:20]


class ApprovalBook(Protocol):
    async def ask(self, pending: ApprovalEvent) -> None:
        """Publish a pending approval (once per id: a redelivered call does not ask again)."""

    async def wait(self, approval_id: str, timeout_s: float) -> ApprovalEvent | None:
        """The decision (approved or denied), or None when none came within ``timeout_s``."""


class NoApprovals:
    async def ask(self, pending: ApprovalEvent) -> None:
        raise ToolFailure("tool_unavailable", "no approvals topic is configured in this worker: a held tool cannot "
                                              "be approved")

    async def wait(self, approval_id: str, timeout_s: float) -> ApprovalEvent | None:
        return None


@dataclass
class MemoryApprovals:
    events: dict[str, ApprovalEvent] = field(default_factory=dict)
    _changed: dict[str, asyncio.Event] = field(default_factory=dict)

    def record(self, event: ApprovalEvent) -> None:
        """Take an event (the Kafka book's follower calls this for each record of the topic)."""
        current = self.events.get(event.approval_id)
        if current is not None and current.state != "pending" and event.state == "pending":
            return  # a late repeat of the request never undoes a decision
        self.events[event.approval_id] = event
        if event.state != "pending":
            self._changed.setdefault(event.approval_id, asyncio.Event()).set()

    def pending(self) -> list[ApprovalEvent]:
        return [e for e in self.events.values() if e.state == "pending"]

    async def ask(self, pending: ApprovalEvent) -> None:
        if pending.approval_id not in self.events:
            self.record(pending)

    async def wait(self, approval_id: str, timeout_s: float) -> ApprovalEvent | None:
        decided = self.events.get(approval_id)
        if decided is not None and decided.state != "pending":
            return decided
        changed = self._changed.setdefault(approval_id, asyncio.Event())
        try:
            await asyncio.wait_for(changed.wait(), max(0.0, timeout_s))
        except TimeoutError:
            return None
        return self.events[approval_id]
