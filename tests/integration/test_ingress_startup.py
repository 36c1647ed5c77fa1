"""`tollway serve` start-up and shut-down on the real broker: a port already taken exits 2 with one line whether Kafka
is up or down, closing what it opened; a stop signal ends a server that is still waiting for Kafka."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop

from streams.ingress.server import serving
from streams.settings import Settings

TOLLWAY = str(Path(sys.executable).with_name("tollway"))
DOWN = "127.0.0.1:1"  # nothing listens there: Kafka refused at once, the failure that raced the cancel


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process listens on (with SO_REUSEADDR, as python -m http.server and most servers set it)."""
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def _serve(settings: Settings, port: int, *, bootstrap: str | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "TOLLWAY_TOPIC_PREFIX": settings.topic_prefix, "TOLLWAY_STATE_DIR": str(settings.state_dir),
           "TOLLWAY_KAFKA_CREDENTIALS_FILE": str(settings.kafka_credentials_path), "TOLLWAY_LOG_LEVEL": "WARNING"}
    if bootstrap is not None:
        env["TOLLWAY_BOOTSTRAP_SERVERS"] = bootstrap
    return subprocess.Popen([TOLLWAY, "serve", "--port", str(port)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("kafka", ["up", "down"])
def test_a_taken_port_exits_2_with_one_line(settings: Settings, taken_port: int, kafka: str) -> None:
    server = _serve(settings, taken_port, bootstrap=None if kafka == "up" else DOWN)
    try:
        _, err = server.communicate(timeout=30)
    finally:
        server.kill()
    assert server.returncode == 2, err
    ours = [line for line in err.splitlines() if "aiokafka" not in line and "not reachable yet" not in line]
    assert ours == [f"cannot listen on 127.0.0.1:{taken_port}: error while attempting to bind on address "
                    f"('127.0.0.1', {taken_port}): address already in use"], err


def test_a_stop_signal_ends_a_server_still_waiting_for_kafka(settings: Settings) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = _serve(settings, port, bootstrap=DOWN)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # wait until it listens (and has failed to reach Kafka at least once)
            with socket.socket() as client:
                if client.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        time.sleep(1.0)  # inside the reconnect loop's backoff, not synchronisation with a result
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=20)
    finally:
        server.kill()
    assert server.returncode == 0


@pytest.mark.parametrize("round_", range(5))
def test_serving_on_a_taken_port_with_kafka_down_raises_on_uvloop(settings: Settings, taken_port: int,
                                                                  round_: int) -> None:
    # uvloop (the CLI's loop) ran the Kafka connect tasks before the failed bind was seen; the cancel that should
    # have ended them raced their refused connection and was lost, so the server never exited.
    dead = settings.model_copy(update={"bootstrap_servers": DOWN})

    async def start() -> None:
        async with serving(dead, port=taken_port):
            pytest.fail("served on a taken port")

    async def bounded() -> None:
        await asyncio.wait_for(start(), 20)

    with pytest.raises(OSError, match="address already in use"):
        uvloop.run(bounded())
