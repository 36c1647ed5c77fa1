"""The one place the environment is read. Everything else receives a frozen :class:`Settings`.

Addresses follow one rule for every entry point (CLI, workers, ledger, SDK, tests, the Makefile): an explicit
``TOLLWAY_BOOTSTRAP_SERVERS`` / ``TOLLWAY_REDIS_URL`` wins; otherwise they are derived from ``TOLLWAY_KAFKA_PORT`` /
``TOLLWAY_REDIS_PORT`` (the ports ``infra/services.sh`` starts the services on), defaulting to 9092 and 6379. A second
stack therefore needs only the ports and ``TOLLWAY_STATE_DIR``.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOLLWAY_", frozen=True, extra="ignore")

    bootstrap_servers: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # The ports infra/services.sh starts Kafka and Redis on; the addresses above derive from them unless set.
    kafka_port: int = Field(default=9092, ge=1, le=65535)
    # The brokers infra/services.sh runs (TOLLWAY_KAFKA_BROKERS): node i on kafka_port + 10(i-1); the derived address
    # lists them all, so a client reaches the cluster while any one of them is down.
    kafka_brokers: int = Field(default=1, ge=1, le=5)
    redis_port: int = Field(default=6379, ge=1, le=65535)
    # Broker authentication (SASL/SCRAM). Unset username: a plaintext broker. infra/services.sh writes the
    # credentials of each principal to $TOLLWAY_STATE_DIR/credentials/kafka.json; `tollway` reads its own from there
    # (TOLLWAY_KAFKA_PRINCIPAL names which) unless these are given.
    kafka_username: str | None = None
    kafka_password: SecretStr | None = None
    kafka_credentials_file: Path | None = None  # default: <state_dir>/credentials/kafka.json
    kafka_security_protocol: Literal["SASL_PLAINTEXT", "SASL_SSL"] = "SASL_PLAINTEXT"
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    # The Kafka client of the stage workers and of the HTTP ingress's publisher. auto: librdkafka (confluent-kafka,
    # streams/runtime/rdkafka.py) in a worker whose stages each run alone, aiokafka in a worker that runs a co-located
    # chain and in the ingress — where each measured ahead (bench/kafka_client_bench.py; docs/PERFORMANCE.md).
    # aiokafka or librdkafka: that client everywhere. Admin, followers, the SDK and reply readers stay on aiokafka.
    kafka_client: Literal["auto", "aiokafka", "librdkafka"] = "auto"
    # Every topic and consumer group name starts with this, so tests and several deployments can share a broker.
    topic_prefix: str = "tollway"
    partitions: int = Field(default=4, ge=1)
    # Unset: min(3, kafka_brokers) replicas, and a write needs a majority of them in sync (RF 3 → 2): with producers
    # at acks=all an acknowledged record survives the loss of any one broker, and one broker down stops no writes.
    replication_factor: int = Field(default=1, ge=1)
    min_insync_replicas: int = Field(default=1, ge=1)
    # Static group membership (KIP-345): a stable, unique name per worker process (in Kubernetes the pod name of a
    # StatefulSet). Set, each stage consumer joins as group_instance_id "<instance_id>-<stage>": a restart within
    # session_timeout_ms gets its partitions back without a rebalance (a stopped static member does not leave its
    # group; its partitions wait for its return or the session timeout). Unset (default): dynamic membership.
    instance_id: str | None = Field(default=None, min_length=1, max_length=200)
    # A static member stopped on purpose (SIGTERM) still leaves its groups, so a scale-down moves its partitions at
    # once; static membership then saves the rebalances of crashes (kill -9, OOM, a failed liveness probe), whose
    # restarted process takes its partitions back. False: a stop leaves nothing either, so a rolling restart moves no
    # partition, but a removed member's partitions wait out session_timeout_ms (bench/rebalance_bench.py measures both).
    leave_group_on_stop: bool = True
    # How long the group coordinator waits for a silent member before moving its partitions. aiokafka's 10 s default
    # evicted healthy members on a starved machine (a big batch holds the loop); Kafka's own default is 45 s.
    session_timeout_ms: int = Field(default=30_000, ge=1000)
    # Batching: a stage consumes up to batch_max_records per poll. batch_wait_ms is how long a fetch waits at the
    # broker when none of the partitions it asks for has a record (the broker answers as soon as one arrives): it
    # bounds an idle consumer's wake-ups, and — aiokafka keeping one fetch in flight per broker — how long a record
    # can wait for a fetch that was sent without its partition (bench scenario 3 measures the choice).
    batch_max_records: int = Field(default=500, ge=1)
    batch_wait_ms: int = Field(default=500, ge=1)
    # Priority lanes, while interactive traffic is flowing: backfill slices of at most lane_batch_quota records and
    # lane_batch_share of a stage's time; above lane_pause_lag interactive records of lag the batch lane is paused.
    lane_batch_quota: int = Field(default=16, ge=1)
    lane_batch_share: float = Field(default=0.1, gt=0, le=1)
    lane_pause_lag: int = Field(default=100, ge=1)
    # A co-located chain works its next cycle while the previous cycle's tail (the audit member, the acknowledgements,
    # the commit) finishes (streams/runtime/chain.py): lower latency at ordinary rates, but under load smaller cycles
    # and so more CPU per request (each cycle pays its fixed costs). False: one cycle at a time, tail included.
    chain_overlap_tail: bool = True
    # A chain commits its acknowledged offsets at most once per this many ms (and when it goes idle or stops): at
    # ordinary rates each cycle holds one or two requests, and a commit per cycle cost ~0.35 ms of the worker's CPU and
    # ~0.6–1 ms of the broker's (the group coordinator's append). A crash redelivers at most this much more (the audit
    # and the claims deduplicate). 0: commit after every cycle.
    chain_commit_interval_ms: int = Field(default=250, ge=0)
    # A chain with the entry stage fetches its members' other topics (fed only from outside it) only while they carry
    # records, probing the quiet ones every second (streams/runtime/lanes.py QuietPartitions): a fetch naming all 64
    # partitions of ``all+`` cost the worker and the broker ~2–3× one naming the ingress's. False: fetch them all.
    chain_park_quiet_partitions: bool = True
    # A lone stage (``tollway worker <stage>``, one consumer group per stage) polls and works its next batch while the
    # previous batch's acknowledgements and commit finish (one at a time, in order; the audit stage waits for them
    # before its next batch), and commits its acknowledged offsets at most once per stage_commit_interval_ms (and
    # when it goes idle or stops), as a chain does: at 10–100 req/s a stage's batch holds a request or two, and six
    # stage processes each paid a commit and an acknowledgement wait per batch. False / 0: one batch at a time, a
    # commit after every batch. A crash redelivers at most the interval's worth more (the audit and claims dedupe).
    stage_overlap_tail: bool = True
    stage_commit_interval_ms: int = Field(default=250, ge=0)
    # 0: the runner already batches (one produce per partition per batch, sent at once); a linger only delays each
    # hop (issue: ~2.5–3 ms per hop at low rates; bench scenario 3 measures both with --set producer_linger_ms=2).
    producer_linger_ms: int = Field(default=0, ge=0)
    max_message_bytes: int = Field(default=1_048_576, ge=1024)
    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    state_dir: Path = REPO_ROOT / ".state"
    policy_file: Path | None = None
    # The issue's and the docs' name is TOLLWAY_MODELS; TOLLWAY_MODELS_FILE is accepted too.
    models_file: Path | None = Field(default=None, validation_alias=AliasChoices(
        "TOLLWAY_MODELS", "TOLLWAY_MODELS_FILE", "models_file"))
    # The local model backend sleeps catalog latency × this factor (0: no emulated latency, for throughput runs).
    model_latency_scale: float = Field(default=1.0, ge=0)
    # Bearer key for OpenAI-compatible model backends (catalog backends with api_key_required need it).
    model_api_key: SecretStr | None = None
    # Latency budgets per SLO tier (ms); the per-stage allocation lives with the tiers in streams/budgets.py.
    budget_interactive_ms: int = 2_000
    budget_standard_ms: int = 10_000
    budget_batch_ms: int = 3_600_000
    # Secret the ingress signs principals with, so a stage can tell a forged principal from a real one.
    principal_secret: SecretStr = SecretStr("tollway-dev-secret-change-me")
    # Keys the stages sign policy decisions and outcomes with ("kid:secret[,kid:secret…]": the first signs, all
    # verify, so a key rotates by prepending the new one, then dropping the old once no envelope carries it).
    decision_keys: SecretStr = SecretStr("dev:tollway-dev-decision-key-change-me")
    audit_secret: SecretStr = SecretStr("tollway-dev-audit-secret-change-me")
    # Audit log: prompt/answer as sha256 only ("hashes") or also in redacted form ("redacted"); never raw.
    audit_content: Literal["hashes", "redacted"] = "hashes"
    # Signed checkpoints every N records or T seconds (and on stop); Ed25519 instead of HMAC when a PEM key is set.
    audit_checkpoint_records: int = Field(default=1000, ge=1)
    audit_checkpoint_interval_s: float = Field(default=10.0, gt=0)
    audit_ed25519_key_file: Path | None = None
    audit_segment_records: int = Field(default=100_000, ge=1)
    # Audit dedup claims outlive any redelivery: the work topics keep records 7 days.
    audit_claim_ttl_days: int = Field(default=8, ge=1)
    # Output guardrails (post-process): answers naming a blocked term are refused; longer answers are cut.
    output_blocked_terms: tuple[str, ...] = ()
    output_max_chars: int = Field(default=32_000, ge=1)
    metrics_port: int | None = None  # expose /metrics on this port (0 = any free port)
    metrics_host: str = "127.0.0.1"
    log_level: str = "INFO"
    # The cost ledger's Faust worker (`tollway ledger worker`): its web server answers /ledger/ queries.
    ledger_host: str = "127.0.0.1"
    ledger_port: int = Field(default=6066, ge=1, le=65535)
    # Seen request ids are forgotten after this many days (a replayed response older than that would count again).
    ledger_dedup_days: int = Field(default=8, ge=1)
    # The ledger worker checkpoints a partition's changed cells to its Faust changelogs every N records or T seconds
    # (a restart re-applies the responses after the last checkpoint, so these bound restart work, not correctness).
    ledger_checkpoint_records: int = Field(default=20_000, ge=1)
    ledger_checkpoint_interval_s: float = Field(default=5.0, gt=0)
    # Online evaluators (post-process): the share of requests evaluated (chosen by a hash of the request id), and
    # the share of an answer's sentences the retrieved passages must support for it to count as grounded.
    eval_sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    eval_grounded_min: float = Field(default=0.8, ge=0.0, le=1.0)
    # The learning router (issue 20, docs/ROUTING.md): "off" (the calibrated router or the heuristic decides the
    # auto tier), "learn" (model workers learn the tier online from outcomes and evaluators' verdicts, rebuilding
    # the state from the responses and outcomes topics at start-up) or "frozen" (rebuilt, then neither learns nor
    # probes). The verified cascade: off when unset, else an auto tier whose learnt P(needs it) is below this value
    # is served one tier lower first and escalated when the evaluators fail the answer.
    router_learning: Literal["off", "learn", "frozen"] = "off"
    # The learner's state snapshot (<prefix>.routing.snapshots, docs/ROUTING.md): a learning follower writes one
    # round of per-tenant snapshots every this many observations (0: never) or, when anything changed, every this
    # many seconds; a start loads the latest round and replays only the topics' tail past it. A snapshot record may
    # be up to router_snapshot_max_bytes (the topic's max.message.bytes).
    router_snapshot_every: int = Field(default=1000, ge=0)
    router_snapshot_interval_s: float = Field(default=300.0, gt=0)
    router_snapshot_max_bytes: int = Field(default=16 * 1024 * 1024, ge=1024 * 1024)
    router_cascade_below: float | None = Field(default=None, ge=0.0, le=1.0)
    # With the cascade on: also verify an answer served below large without a cascade, escalating it one tier up
    # when an evaluator fails it (the router's own under-routing caught like a cascade's cheaper answer).
    router_cascade_verify_served: bool = False
    # … and draw a second sample of the answer being verified (both billed); the two must agree (self-consistency).
    router_cascade_self_consistency: bool = False
    # The injection detector's semantic head (issue 16; workers/detectors/semantic.py): a logistic regression over
    # all-MiniLM-L6-v2 embeddings, run only when the rules and n-grams are unsure. Opt-in: it needs the `semantic`
    # extra (onnxruntime + the packaged int8 model) and costs ~10-60 ms of CPU per embedded prompt (README); without
    # the extra the policy stage logs a warning and runs rules + n-grams.
    injection_semantic: bool = False
    # Retrieval and cache (issues 3, 19). The embedder is "static" (WordLlama static embeddings shipped in the
    # wordllama wheel, offline; dim 64/128/256), "hashing" (lexical, deterministic, fast tests) or "openai" (any
    # OpenAI-compatible /v1/embeddings endpoint at embedding_url). See docs/SEMANTIC_CACHE.md.
    embedder: Literal["static", "hashing", "openai"] = "static"
    embedding_dim: int = Field(default=256, ge=8)
    embedding_url: str | None = None
    embedding_model: str = "text-embedding-3-small"
    embedding_api_key: SecretStr | None = None
    retrieval_top_k: int = Field(default=4, ge=1, le=50)
    retrieval_min_score: float = Field(default=0.15, ge=-1.0, le=1.0)
    # Reorder the top_k passages with the cache's pair verifier (static embedder only). Off by default: it raised
    # recall@1 on the outsider tune questions but not on the test ones (docs/SEMANTIC_CACHE.md).
    retrieval_rerank: bool = False
    memory_ttl_s: int = Field(default=3600, ge=1)
    memory_max_turns: int = Field(default=10, ge=1)
    cache_ttl_s: int = Field(default=86_400, ge=1)
    cache_max_ttl_s: int = Field(default=7 * 86_400, ge=1)
    cache_semantic_threshold: float = Field(default=0.88, gt=0.0, le=1.0)
    # The pair verifier after the near-miss guard (workers/cache/verifier.py; only for the embedder its weights
    # were fit with, i.e. the static one). Off: the guard alone decides above the threshold.
    cache_verifier: bool = True
    # Redis calls on the request path give up quickly: a slow cache is a miss, never a stalled request.
    redis_timeout_ms: int = Field(default=250, ge=1)
    # HTTP ingress and SDK (issue 9). Dev mode: while no policy is in force, accept requests without a key (tenant
    # from X-Tollway-Tenant); off, the ingress answers 503 until a policy is loaded (fail closed).
    ingress_dev_mode: bool = False
    # The ingress's event loop: uvloop (libuv) costs less CPU per HTTP request than asyncio's own loop (issue 18,
    # bench/gateway_bench.py); ``asyncio`` is the fallback.
    ingress_event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    # Idempotency-Key results are remembered this long, so a retried request is neither worked nor charged twice.
    idempotency_ttl_s: int = Field(default=86_400, ge=1)
    # A publish that Kafka has not acknowledged within this many seconds answers 503.
    ingress_publish_timeout_s: float = Field(default=5.0, gt=0)
    # OpenTelemetry traces (issue 23, docs/TRACING.md): off unless an OTLP/HTTP endpoint is set (e.g.
    # http://127.0.0.1:4318, or its full /v1/traces URL). sample_rate: the share of new traces kept (by trace id);
    # a caller's sampled flag is followed, and every error and SLO miss is kept whatever the rate. The tenant goes
    # on spans keyed-hashed (default), plain, or not at all.
    otel_endpoint: str | None = None
    otel_sample_rate: float = Field(default=0.1, ge=0.0, le=1.0)
    otel_service_name: str = "tollway"
    otel_tenant: Literal["hashed", "plain", "omit"] = "hashed"
    otel_tenant_salt: SecretStr = SecretStr("tollway-trace-salt-change-me")


    @model_validator(mode="before")
    @classmethod
    def _addresses_from_ports(cls, data: object) -> object:
        if isinstance(data, dict):
            brokers = _int(data.get("kafka_brokers"), 1)
            if not data.get("bootstrap_servers") and (data.get("kafka_port") or brokers > 1):
                port = _int(data.get("kafka_port"), 9092)
                data["bootstrap_servers"] = ",".join(f"127.0.0.1:{port + 10 * i}" for i in range(brokers))
            if not data.get("replication_factor"):
                data["replication_factor"] = min(3, brokers)
            if not data.get("min_insync_replicas"):
                data["min_insync_replicas"] = (_int(data["replication_factor"], 1) + 1) // 2
            if not data.get("redis_url") and data.get("redis_port"):
                data["redis_url"] = f"redis://127.0.0.1:{data['redis_port']}/0"
        return data

    @model_validator(mode="after")
    def _insync_within_replicas(self) -> Settings:
        if self.min_insync_replicas > self.replication_factor:
            raise ValueError(f"min_insync_replicas {self.min_insync_replicas} exceeds replication_factor "
                             f"{self.replication_factor}: no write could ever succeed")
        return self

    def group_instance_id(self, member: str) -> str | None:
        """The static member name of this process's consumer ``member`` in its group, or None (dynamic)."""
        return None if self.instance_id is None else f"{self.instance_id}-{member}"

    @property
    def kafka_credentials_path(self) -> Path:
        return self.kafka_credentials_file or self.state_dir / "credentials" / "kafka.json"

    def budget_ms_for(self, tier: str) -> int:
        """The latency budget of an SLO tier (``interactive``, ``standard`` or ``batch``): the one tier→budget map."""
        budgets = {"interactive": self.budget_interactive_ms, "standard": self.budget_standard_ms,
                   "batch": self.budget_batch_ms}
        try:
            return budgets[str(getattr(tier, "value", tier))]
        except KeyError:
            raise ConfigError(f"unknown tier {tier!r}; expected interactive, standard or batch") from None


def _int(value: object, default: int) -> int:
    """A raw (environment: string) integer before validation; a bad one is left for the field to report."""
    try:
        return int(value) if value not in (None, "") else default  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return default


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment (and ``overrides``); a bad value is one clear line per variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = ".".join(str(p) for p in error["loc"]) or "settings"
            given = error.get("input")
            shown = "" if isinstance(given, dict) else f" (got {str(given)[:60]!r})"
            lines.append(f"TOLLWAY_{field.upper()}: {error['msg']}{shown}")
        raise ConfigError("invalid settings: " + "; ".join(lines)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
