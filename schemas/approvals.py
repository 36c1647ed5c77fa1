"""Approvals of held tool calls, on the compacted ``<prefix>.tools.approvals`` topic keyed by ``approval_id``.

The tools stage writes ``state: pending`` when a call of a tool the tenant holds for approval (``tools.approval``)
arrives; ``tollway approve ID`` / ``tollway deny ID`` write ``approved`` / ``denied`` under the same key (so the
compacted topic keeps each approval's last word). The id is derived from the call's effect key, so a redelivered
call finds its decision.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ApprovalState = Literal["pending", "approved", "denied"]


class ApprovalEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    kind: Literal["approval"] = "approval"
    approval_id: str = Field(pattern=r"^ap_[0-9a-f]{20}$")
    state: ApprovalState
    request_id: str = ""
    tenant: str = ""
    tool: str = ""
    arguments: dict[str, Any] = Field(default_factory=dict)  # as they would be executed (redacted)
    arguments_sha256: str = ""
    deadline_ns: int = 0  # the call gives up waiting then (approval_timeout)
    by: str = ""  # who decided (the operator's name, `tollway approve --by`)
    reason: str = ""
    at_ns: int = 0
