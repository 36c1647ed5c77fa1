"""Policy stage: authentication, authorisation, residency, PII, injection, rate limits and budgets.

Per request, in this order (the first refusal ends it with a terminal ``denied`` outcome and a machine-readable
code): tenant known → principal verified (``unauthenticated``) → model and tier allowed (``forbidden_model``) and
reachable within the tenant's regions (``residency_violation``) → injection score (``injection_blocked``) → PII
redacted in the prompt and the retrieved passages (``pii_blocked``) → then, for the whole batch in one backend
call, rate limits (``rate_limited`` with retry-after) and the budget reservation (``budget_exceeded``).

Every decision records the deciding ``policy_version`` on ``env.policy``. With no policy document loaded at all, the
stage allows and records ``policy_version="none"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import SecretStr

from schemas.envelope import DEFAULT_ROUTE, Envelope, PolicyDecision, Status
from schemas.errors import PolicyDenied
from schemas.policy import ModelSpec, PiiAction, PolicyDocument, TenantPolicy
from workers.context import StageContext
from workers.detectors import injection
from workers.detectors.pii import Redactor
from workers.detectors.semantic import SemanticScorer
from workers.keys import verify_principal
from workers.limits import AdmissionRequest, Limits, MemoryLimits, Scope, Verdict, build_admission
from workers.routing.router import prompt_tokens
from workers.tools.governance import offered_tools
from workers.tools.modes import tools_for

NAME = "policy"
DEV_PRINCIPAL_SECRET = SecretStr("tollway-dev-secret-change-me")


class PolicySource(Protocol):
    """Where the current policy document comes from (the Kafka follower, or a fixed one in tests)."""

    def current(self) -> PolicyDocument | None: ...


@dataclass
class StaticPolicy:
    document: PolicyDocument | None = None

    def current(self) -> PolicyDocument | None:
        return self.document


@dataclass(frozen=True)
class PolicyContext(StageContext):
    policy: PolicySource = field(default_factory=StaticPolicy)
    limits: Limits = field(default_factory=MemoryLimits)
    principal_secret: SecretStr = DEV_PRINCIPAL_SECRET
    # The injection detector's optional semantic head (TOLLWAY_INJECTION_SEMANTIC; None: rules + n-grams only).
    injection_semantic: SemanticScorer | None = None


class EmbedderSettings(Protocol):
    """What :func:`route_for` reads from settings (``streams.settings.Settings`` satisfies it)."""

    @property
    def embedder(self) -> str: ...


LOCAL_EMBEDDERS = frozenset({"hashing", "static"})  # in-process: prompts never leave the worker


def route_for(policy: PolicyDocument | None, settings: EmbedderSettings | None = None, *,
              remote_embedder: bool = False) -> list[str]:
    """The route a producer should give a new request.

    The default is retrieval → policy → cache → model → postprocess → audit. When the embedder is remote (the
    policy's ``embedder.remote``, an embedder in settings other than the in-process ``hashing`` one, or the caller
    says so), the prompt would leave the pipeline before redaction, so policy runs first:
    policy → retrieval → cache → model → postprocess → audit. Retrieved passages then arrive after the policy stage;
    the retrieval stage must not put unredacted passages in front of a remote model
    (``workers.detectors.pii.Redactor``).
    """
    remote = (remote_embedder or (policy is not None and policy.embedder.remote)
              or (settings is not None and settings.embedder not in LOCAL_EMBEDDERS))
    if remote:
        return ["policy", "retrieval", *[s for s in DEFAULT_ROUTE if s not in ("policy", "retrieval")]]
    return list(DEFAULT_ROUTE)


async def process(batch: list[Envelope], ctx: PolicyContext) -> list[Envelope]:
    doc = ctx.policy.current()
    if doc is None:
        for env in batch:
            env.policy = PolicyDecision(policy_version="none", decisions=["allow: no policy loaded"])
            # No policy, no registered tools — only the caller's own, client-executed (never a producer's tool state).
            env.tools, _line = tools_for(env.request, [])
        return batch
    now_ns = ctx.clock.now_ns()
    admissions: list[tuple[Envelope, AdmissionRequest]] = []
    for env in batch:
        env.policy = PolicyDecision(policy_version=doc.version)
        try:
            admission = decide(env, doc, ctx, now_ns)
        except PolicyDenied as denial:
            _deny(env, denial)
            continue
        if admission is not None:
            admissions.append((env, admission))
    if admissions:
        verdicts = await ctx.limits.admit([a for _, a in admissions])
        for (env, admission), verdict in zip(admissions, verdicts, strict=True):
            assert env.policy is not None
            if verdict.admitted:
                env.policy.reserved_micros = admission.cost_micros
                env.policy.reservation_id = admission.reservation_id
                env.policy.decisions.append(f"reserved {admission.cost_micros} µ$"
                                            + (" (redelivery: already reserved)" if verdict.replay else ""))
            else:
                retry = None if verdict.retry_after_s is None else round(verdict.retry_after_s, 3)
                _deny(env, PolicyDenied(verdict.code, _limit_message(verdict, admission.cost_micros),
                                        retry_after_s=retry))
    return batch


def _limit_message(verdict: Verdict, reserved_micros: int) -> str:
    # "<prefix>:rl:acme/k_12ab:rpm:29406666" → "the requests-per-minute limit of acme/k_12ab is reached"
    key = verdict.limit_key
    parts = key.split(":")
    kind, scope, what = (parts[-4], parts[-3], parts[-2]) if len(parts) >= 4 else ("", key, "")
    names = {"rpm": "requests-per-minute limit", "tpm": "tokens-per-minute limit", "day": "daily budget",
             "month": "monthly budget"}
    limit = f"the {names.get(what, what)} of {scope}"
    if kind == "rl":
        return f"{limit} is reached"
    if verdict.reason == "in_flight":
        return (f"{limit} is held by requests in flight (this one needs up to {reserved_micros} µ$); their "
                "reservations are released as they finish")
    if verdict.reason == "too_large":
        return f"this request may cost up to {reserved_micros} µ$, more than {limit} allows at all"
    return f"{limit} is spent"


def _deny(env: Envelope, denial: PolicyDenied) -> None:
    assert env.policy is not None
    env.policy.decisions.append(f"deny {denial.code}")
    env.finish(Status.DENIED, code=denial.code, stage=NAME, retry_after_s=denial.retry_after_s,
               message=f"{denial} (policy {env.policy.policy_version})")


def decide(env: Envelope, doc: PolicyDocument, ctx: PolicyContext, now_ns: int) -> AdmissionRequest | None:
    """Everything but the counters (raises :class:`PolicyDenied`); returns the admission to reserve, if any."""
    decision = env.policy
    assert decision is not None
    tenant = doc.tenant(env.tenant)
    if tenant is None:
        raise PolicyDenied("unauthenticated", f"tenant {env.tenant!r} is not known to the policy")
    key_scope = _authenticate(env, tenant, ctx)
    models = _authorise_models(env, doc, tenant)
    decision.allowed_models = models
    decision.allowed_regions = list(tenant.regions)
    decision.quality_tier = env.request.quality_tier or tenant.default_quality_tier
    decision.cache_allowed = tenant.cache.allowed and not env.request.cache.no_store
    decision.semantic_threshold = tenant.cache.semantic_threshold
    # The tools its model may be offered; whatever a producer put on env.tools is replaced, never trusted.
    env.tools, tools_line = tools_for(env.request, offered_tools(doc, tenant), denied=tenant.tools.denied,
                                      max_steps=tenant.tools.max_steps)
    if tools_line:
        decision.decisions.append(tools_line)

    texts = [m.content for m in env.request.messages]
    if env.retrieval is not None:
        texts += [p.text for p in env.retrieval.passages]
    if tenant.injection.action != "allow":
        found = injection.score(texts, semantic=ctx.injection_semantic)
        decision.injection_score = found.score
        decision.injection_rules = list(found.rules)
        if found.score >= tenant.injection.threshold:
            if tenant.injection.action == "block":
                raise PolicyDenied("injection_blocked", f"prompt injection suspected (score {found.score:.2f}: "
                                                  f"{', '.join(found.rules)})")
            decision.decisions.append(f"injection flagged {found.score:.2f}")

    redactor = Redactor(action=tenant.pii.action)
    for message in env.request.messages:
        message.content = redactor.redact(message.content)
    if env.retrieval is not None:
        for passage in env.retrieval.passages:
            passage.text = redactor.redact(passage.text)
    decision.pii_found = dict(redactor.counts)
    if redactor.blocked:
        raise PolicyDenied("pii_blocked", f"the request contains {', '.join(sorted(redactor.blocked))}, which the "
                                    "policy blocks")
    if redactor.counts:
        redacted = {e: n for e, n in redactor.counts.items() if tenant.pii.action(e) is PiiAction.REDACT}
        if redacted:
            decision.decisions.append("redacted " + ", ".join(f"{e}×{n}" for e, n in sorted(redacted.items())))

    scopes = [Scope(env.tenant, tenant.rate_limits.requests_per_minute, tenant.rate_limits.tokens_per_minute,
                    tenant.budgets.daily_micros, tenant.budgets.monthly_micros)]
    if key_scope is not None:
        scopes.append(key_scope)
    if not any(s.requests_per_minute or s.tokens_per_minute or s.daily_micros is not None
               or s.monthly_micros is not None for s in scopes):
        decision.decisions.append("allow")
        return None
    # The prompt as the model will bill it: the same count (chat framing and retrieved context included) the local
    # backend reports as usage and the router routes by, taken after redaction; output at most max_tokens.
    input_tokens = prompt_tokens(env)
    output_tokens = env.request.params.max_tokens
    cost = estimate_cost_micros(doc, models, input_tokens, output_tokens)
    decision.decisions.append("allow")
    return build_admission(ctx.topic_prefix, env.request_id, scopes, cost_micros=cost,
                           tokens=input_tokens + output_tokens, now_ns=now_ns)


def _authenticate(env: Envelope, tenant: TenantPolicy, ctx: PolicyContext) -> Scope | None:
    decision = env.policy
    assert decision is not None
    principal = env.principal
    if principal is None:
        if tenant.require_principal:
            raise PolicyDenied("unauthenticated", "the request carries no principal and the tenant requires one")
        return None
    if not verify_principal(ctx.principal_secret.get_secret_value(), env.request_id, env.tenant, principal.key_id,
                            principal.signature):
        raise PolicyDenied("unauthenticated", "the principal's signature does not verify")
    record = tenant.key(principal.key_id)
    if record is None:
        raise PolicyDenied("unauthenticated", f"key {principal.key_id} does not belong to tenant {env.tenant!r}")
    if record.revoked:
        raise PolicyDenied("unauthenticated", f"key {principal.key_id} is revoked")
    decision.principal_key_id = record.key_id
    return Scope(f"{env.tenant}/{record.key_id}", record.rate_limits.requests_per_minute,
                 record.rate_limits.tokens_per_minute, record.budgets.daily_micros, record.budgets.monthly_micros)


def _authorise_models(env: Envelope, doc: PolicyDocument, tenant: TenantPolicy) -> list[str]:
    """The models this request may reach: allowed by the tenant and, when it has regions, inside them."""
    listed = list(tenant.allowed_models) or list(doc.models)
    regions = set(tenant.regions)
    in_region = [m for m in listed if not regions or (m in doc.models and doc.models[m].region in regions)]
    tier = env.request.quality_tier
    if tier and tenant.quality_tiers and tier not in tenant.quality_tiers:
        raise PolicyDenied("forbidden_model", f"quality tier {tier!r} is not allowed for tenant {env.tenant!r}")
    requested = env.request.model
    if requested and requested != "auto":
        if listed and requested not in listed:
            raise PolicyDenied("forbidden_model", f"model {requested!r} is not allowed for tenant {env.tenant!r}")
        if regions:
            spec = doc.models.get(requested)
            if spec is None or spec.region not in regions:
                where = spec.region if spec else "an unknown region"
                raise PolicyDenied("residency_violation", f"model {requested!r} runs in {where}; tenant {env.tenant!r} "
                                                    f"is restricted to {', '.join(sorted(regions))}")
        return [requested]
    if listed and not in_region:
        raise PolicyDenied("residency_violation", f"no allowed model runs in {', '.join(sorted(regions))}")
    return in_region


def settlement_for(env: Envelope) -> tuple[str, int] | None:
    """(reservation_id, actual cost) to settle once a request is terminal, or None when nothing was reserved.

    For the audit stage: ``await limits.settle_many([s for env in batch if (s := settlement_for(env))])``. A denial,
    a failure or a cache hit settles at the model's cost so far (0 when no model ran) plus its tool calls' cost: the
    reservation is released.
    Settling is idempotent per reservation, so a redelivered audit batch cannot count twice.
    """
    if env.policy is None or env.policy.reservation_id is None:
        return None
    tools = env.tools.cost_micros if env.tools is not None else 0
    return env.policy.reservation_id, (env.model.cost_micros if env.model is not None else 0) + tools


def estimate_cost_micros(doc: PolicyDocument, models: Sequence[str], input_tokens: int, output_tokens: int) -> int:
    """An upper bound for the reservation: the most expensive reachable model's prices (rounded up)."""
    specs: list[ModelSpec] = [doc.models[m] for m in models if m in doc.models] or [doc.default_price]
    if len(specs) < len(models):
        specs.append(doc.default_price)  # a reachable model the document does not price: assume the default
    worst = max(math.ceil((input_tokens * s.input_micros_per_mtok + output_tokens * s.output_micros_per_mtok)
                          / 1_000_000) for s in specs)
    return int(worst)
