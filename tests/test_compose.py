"""docker-compose.yml parses, and every command it runs exists in the tollway CLI."""

from pathlib import Path

import yaml
from typer.testing import CliRunner

from streams.cli.main import app

ROOT = Path(__file__).resolve().parent.parent


def test_compose_commands_exist_in_the_cli() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "redis", "retrieval", "policy", "cache", "model", "postprocess", "audit"} <= set(services)
    runner = CliRunner()
    for name, service in services.items():
        command = service.get("command")
        if not command or command[0] != "tollway":
            continue
        result = runner.invoke(app, [*command[1:], "--help"])
        assert result.exit_code == 0, f"service {name}: `{' '.join(command)}` is not a tollway command: {result.output}"


def test_compose_files_it_mounts_exist() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (ROOT / source).exists(), f"{source} is mounted but missing"


def test_compose_sends_the_workers_traces_to_jaeger() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert "4318:4318" in services["jaeger"]["ports"] and "16686:16686" in services["jaeger"]["ports"]
    for name in ("retrieval", "policy", "cache", "model", "postprocess", "audit", "ingress"):
        assert services[name]["environment"]["TOLLWAY_OTEL_ENDPOINT"] == "http://jaeger:4318", name
