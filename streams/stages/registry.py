"""The table of tollway's stages, in route order: each declared once, with its pure ``process`` (``workers/``) and the
wiring that opens its context from settings (``streams/stages/<stage>.py``). The runner, ``tollway worker``, the
bench and :mod:`streams.testing` read this table; mypy checks that each ``process`` gets the context its wiring
builds.
"""

from __future__ import annotations

from typing import Any, Final

from schemas.envelope import STAGES as STAGE_NAMES
from schemas.errors import ConfigError
from streams.runtime.stage import Stage
from streams.stages import audit as audit_wiring
from streams.stages import cache as cache_wiring
from streams.stages import model as model_wiring
from streams.stages import policy as policy_wiring
from streams.stages import postprocess as postprocess_wiring
from streams.stages import retrieval as retrieval_wiring
from streams.stages import tools as tools_wiring
from workers import model, policy, postprocess, retrieval
from workers.audit import stage as audit
from workers.audit.stage import AuditContext
from workers.cache import stage as cache
from workers.cache.stage import CacheContext
from workers.model import ModelContext
from workers.policy import PolicyContext
from workers.postprocess import PostprocessContext
from workers.retrieval import RetrievalContext
from workers.tools import stage as tools
from workers.tools.stage import ToolsContext

STAGES: Final[tuple[Stage[Any], ...]] = (
    Stage("retrieval", RetrievalContext, retrieval.process, retrieval_wiring.open_context, entry=True),
    Stage("policy", PolicyContext, policy.process, policy_wiring.open_context, decides=True),
    Stage("cache", CacheContext, cache.process, cache_wiring.open_context, governed=True),
    Stage("model", ModelContext, model.process, model_wiring.open_context, governed=True, seals_tool_calls=True),
    # only when the model asks for tools (model → tools → model …): a governed stage like the model
    Stage("tools", ToolsContext, tools.process, tools_wiring.open_context, governed=True),
    Stage("postprocess", PostprocessContext, postprocess.process, postprocess_wiring.open_context, governed=True),
    Stage("audit", AuditContext, audit.process, audit_wiring.open_context, sink=True, governed=True),
)
BY_NAME: Final[dict[str, Stage[Any]]] = {stage.name: stage for stage in STAGES}
assert tuple(BY_NAME) == STAGE_NAMES, "the registry and the envelope schema list the same stages in route order"


def stage(name: str) -> Stage[Any]:
    try:
        return BY_NAME[name]
    except KeyError:
        raise ConfigError(f"unknown stage {name!r}; choose from {', '.join(BY_NAME)}") from None


def resolve(names: list[str] | tuple[str, ...]) -> list[Stage[Any]]:
    """``tollway worker`` arguments → stages: ``all`` (or nothing) is every stage; names keep their order, once."""
    units = resolve_units(names)
    return [stage for unit in units for stage in (unit if isinstance(unit, list) else [unit])]


def resolve_units(names: list[str] | tuple[str, ...]) -> list[Stage[Any] | list[Stage[Any]]]:
    """Like :func:`resolve`, and ``a+b+c`` runs those stages co-located as one consumer group (a chain, in route
    order): e.g. ``retrieval+policy+cache model postprocess audit``, or ``all+`` for the whole route as one chain."""
    if list(names) in (["all"], []):
        return list(STAGES)
    if list(names) == ["all+"]:
        return [list(STAGES)]
    if any(name in ("all", "all+") for name in names):
        raise ConfigError(f"'all' and 'all+' stand alone (every stage already): got {' '.join(names)}")
    units: list[Stage[Any] | list[Stage[Any]]] = []
    seen: set[str] = set()
    for name in names:
        members = [part.strip() for part in name.split("+") if part.strip()]
        unknown = [m for m in members if m not in BY_NAME]
        if unknown or not members:
            raise ConfigError(f"unknown stage(s) {unknown or [name]}; choose from {', '.join(BY_NAME)}, 'all', "
                              f"'all+' or stages joined with '+' (run co-located)")
        repeated = [m for m in members if m in seen]
        if repeated:
            raise ConfigError(f"stage(s) {repeated} named twice: a stage runs in one group of a process")
        seen.update(members)
        ordered = [stage for stage in STAGES if stage.name in members]  # a chain works in route order
        units.append(ordered if len(ordered) > 1 else ordered[0])
    return units
