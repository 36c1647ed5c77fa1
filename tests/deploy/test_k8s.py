"""The Kubernetes manifests (deploy/k8s): they validate against the Kubernetes and CRD schemas, they are what the
generator makes of the code's tables, and every stage, topic and principal of the code has its manifest."""

from __future__ import annotations

import os
import shutil
from functools import cache
from typing import Any

import pytest
from typer.testing import CliRunner

from deploy.k8s import generate, validate
from schemas.envelope import STAGES as STAGE_NAMES
from streams.cli.main import app
from streams.runtime import acls
from streams.runtime.topics import Topology
from streams.settings import Settings
from streams.stages.registry import STAGES

if shutil.which("kubectl") is None and not os.environ.get("CI"):
    pytest.skip("kubectl (which ships kustomize) is not installed: the overlays cannot be rendered",
                allow_module_level=True)

OVERLAYS = validate.TARGETS
TOPOLOGY = Topology(generate.PREFIX)


@cache
def rendered(target: str) -> tuple[dict[str, Any], ...]:
    return tuple(validate.render(target))


def of_kind(target: str, *kinds: str) -> list[dict[str, Any]]:
    return [doc for doc in rendered(target) if doc["kind"] in kinds]


@pytest.mark.parametrize("target", OVERLAYS)
def test_every_object_validates_against_its_schema(target: str) -> None:
    docs = rendered(target)
    assert len(docs) > 50
    assert [p for doc in docs for p in validate.problems(doc)] == []


