"""What a stage is to the runtime: a name, a pure batch function typed on its own context, and how to open that
context. The table of tollway's stages is ``streams/stages/registry.py``; the runner, ``tollway worker``, the bench
and the test harness all read it, so a stage is declared exactly once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from schemas.envelope import Envelope
from streams.settings import Settings
from workers.context import StageContext, derive

C = TypeVar("C", bound=StageContext)

ProcessFn = Callable[[list[Envelope], C], Awaitable[list[Envelope]]]
OpenContext = Callable[[Settings, StageContext], AbstractAsyncContextManager[C]]


@asynccontextmanager
async def base_context(_settings: Settings, base: StageContext) -> AsyncIterator[StageContext]:
    """For stages that need nothing but the shared base context (the bench's pass-through stages, user stages)."""
    yield base


@dataclass(frozen=True)
class Stage(Generic[C]):
    """One stage: ``process`` receives exactly the ``context`` type ``open_context`` builds, so no stage downcasts.

    ``sink``: the route ends here — the stage sees every request exactly once whatever its outcome (the audit
    stage): it is never skipped for terminal requests, a request reaching it without an outcome is ended
    ``no_outcome`` and answered, and it forwards nothing. ``entry``: it also reads the ingress topics.
    ``decides``: the runner seals what this stage decided (the policy stage: ``workers/decisions.py``).
    ``governed``: the runner refuses any request whose sealed decision is missing or does not match it.
    """

    name: str
    context: type[C]
    process: ProcessFn[C]
    open_context: OpenContext[C]
    sink: bool = False
    entry: bool = False
    decides: bool = False
    governed: bool = False
    seals_tool_calls: bool = False  # the runner seals the tool calls this stage asked for (the model stage)

    def memory_context(self, base: StageContext, **backends: Any) -> C:
        """The stage's context on its in-memory backends (every context field has one), for tests and the bench."""
        return derive(self.context, base, **backends)

    def __repr__(self) -> str:
        return f"Stage({self.name!r})"
