"""The policy document: governance as data (YAML in, JSON on the compacted ``<prefix>.policy.docs`` topic).

    version: "2026-11-29.1"            # recorded on every decision
    models:                            # what the policy may allow: region (residency) and price
      lite-eu: {region: eu, input_micros_per_mtok: 165000, output_micros_per_mtok: 660000}
    tools:                             # tools the model may call (workers/tools/): built-ins, plain HTTP or MCP
      calculator: {parameters: {type: object, properties: {expression: {type: string}}, required: [expression]}}
      issue_refund: {side_effects: true, price_micros: 2000, timeout_ms: 1000, parameters: {...}}
      search: {kind: mcp, server: demo, tenant_argument: tenant, parameters: {...}}
    mcp_servers:                       # MCP servers (stdio: launched by the worker; or streamable-http)
      demo: {transport: stdio, command: [python, -m, workers.tools.mcp_server]}
    tenants:
      acme:
        require_principal: true        # false: requests without a principal are accepted (demo, tests)
        regions: [eu]                  # models outside these regions are never reached
        allowed_models: [lite-eu]     # empty: every model in an allowed region
        pii: {default: redact, credit_card: block}
        injection: {action: block, threshold: 0.6}
        rate_limits: {requests_per_minute: 600, tokens_per_minute: 200000}
        budgets: {daily_micros: 50000000, monthly_micros: 1000000000}
        cache: {allowed: true, semantic_threshold: 0.92}
        tools: {allowed: [calculator, issue_refund], denied: [ticket_update],
                bounds: {issue_refund: {amount: {max: 100}}}}
        keys:                          # only salted hashes; `tollway keys create --tenant acme` makes one
          - {key_id: k_..., salt: ..., hash: ..., rate_limits: {...}, budgets: {...}}

Money is integer micro-dollars; prices are micro-dollars per million tokens (as in the
model catalog); the policy only uses them to size the budget reservation. Unknown fields are refused so a typo is
an error with the path of the field, not a silently ignored rule.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas.errors import ConfigError

POLICY_SCHEMA_VERSION: Literal[1] = 1


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PiiAction(StrEnum):
    ALLOW = "allow"
    REDACT = "redact"
    BLOCK = "block"


PiiEntity = Literal["email", "phone", "credit_card", "iban", "us_ssn", "ip_address", "secret"]
PII_ENTITIES: tuple[str, ...] = ("email", "phone", "credit_card", "iban", "us_ssn", "ip_address", "secret")


class ModelSpec(_Doc):
    region: str = Field(min_length=1)
    input_micros_per_mtok: int = Field(default=0, ge=0)
    output_micros_per_mtok: int = Field(default=0, ge=0)


class PiiRules(_Doc):
    default: PiiAction = PiiAction.REDACT
    email: PiiAction | None = None
    phone: PiiAction | None = None
    credit_card: PiiAction | None = None
    iban: PiiAction | None = None
    us_ssn: PiiAction | None = None
    ip_address: PiiAction | None = None
    secret: PiiAction | None = None

    def action(self, entity: str) -> PiiAction:
        value: PiiAction | None = getattr(self, entity, None)
        return value if value is not None else self.default


class InjectionRules(_Doc):
    action: Literal["allow", "flag", "block"] = "flag"
    threshold: float = Field(default=0.6, gt=0.0, le=1.0)


class RateLimits(_Doc):
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)


class Budgets(_Doc):
    daily_micros: int | None = Field(default=None, ge=0)
    monthly_micros: int | None = Field(default=None, ge=0)


class CachePolicy(_Doc):
    allowed: bool = True
    semantic_threshold: float | None = Field(default=None, gt=0.0, le=1.0)


class McpServerSpec(_Doc):
    """An MCP server the tools stage talks to (the official ``mcp`` SDK): a command it launches and speaks to over
    stdio, or a streamable-HTTP endpoint. One connection per server and worker, opened on first use and reopened
    after a failure. ``python`` as the command is the worker's own interpreter."""

    transport: Literal["stdio", "streamable-http"] = "stdio"
    command: list[str] = Field(default_factory=list)  # stdio: argv, e.g. [python, -m, workers.tools.mcp_server]
    env: dict[str, str] = Field(default_factory=dict)  # stdio: added to the worker's TOLLWAY_* variables
    url: str | None = None  # streamable-http, e.g. http://127.0.0.1:8765/mcp
    connect_timeout_ms: int = Field(default=30_000, ge=100, le=300_000)

    @model_validator(mode="after")
    def _target(self) -> McpServerSpec:
        if self.transport == "stdio" and not self.command:
            raise ValueError("a stdio MCP server needs a command")
        if self.transport == "streamable-http" and not (self.url and self.url.startswith(("http://", "https://"))):
            raise ValueError("a streamable-http MCP server needs a url starting with http:// or https://")
        return self


