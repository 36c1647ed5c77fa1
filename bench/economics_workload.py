"""The labelled workload of the economics benchmark (scenario 6): what tollway is asked, and what each ask needs.

Every question comes from a *family* (a kind of question, e.g. "is feature X included in plan Y") with a label,
the smallest model tier that answers it well, and a few wordings that mean the same thing. A question's meaning is
its family plus its slot values; the wording is a template plus a surface style (lower case, a greeting, "please").
Per tenant, the stream of asks mixes:

``new``         a question this tenant has not asked before (a random family of a random tier, random slots);
``repeat``      the exact text of an earlier ask of the tenant;
``paraphrase``  an earlier ask's meaning in another wording (other template and/or surface style);
``near_miss``   an earlier ask with one slot changed (a negation, a number, a unit, a name, an antonym, another
                object), in the same wording: close in text, different in meaning, so its answer must not be reused.

Earlier asks are picked in proportion to how often they were asked (popular questions come back more often).

The labels are ours: the families, wordings and tiers were written for this benchmark by the same project whose
router is measured, so the figures are a self-assessment on synthetic traffic, not on real users' questions. The
router never sees the labels (only the text); which families it under-routes is reported per family.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["new", "repeat", "paraphrase", "near_miss"]
KINDS: tuple[Kind, ...] = ("new", "repeat", "paraphrase", "near_miss")
DEFAULT_MIX: Mapping[Kind, float] = {"new": 0.55, "repeat": 0.15, "paraphrase": 0.15, "near_miss": 0.15}
# Share of new questions by the tier they need (assumed: most traffic is simple lookups, a fifth needs the best).
DEFAULT_TIER_MIX: Mapping[str, float] = {"small": 0.5, "medium": 0.3, "large": 0.2}
SURFACE_STYLES = 5


@dataclass(frozen=True)
class Slot:
    values: tuple[str, ...]
    flip: str  # what changing this slot does to the question: negation, number, unit, entity, antonym, content
    paired: bool = False  # values come in (a, b) pairs and a near miss swaps a value for its partner


@dataclass(frozen=True)
class Family:
    name: str
    tier: str  # the smallest model tier that answers it well (the label)
    templates: tuple[str, ...]  # wordings of the same question; each uses every slot
    slots: Mapping[str, Slot]


def _numbers(values: range) -> tuple[str, ...]:
    return tuple(str(v) for v in values)


_PLANS = Slot(("Starter", "Team", "Business", "Enterprise", "Pro"), "entity")
_NEGATION = Slot(("", "not "), "negation")

FAMILIES: tuple[Family, ...] = (
    # ---------------------------------------------------------------- small: lookups, short how-tos, yes/no
    Family("account_howto", "small",
           ("How do I {action} {object}?", "How can I {action} {object}?", "What are the steps to {action} {object}?"),
           {"action": Slot(("enable", "disable", "lock", "unlock", "add", "remove", "export", "import"), "antonym",
                           paired=True),
            "object": Slot(("the SSO connection", "a service account", "the custom domain", "the Slack integration",
                            "email alerts for invoices", "the sandbox workspace", "API access for contractors",
                            "the data retention rule", "the status page", "the weekly usage report",
                            "two-factor login for my team", "a guest user"), "content")}),
    Family("plan_feature", "small",
           ("Is {feature} {negation}included in the {plan} plan?", "Is {feature} {negation}part of the {plan} plan?"),
           {"feature": Slot(("single sign-on", "audit logging", "priority support", "a dedicated account manager",
                             "SCIM provisioning", "custom roles", "EU data residency", "an uptime SLA",
                             "phone support", "IP allow-listing", "usage alerts", "sandbox workspaces"), "content"),
            "negation": _NEGATION, "plan": _PLANS}),
    Family("plan_price", "small",
           ("What is the price of the {plan} plan per {period}?", "What does the {plan} plan cost per {period}?",
            "How much is the {plan} plan per {period}?"),
           {"plan": _PLANS, "period": Slot(("month", "year", "seat"), "unit")}),
    Family("refund_window", "small",
           ("Can I get a refund after {n} {unit}?", "Is a refund possible after {n} {unit}?",
            "Will I get my money back after {n} {unit}?"),
           {"n": Slot(_numbers(range(2, 61)), "number"), "unit": Slot(("days", "weeks", "months"), "unit")}),
    Family("error_code", "small",
           ("What does error code {code} mean?", "What is the meaning of error code {code}?",
            "Error code {code}: what does it mean?"),
           {"code": Slot(tuple(f"E{c}" for c in range(1000, 1400, 2)), "entity")}),
    Family("translate", "small",
           ("Translate '{phrase}' into {language}.", "How do I say '{phrase}' in {language}?",
            "What is '{phrase}' in {language}?"),
           {"phrase": Slot(("good morning", "thank you for your order", "your invoice is attached",
                            "the meeting is cancelled", "please reset your password", "we will call you tomorrow",
                            "the parcel is delayed", "welcome to the team"), "content"),
            "language": Slot(("German", "French", "Spanish", "Italian", "Dutch", "Polish", "Japanese",
                              "Portuguese"), "entity")}),
    Family("classify_ticket", "small",
           ("Classify this ticket: order {order} {problem}.",
            "Which category fits this ticket: order {order} {problem}.",
            "Tag this ticket with a category: order {order} {problem}."),
           {"order": Slot(tuple(f"A-{n}" for n in range(5100, 5400, 3)), "entity"),
            "problem": Slot(("arrived damaged", "never arrived", "was charged twice", "has the wrong invoice total",
                             "cannot be tracked", "went to the wrong address"), "content")}),
    Family("shipping_time", "small",
           ("How long does {speed} shipping to {country} take?",
            "How many days does {speed} shipping to {country} take?",
            "What is the delivery time for {speed} shipping to {country}?"),
           {"speed": Slot(("express", "standard", "overnight", "economy"), "content"),
            "country": Slot(("Germany", "France", "Canada", "Japan", "Brazil", "Australia", "Spain", "Mexico"),
                            "entity")}),
    Family("rate_limit", "small",
           ("What is the rate limit per {scope} on the {plan} plan?",
            "How many requests per minute can one {scope} send on the {plan} plan?"),
           {"scope": Slot(("API key", "user", "workspace", "IP address"), "content"), "plan": _PLANS}),
    Family("where_find", "small",
           ("Where can I find {document} for {month}?", "Where do I find {document} for {month}?"),
           {"document": Slot(("my invoices", "the usage report", "the audit log export", "the tax form",
                              "the payout statement"), "content"),
            "month": Slot(("January", "February", "March", "April", "May", "June", "July", "August", "September",
                           "October", "November", "December"), "entity")}),
    Family("permission_check", "small",
           ("Can {role} {negation}see {resource}?", "Are {role} {negation}allowed to see {resource}?"),
           {"role": Slot(("admins", "members", "guests", "billing managers", "auditors"), "content"),
            "negation": _NEGATION,
            "resource": Slot(("invoices", "the audit log", "API keys", "usage reports", "payment methods"),
                             "content")}),
    # ---------------------------------------------------------------- medium: one-step explanations, code, sums
    Family("explain_mechanism", "medium",
           ("Explain how {mechanism} works for {audience}.", "Can you explain how {mechanism} works for {audience}?",
            "Please explain to {audience} how {mechanism} works."),
           {"mechanism": Slot(("our rate limiter", "invoice proration", "webhook retries", "seat-based licensing",
                               "data retention", "just-in-time SSO provisioning", "usage-based billing",
                               "the approval workflow", "API key scopes", "the sandbox environment"), "content"),
            "audience": Slot(("a new engineer", "a finance manager", "a customer", "a support agent", "an auditor"),
                             "content")}),
    Family("write_function", "medium",
           ("Write a {language} function that {task}.", "Please write a {language} function which {task}.",
            "I need a {language} function that {task}."),
           {"language": Slot(("Python", "JavaScript", "TypeScript", "Go", "Rust", "Java", "Kotlin", "Ruby"),
                             "entity"),
            "task": Slot(("validates an email address", "parses an ISO 8601 date", "retries an HTTP call with "
                          "exponential backoff", "deduplicates a list of order ids", "chunks a list into batches",
                          "masks all but the last four digits of a card number", "converts cents to a money string",
                          "merges two sorted lists", "counts words in a text file", "checks a webhook signature"),
                         "content")}),
    Family("percent_total", "medium",
           ("What is {pct}% of {amount} {currency}, and what is the total after adding it?",
            "Calculate {pct}% of {amount} {currency} and the total after adding it."),
           {"pct": Slot(_numbers(range(5, 26)), "number"), "amount": Slot(_numbers(range(120, 9800, 85)), "number"),
            "currency": Slot(("USD", "EUR", "GBP"), "unit")}),
    Family("apology_email", "medium",
           ("Draft a short apology email to a customer whose {item} {problem}, offering a {pct}% discount.",
            "Write a short apology email to a customer whose {item} {problem} and offer a {pct}% discount."),
           {"item": Slot(("order", "refund", "replacement part", "subscription renewal", "support ticket"),
                         "content"),
            "problem": Slot(("arrived late", "was lost", "was handled twice", "took three weeks"), "content"),
            "pct": Slot(("5", "10", "15", "20", "25"), "number")}),
    Family("failed_job", "medium",
           ("Why did my nightly {job} fail with {error}, and how can I avoid it next time?",
            "My nightly {job} failed with {error}. Why, and how do I avoid it next time?"),
           {"job": Slot(("export", "backup", "sync", "invoice run", "data import", "report build"), "content"),
            "error": Slot(("a timeout", "an out-of-memory error", "a permission error", "a 429 response",
                           "a checksum mismatch"), "content")}),
    Family("compare_plans", "medium",
           ("Compare the {plans} for a {n}-person company.",
            "What are the differences between the {plans} for a {n}-person company?",
            "For a {n}-person company, how do the {plans} compare?"),
           {"plans": Slot(("Team plan and the Business plan", "Starter plan and the Team plan",
                           "Business plan and the Enterprise plan", "Pro plan and the Business plan"), "entity"),
            "n": Slot(_numbers(range(5, 500, 7)), "number")}),
    Family("sql_query", "medium",
           ("Write a SQL query that counts {entity} per {group} in the last {n} days.",
            "Give me a SQL query counting {entity} per {group} over the last {n} days."),
           {"entity": Slot(("orders", "refunds", "sign-ups", "failed logins", "support tickets"), "content"),
            "group": Slot(("customer", "country", "plan", "day"), "content"),
            "n": Slot(("7", "14", "30", "60", "90"), "number")}),
    Family("live_schema_change", "medium",  # short and marker-free, but needs real knowledge of locking
           ("Is it safe to {operation} on a live {database} database?",
            "Can I safely {operation} on a live {database} database?"),
           {"operation": Slot(("add an index", "rename a column", "change a column type", "drop a foreign key",
                               "backfill a new column", "add a unique constraint"), "content"),
            "database": Slot(("PostgreSQL", "MySQL", "MariaDB", "SQL Server", "Oracle"), "entity")}),
    # ---------------------------------------------------------------- large: design, diagnosis, derivation, judgement
    Family("architecture", "large",
           ("Design a {system} for {n} million requests a day that must {constraint}. Compare at least two "
            "architectures, discuss the trade-offs and recommend one with a migration plan.",
            "We need a {system} for {n} million requests a day that must {constraint}. Propose two architectures, "
            "weigh their trade-offs and recommend one, including how we would migrate to it."),
           {"system": Slot(("multi-tenant event pipeline", "billing ledger", "search service", "notification system",
                            "feature flag service", "audit trail"), "content"),
            "n": Slot(_numbers(range(1, 200, 3)), "number"),
            "constraint": Slot(("survive a region outage", "keep all data in the EU", "never lose an acknowledged "
                                "write", "answer within 100 ms at p99", "cost less than $5,000 a month"),
                               "content")}),
    Family("root_cause", "large",
           ("Our {service} {symptom} under load since we {change}. Walk me through the likely root causes step by "
            "step, how to confirm each one, and what to change.",
            "Since we {change}, our {service} {symptom} under load. What are the likely root causes, how do I "
            "confirm each, and what should we change?"),
           {"service": Slot(("checkout API", "Kafka consumer group", "PostgreSQL primary", "search cluster",
                             "GraphQL gateway"), "content"),
            "symptom": Slot(("times out", "leaks memory", "falls behind", "returns stale data", "deadlocks"),
                            "content"),
            "change": Slot(("upgraded the client library", "doubled the partitions", "moved to ARM instances",
                            "enabled TLS everywhere", "switched to connection pooling"), "content")}),
    Family("retry_math", "large",
           ("A job fails independently with probability {p} per attempt and is retried up to {k} times. Derive the "
            "probability that it finally succeeds and the expected number of attempts, then explain how to choose "
            "the retry limit.",
            "Each attempt of a job fails independently with probability {p}, and it is retried up to {k} times. "
            "Work out the final success probability and the expected number of attempts, and how to pick the "
            "retry limit."),
           {"p": Slot(("0.05", "0.1", "0.15", "0.2", "0.25", "0.3", "0.4", "0.5"), "number"),
            "k": Slot(_numbers(range(1, 9)), "number")}),
    Family("vendor_decision", "large",
           ("We are a {n}-person {industry} company choosing between {options} for {purpose}. Analyse cost, risk "
            "and compliance over three years and recommend one.",
            "As a {industry} company of {n} people we must choose between {options} for {purpose}. Weigh cost, "
            "risk and compliance over three years and tell us which to pick."),
           {"n": Slot(_numbers(range(20, 2000, 45)), "number"),
            "industry": Slot(("fintech", "healthcare", "retail", "logistics", "insurance"), "content"),
            "options": Slot(("self-hosting and a managed service", "AWS and Azure", "building in-house and buying a "
                             "vendor tool", "Snowflake and BigQuery"), "entity"),
            "purpose": Slot(("our data warehouse", "customer support tooling", "identity management",
                             "log analytics"), "content")}),
    Family("refactor_review", "large",
           ("Refactor our {language} {component} so that {goal}, keep the public API stable, add tests, and explain "
            "every change.",
            "Rewrite our {language} {component} so {goal} while keeping its public API; include tests and explain "
            "each change."),
           {"language": Slot(("Python", "Java", "Go", "TypeScript", "C#"), "entity"),
            "component": Slot(("payment retry module", "invoice renderer", "session store", "rate limiter",
                               "CSV importer"), "content"),
            "goal": Slot(("it is safe under concurrent use", "it streams instead of loading everything in memory",
                          "each step can be unit tested", "errors are reported with context"), "content")}),
    Family("gdpr_transfer", "large",  # short and marker-free, but a legal judgement with several conditions
           ("Can we keep EU customers' {data} in {location} under GDPR?",
            "Is it GDPR-compliant to store EU customers' {data} in {location}?"),
           {"data": Slot(("support transcripts", "payment records", "health questionnaires", "login logs",
                          "marketing consent records"), "content"),
            "location": Slot(("US-hosted backups", "a Singapore data centre", "a shared Google Drive folder",
                              "our vendor's office in India", "a Canadian cloud region"), "entity")}),
)
FAMILY: Mapping[str, Family] = {f.name: f for f in FAMILIES}

Meaning = tuple[str, tuple[str, ...]]  # family name, slot values in the family's slot order


@dataclass(frozen=True)
class Ask:
    index: int
    tenant: str
    text: str
    kind: Kind
    meaning: Meaning
    tier: str  # the label: the smallest sufficient tier
    template: int
    style: int
    source: int | None = None  # the earlier ask this one repeats, paraphrases or flips
    flip: str | None = None  # near misses: what the changed slot was


def surface(text: str, style: int) -> str:
    """The same question typed differently: as written, lower case without the end mark, a greeting, "please"."""
    if style == 1:
        return text.lower().rstrip("?.")
    if style == 2:
        return "Hi, " + text[0].lower() + text[1:]
    if style == 3:
        return text.rstrip("?.") + ", please" + (text[-1] if text[-1] in "?." else "")
    if style == 4:
        return "Hello! " + text
    return text


def render(meaning: Meaning, template: int, style: int) -> str:
    family = FAMILY[meaning[0]]
    values = dict(zip(family.slots, meaning[1], strict=True))
    return surface(family.templates[template].format(**values), style)


@dataclass
class _Tenant:
    asked: list[int] = field(default_factory=list)  # one entry per ask: popular asks are picked more often
    meanings: set[Meaning] = field(default_factory=set)


@dataclass
class Generator:
    seed: int
    tenants: tuple[str, ...] = ("acme", "globex", "initech", "umbrella")
    mix: Mapping[Kind, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    tier_mix: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TIER_MIX))

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.asks: list[Ask] = []
        self.state = {t: _Tenant() for t in self.tenants}

    def generate(self, n: int) -> list[Ask]:
        kinds, kind_weights = zip(*self.mix.items(), strict=True)
        for _ in range(n):
            tenant = self.rng.choice(self.tenants)
            kind = self.rng.choices(kinds, kind_weights)[0]
            ask = self._make(kind, tenant) if self.state[tenant].asked else None
            self._record(ask or self._new(tenant))
        return self.asks

    def _record(self, ask: Ask) -> None:
        self.asks.append(ask)
        self.state[ask.tenant].asked.append(ask.index)
        self.state[ask.tenant].meanings.add(ask.meaning)

    def _ask(self, tenant: str, kind: Kind, meaning: Meaning, template: int, style: int, **extra: object) -> Ask:
        return Ask(index=len(self.asks), tenant=tenant, text=render(meaning, template, style), kind=kind,
                   meaning=meaning, tier=FAMILY[meaning[0]].tier, template=template, style=style,
                   **extra)  # type: ignore[arg-type]

    def _new(self, tenant: str) -> Ask:
        tiers, weights = zip(*self.tier_mix.items(), strict=True)
        for _ in range(50):  # a question new to this tenant
            tier = self.rng.choices(tiers, weights)[0]
            family = self.rng.choice([f for f in FAMILIES if f.tier == tier])
            meaning = (family.name, tuple(self.rng.choice(slot.values) for slot in family.slots.values()))
            if meaning not in self.state[tenant].meanings:
                break
        style = 0 if self.rng.random() < 0.7 else self.rng.randrange(1, SURFACE_STYLES)
        return self._ask(tenant, "new", meaning, self.rng.randrange(len(family.templates)), style)

    def _make(self, kind: Kind, tenant: str) -> Ask | None:
        source = self.asks[self.rng.choice(self.state[tenant].asked)]
        family = FAMILY[source.meaning[0]]
        if kind == "new":
            return None
        if kind == "repeat":
            return Ask(index=len(self.asks), tenant=tenant, text=source.text, kind="repeat", meaning=source.meaning,
                       tier=source.tier, template=source.template, style=source.style, source=source.index)
        if kind == "paraphrase":
            for _ in range(20):
                template = self.rng.randrange(len(family.templates))
                style = self.rng.randrange(SURFACE_STYLES)
                if render(source.meaning, template, style) != source.text:
                    return self._ask(tenant, "paraphrase", source.meaning, template, style, source=source.index)
            return None
        for _ in range(20):  # near miss: one slot changed, same wording
            position = self.rng.randrange(len(family.slots))
            slot = list(family.slots.values())[position]
            current = source.meaning[1][position]
            if slot.paired:
                at = slot.values.index(current)
                value = slot.values[at ^ 1]
            else:
                value = self.rng.choice([v for v in slot.values if v != current])
            values = list(source.meaning[1])
            values[position] = value
            meaning = (family.name, tuple(values))
            if meaning not in self.state[tenant].meanings:
                return self._ask(tenant, "near_miss", meaning, source.template, source.style, source=source.index,
                                 flip=slot.flip)
        return None


def generate(n: int, seed: int, **options: object) -> list[Ask]:
    return Generator(seed, **options).generate(n)  # type: ignore[arg-type]


def describe(asks: list[Ask]) -> dict[str, object]:
    return {"requests": len(asks), "tenants": len({a.tenant for a in asks}),
            "meanings": len({(a.tenant, a.meaning) for a in asks}),
            "kinds": dict(Counter(a.kind for a in asks)), "tiers": dict(Counter(a.tier for a in asks)),
            "near_miss_flips": dict(Counter(a.flip for a in asks if a.flip))}