def test_the_validator_rejects_what_a_cluster_would() -> None:
    deployment = dict(next(d for d in rendered("base") if d["kind"] == "Deployment"))
    assert validate.problems({**deployment, "spec": {**deployment["spec"], "replica": 2}})  # a typo
    assert validate.problems({**deployment, "spec": {**deployment["spec"], "replicas": "two"}})
    topic = next(d for d in rendered("base") if d["kind"] == "KafkaTopic")
    assert validate.problems({**topic, "spec": {**topic["spec"], "partitions": 0}})
    assert validate.problems({**topic, "spec": {**topic["spec"], "partition": 3}})
    scaled = next(d for d in rendered("base") if d["kind"] == "ScaledObject")
    assert validate.problems({**scaled, "spec": {**scaled["spec"], "triggers": []}})
    kafka = next(d for d in rendered("base") if d["kind"] == "Kafka")
    assert validate.problems({**kafka, "spec": {**kafka["spec"], "zookeeper": {"replicas": 3}}})
    assert validate.problems({"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "x"}})


def test_generated_files_are_what_the_code_tables_make() -> None:
    for path, text in generate.files().items():
        assert path.read_text() == text, f"{path.name} is stale: run python -m deploy.k8s.generate"


@pytest.mark.parametrize("target", OVERLAYS)
def test_every_topic_of_the_topology_has_its_kafkatopic(target: str) -> None:
    topics = {d["spec"]["topicName"]: d["spec"] for d in of_kind(target, "KafkaTopic")}
    config = next(d for d in of_kind(target, "ConfigMap") if d["metadata"]["name"] == "tollway-config")["data"]
    partitions = int(config["TOLLWAY_PARTITIONS"])
    wanted = TOPOLOGY.all_topics(Settings.model_construct(topic_prefix=generate.PREFIX, partitions=partitions,
                                                          replication_factor=3))
    assert set(topics) == {t.name for t in wanted}
    for topic in wanted:
        spec = topics[topic.name]
        assert spec["partitions"] == topic.num_partitions, topic.name  # TOLLWAY_PARTITIONS agrees with the topics
        assert spec["replicas"] == 3 and spec["config"]["min.insync.replicas"] == "2"
        assert spec["config"]["cleanup.policy"] == topic.topic_configs["cleanup.policy"]
    assert config["TOLLWAY_TOPIC_PREFIX"] == generate.PREFIX and config["TOLLWAY_REPLICATION_FACTOR"] == "3"


def _workload(target: str, stage: str) -> dict[str, Any]:
    found = [d for d in of_kind(target, "Deployment", "StatefulSet")
             if d["spec"]["template"]["spec"]["containers"][0].get("command") == ["tollway", "worker", stage]]
    assert len(found) == 1, f"{target}: {len(found)} workloads run `tollway worker {stage}`"
    return found[0]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.parametrize("target", OVERLAYS)
def test_every_stage_of_the_registry_has_workload_probes_pdb_and_scaledobject(target: str) -> None:
    assert [s.name for s in STAGES] == list(STAGE_NAMES)
    config = next(d for d in of_kind(target, "ConfigMap") if d["metadata"]["name"] == "tollway-config")["data"]
    partitions = {d["spec"]["topicName"]: d["spec"]["partitions"] for d in of_kind(target, "KafkaTopic")}
    for stage in STAGES:
        workload = _workload(target, stage.name)
        labels = workload["spec"]["template"]["metadata"]["labels"]
        container = workload["spec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["metrics"] == int(config["TOLLWAY_METRICS_PORT"]) and config["TOLLWAY_METRICS_HOST"] == "0.0.0.0"
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}, (stage.name, probe)
        assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
        env = _env(container)
        assert env["TOLLWAY_KAFKA_USERNAME"] == acls.stage_principal([stage.name])
        assert env["TOLLWAY_KAFKA_PASSWORD"]["secretKeyRef"]["name"] == acls.stage_principal([stage.name])
        # static membership: a stable pod name (StatefulSet) is the consumers' group_instance_id
        assert workload["kind"] == "StatefulSet", stage.name
        assert env["TOLLWAY_INSTANCE_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}, stage.name

        pdbs = [p for p in of_kind(target, "PodDisruptionBudget")
                if p["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(pdbs) == 1, stage.name

        scaled = [s for s in of_kind(target, "ScaledObject")
                  if s["spec"]["scaleTargetRef"]["name"] == workload["metadata"]["name"]]
        assert len(scaled) == 1 and scaled[0]["spec"]["scaleTargetRef"]["kind"] == workload["kind"], stage.name
        spec = scaled[0]["spec"]
        lag = [t["metadata"] for t in spec["triggers"] if t["type"] == "kafka"]
        reads = {*TOPOLOGY.stage_lanes(stage.name), *(TOPOLOGY.stage_lanes("ingress") if stage.entry else ())}
        assert {t["topic"] for t in lag} == reads, stage.name  # one lag trigger per topic the group reads
        assert {t["consumerGroup"] for t in lag} == {TOPOLOGY.group(stage.name)}
        # KEDA caps at the partition count anyway; a higher max would only add idle consumers
        assert spec["minReplicaCount"] <= spec["maxReplicaCount"] <= min(partitions[t] for t in reads)
        assert all(int(t["lagThreshold"]) > 0 for t in lag)


@pytest.mark.parametrize("target", OVERLAYS)
def test_kafka_is_a_replicated_kraft_cluster_across_zones(target: str) -> None:
    (kafka,) = of_kind(target, "Kafka")
    pools = {p["metadata"]["name"]: p["spec"] for p in of_kind(target, "KafkaNodePool")}
    assert pools["controller"]["roles"] == ["controller"] and pools["controller"]["replicas"] == 3
    assert pools["broker"]["roles"] == ["broker"] and pools["broker"]["replicas"] >= 3
    assert kafka["spec"]["kafka"]["rack"]["topologyKey"]
    assert kafka["spec"]["kafka"]["config"]["min.insync.replicas"] == 2
    assert kafka["spec"]["kafka"]["authorization"]["superUsers"] == [acls.ADMIN]
    (listener,) = kafka["spec"]["kafka"]["listeners"]
    assert listener["authentication"]["type"] == "scram-sha-512"


def test_kafka_users_carry_exactly_the_acl_table() -> None:
    users = {u["metadata"]["name"]: u["spec"] for u in of_kind("base", "KafkaUser")}
    assert set(acls.PRINCIPALS) | {acls.ADMIN, generate.LAG_READER} == set(users)
    granted = {(name, a["resource"]["type"], a["resource"]["patternType"], a["resource"]["name"],
                tuple(a["operations"]))
               for name, spec in users.items() if name != generate.LAG_READER
               for a in spec.get("authorization", {}).get("acls", [])}
    wanted = {(r.principal, generate._RESOURCE[r.resource], generate._PATTERN[r.pattern], r.name,
               tuple(generate._OPERATION[op] for op in r.operations)) for r in acls.rules(generate.PREFIX)}
    assert granted == wanted
    assert "authorization" not in users[acls.ADMIN]  # the super user
    assert all(spec["authentication"]["type"] == "scram-sha-512" for spec in users.values())


def test_every_secret_a_pod_reads_its_kafka_password_from_is_a_kafka_user() -> None:
    users = {u["metadata"]["name"] for u in of_kind("base", "KafkaUser")}
    for workload in of_kind("base", "Deployment", "StatefulSet"):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            password = _env(container).get("TOLLWAY_KAFKA_PASSWORD")
            if password is not None:
                assert password["secretKeyRef"]["name"] in users, workload["metadata"]["name"]


def test_every_tollway_command_exists_in_the_cli() -> None:
    runner = CliRunner()
    for workload in of_kind("base", "Deployment", "StatefulSet"):
        command = workload["spec"]["template"]["spec"]["containers"][0].get("command") or []
        if command[:1] == ["tollway"]:
            result = runner.invoke(app, [*command[1:], "--help"])
            assert result.exit_code == 0, f"`{' '.join(command)}`: {result.output}"


def test_the_ingress_scales_on_cpu_and_prometheus_scrapes_every_tollway_pod() -> None:
    (hpa,) = of_kind("base", "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "ingress"
    monitored = {e["port"] for m in of_kind("base", "PodMonitor") if m["metadata"]["name"] == "tollway"
                 for e in m["spec"]["podMetricsEndpoints"]}
    for workload in of_kind("base", "Deployment", "StatefulSet"):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        if labels.get("app.kubernetes.io/component") in ("stage", "ingress"):
            ports = {p["name"] for p in workload["spec"]["template"]["spec"]["containers"][0]["ports"]}
            assert ports & monitored, workload["metadata"]["name"]
