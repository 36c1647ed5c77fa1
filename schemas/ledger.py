"""Ledger events and rows: what the cost ledger publishes, answers and compares.

Money is integer micro-dollars (``*_micros``); window starts are epoch milliseconds (UTC, tumbling).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.envelope import SCHEMA_VERSION

LedgerWindow = Literal["hour", "day"]
TaskOutcome = Literal["resolved", "failed"]
TOOL_PREFIX = "tool:"  # the model label of a tool's ledger row: each tool call of an agent loop is booked apart
CASCADE_PREFIX = "cascade:"  # the label of a cascade's escalated cheaper call's row (``cascade:<model>``)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OutcomeEvent(_Model):
    """A producer's verdict on a task (an agent run, a ticket), published to ``<prefix>.outcomes`` keyed by task_id.

    The last event for a (tenant, task_id) wins, so an outcome can be corrected by publishing again.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    kind: Literal["outcome"] = "outcome"
    tenant: str = Field(min_length=1, max_length=128)
    task_id: str = Field(min_length=1, max_length=200)
    outcome: TaskOutcome
    at_ns: int


class LedgerRow(_Model):
    """One cell of the cost ledger: a tenant × model × tumbling window; ``model`` is ``tool:<name>`` for the calls of
    one tool by agent loops (so a step's model turns and tool calls are costed apart)."""

    tenant: str
    model: str
    window: LedgerWindow
    window_start_ms: int
    requests: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    cost_micros: int = 0
    cache_hits: int = 0
    saved_micros: int = 0
    denials: int = 0
    failures: int = 0
    deadline_misses: int = 0
    # online evaluators: responses judged and passed per evaluator (a refusal is counted, not passed)
    grounded_evaluated: int = 0
    grounded_passed: int = 0
    structured_evaluated: int = 0
    structured_passed: int = 0
    refusal_evaluated: int = 0
    refusals: int = 0
    slo_evaluated: int = 0
    slo_passed: int = 0
    # a ``tool:<name>`` row: that tool's calls (requests 0; its cost is taken out of the calling model's row)
    tool_calls: int = 0
    # a ``cascade:<model>`` row: that model's answers that failed verification and were escalated (requests 0; their
    # cost is taken out of the answering model's row)
    cascade_calls: int = 0

    @property
    def cost_per_1k_requests_micros(self) -> int:
        """``cost_micros × 1000 / requests`` rounded half up (0 without requests)."""
        return (self.cost_micros * 2000 + self.requests) // (2 * self.requests) if self.requests else 0

    def pass_rates(self) -> dict[str, float | None]:
        """Share of judged responses that passed, per evaluator (None: none judged). No refusal is a pass."""
        def rate(passed: int, judged: int) -> float | None:
            return round(passed / judged, 4) if judged else None
        return {"grounded": rate(self.grounded_passed, self.grounded_evaluated),
                "structured_output": rate(self.structured_passed, self.structured_evaluated),
                "no_refusal": rate(self.refusal_evaluated - self.refusals, self.refusal_evaluated),
                "slo_met": rate(self.slo_passed, self.slo_evaluated)}


class OutcomeRow(_Model):
    """Cost per task outcome for one tenant: ``cost_per_task_micros`` is ``cost_micros / tasks`` rounded half up."""

    tenant: str
    outcome: Literal["resolved", "failed", "open"]
    tasks: int
    requests: int
    cost_micros: int
    cost_per_task_micros: int


class LedgerSnapshot(_Model):
    """What the ledger worker's ``/ledger/`` endpoint answers.

    ``positions`` maps each partition of the responses topic to the highest offset the ledger has applied there
    (-1: none): a reader that aggregates exactly the records up to those offsets must get the same totals.
    """

    rows: list[LedgerRow] = Field(default_factory=list)
    outcomes: list[OutcomeRow] = Field(default_factory=list)
    positions: dict[int, int] = Field(default_factory=dict)


class RepriceRow(_Model):
    tenant: str
    requests: int
    old_cost_micros: int
    new_cost_micros: int
    unpriced_requests: int = 0  # requests whose model is missing from the price file (kept at their old cost)

    @property
    def delta_micros(self) -> int:
        return self.new_cost_micros - self.old_cost_micros