class ToolSpec(_Doc):
    """A tool the pipeline may run for a model: a local built-in (``builtin``, by name), a plain HTTP endpoint
    (``url``: the arguments are POSTed as JSON, the JSON reply is the result) or a tool of an MCP server (``server``,
    one of the document's ``mcp_servers``; ``tool``: its name there). Tools are data: adding one is a policy
    change, not a deploy."""

    kind: Literal["builtin", "http", "mcp"] = "builtin"
    builtin: str | None = None  # the built-in's name (workers/tools/builtins.py); default: the tool's own name
    url: str | None = None
    server: str | None = None  # mcp: the name of one of the document's mcp_servers
    tool: str | None = None  # mcp: the tool's name on its server; default: the tool's own name
    # The argument the stage sets to the request's tenant (the model never chooses whose data a tool reads).
    tenant_argument: str | None = None
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})  # JSON Schema of the arguments
    timeout_ms: int = Field(default=2_000, ge=1, le=300_000)
    price_micros: int = Field(default=0, ge=0)  # per call, charged whenever the tool ran
    region: str = "any"
    side_effects: bool = False  # true: executed at most once per tool-call id, whatever the redeliveries
    # The tool itself deduplicates by the Idempotency-Key it is sent (the effect key): a call a crash left in doubt
    # is sent again with the same key (exactly once, no effect lost) instead of answered tool_effect_in_doubt.
    honours_idempotency_key: bool = False
    max_result_chars: int = Field(default=8_000, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _target(self) -> ToolSpec:
        if self.kind == "http" and not (self.url and self.url.startswith(("http://", "https://"))):
            raise ValueError("an http tool needs a url starting with http:// or https://")
        if self.kind != "http" and self.url:
            raise ValueError(f"a {self.kind} tool takes no url")
        if (self.kind == "mcp") != (self.server is not None):
            raise ValueError("an mcp tool (and only an mcp tool) names its server")
        if self.parameters.get("type", "object") != "object":
            raise ValueError("a tool's parameters schema describes an object (type: object)")
        try:
            Draft202012Validator.check_schema(self.parameters)
        except SchemaError as exc:
            raise ValueError(f"parameters is not a valid JSON Schema: {exc.message}") from exc
        return self


class ArgumentBound(_Doc):
    """Rules on one argument: value bounds of a number, e.g. ``{max: 100}`` for ``amount ≤ 100``; or, for a URL,
    the domains it may point at (``{domains: [example.com]}``: that host or a subdomain, http or https only)."""

    min: float | None = None
    max: float | None = None
    domains: list[str] = Field(default_factory=list)


class PrincipalToolRules(_Doc):
    """One API key's narrowing of its tenant's tool rules: only ``allowed`` (absent: the tenant's), never ``denied``."""

    allowed: list[str] | None = None
    denied: list[str] = Field(default_factory=list)


class ToolRules(_Doc):
    """A tenant's governance of tool calls. A tool is offered to the model when it is ``visible`` (empty: the
    allowed tools; a tenant without rules gets none); a call runs only when the tool is ``allowed`` and not
    ``denied`` — a call to a disallowed tool is answered with a structured ``tool_denied`` error, so a model (or an
    injected instruction) asking for it is audited rather than silently ignored."""

    visible: list[str] = Field(default_factory=list)
    allowed: list[str] = Field(default_factory=list)  # empty: no tool may run
    denied: list[str] = Field(default_factory=list)  # wins over allowed
    bounds: dict[str, dict[str, ArgumentBound]] = Field(default_factory=dict)  # tool → argument → bound
    regions: list[str] = Field(default_factory=list)  # empty: the tenant's model regions, if any
    max_steps: int = Field(default=4, ge=1, le=32)  # model turns that may ask for tools, per request
    max_steps_per_task: int | None = Field(default=None, ge=1)  # … per task (request.task_id), over its requests
    max_calls_per_step: int = Field(default=4, ge=1, le=64)
    result_injection: Literal["allow", "flag", "block"] = "block"  # indirect injection in a tool's result
    principals: dict[str, PrincipalToolRules] = Field(default_factory=dict)  # key_id → narrower rules
    approval: list[str] = Field(default_factory=list)  # tools whose calls wait for `tollway approve ID`
    approval_timeout_ms: int = Field(default=120_000, ge=1, le=3_600_000)  # then approval_timeout (never run)


class KeyRecord(_Doc):
    """An API key as the policy stores it: an id and a salted scrypt hash, never the key."""

    key_id: str = Field(pattern=r"^k_[0-9a-f]{8,32}$")
    salt: str = Field(min_length=16)  # hex
    hash: str = Field(min_length=32)  # hex
    scrypt_n: int = Field(default=2**14, ge=2**10)
    created_at: str = ""
    revoked: bool = False
    description: str = ""
    rate_limits: RateLimits = Field(default_factory=RateLimits)
    budgets: Budgets = Field(default_factory=Budgets)


class TenantPolicy(_Doc):
    require_principal: bool = True
    regions: list[str] = Field(default_factory=list)  # empty: no residency restriction
    allowed_models: list[str] = Field(default_factory=list)  # empty: every model of the allowed regions
    quality_tiers: list[str] = Field(default_factory=list)  # empty: any tier
    default_quality_tier: str | None = None
    pii: PiiRules = Field(default_factory=PiiRules)
    injection: InjectionRules = Field(default_factory=InjectionRules)
    rate_limits: RateLimits = Field(default_factory=RateLimits)
    budgets: Budgets = Field(default_factory=Budgets)
    cache: CachePolicy = Field(default_factory=CachePolicy)
    tools: ToolRules = Field(default_factory=ToolRules)
    keys: list[KeyRecord] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_keys(self) -> TenantPolicy:
        ids = [k.key_id for k in self.keys]
        if len(ids) != len(set(ids)):
            raise ValueError(f"duplicate key_id in keys: {sorted({i for i in ids if ids.count(i) > 1})}")
        if self.default_quality_tier and self.quality_tiers and self.default_quality_tier not in self.quality_tiers:
            raise ValueError("default_quality_tier must be one of quality_tiers")
        return self

    def key(self, key_id: str) -> KeyRecord | None:
        return next((k for k in self.keys if k.key_id == key_id), None)


class EmbedderPolicy(_Doc):
    # A remote embedder sees the prompt: the policy stage must then run before retrieval (see route_for).
    remote: bool = False


class PolicyDocument(_Doc):
    schema_version: Literal[1] = POLICY_SCHEMA_VERSION
    kind: Literal["policy"] = "policy"
    version: str = Field(min_length=1, max_length=100)
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    # Used for the budget reservation when a tenant may reach a model the document does not price.
    default_price: ModelSpec = Field(default_factory=lambda: ModelSpec(region="any", input_micros_per_mtok=5_000_000,
                                                                       output_micros_per_mtok=15_000_000))
    embedder: EmbedderPolicy = Field(default_factory=EmbedderPolicy)
    tools: dict[str, ToolSpec] = Field(default_factory=dict)  # name → tool (names as the model calls them)
    mcp_servers: dict[str, McpServerSpec] = Field(default_factory=dict)  # name → server (for tools of kind mcp)
    tenants: dict[str, TenantPolicy] = Field(default_factory=dict)
    # Applied to a tenant the document does not name; absent: unknown tenants are refused.
    default_tenant: TenantPolicy | None = None

    @model_validator(mode="after")
    def _models_are_declared(self) -> PolicyDocument:
        declared = set(self.models)
        for name, tenant in self.tenants.items():
            unknown = [m for m in tenant.allowed_models if declared and m not in declared]
            if unknown:
                raise ValueError(f"tenants.{name}.allowed_models names undeclared model(s) {unknown}")
        tenants = [*self.tenants.items(), *([("default_tenant", self.default_tenant)] if self.default_tenant else [])]
        for name, tenant in tenants:
            rules = tenant.tools
            named = [*rules.visible, *rules.allowed, *rules.denied, *rules.bounds, *rules.approval,
                     *(t for p in rules.principals.values() for t in [*(p.allowed or []), *p.denied])]
            unknown_tools = sorted({t for t in named if t not in self.tools})
            if unknown_tools:
                raise ValueError(f"tenants.{name}.tools names undeclared tool(s) {unknown_tools}")
        undeclared = sorted({f"{n} → {t.server}" for n, t in self.tools.items()
                             if t.server is not None and t.server not in self.mcp_servers})
        if undeclared:
            raise ValueError(f"tools name undeclared mcp_servers: {undeclared}")
        seen: dict[str, str] = {}
        for name, tenant in self.tenants.items():
            for key in tenant.keys:
                if key.key_id in seen:
                    raise ValueError(f"key {key.key_id} is listed under tenants {seen[key.key_id]} and {name}")
                seen[key.key_id] = name
        return self

    def tenant(self, name: str) -> TenantPolicy | None:
        return self.tenants.get(name, self.default_tenant)


def format_errors(exc: ValidationError) -> list[str]:
    """One line per error: the dotted path of the offending field, then what is wrong with it."""
    return [f"{'.'.join(str(p) for p in err['loc']) or '<document>'}: {err['msg']}" for err in exc.errors()]


def parse_policy(data: Any) -> PolicyDocument:
    """Validate an already-loaded document; raises :class:`ConfigError` listing every bad field by path."""
    if not isinstance(data, dict):
        raise ConfigError(f"a policy document is a mapping, got {type(data).__name__}")
    try:
        return PolicyDocument.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("invalid policy document:\n  " + "\n  ".join(format_errors(exc))) from exc


def load_policy_yaml(text: str) -> PolicyDocument:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"policy document is not valid YAML: {exc}") from exc
    return parse_policy(data)
