"""Starting a Kafka client (streams/runtime/connections.py): failures are converted, a cancel never is."""

from __future__ import annotations

import asyncio

import pytest

from schemas.errors import ServiceUnavailable
from streams.runtime import connections
from streams.settings import Settings


class _Refused:
    """A client whose start fails at once, as aiokafka's does when nothing listens on the port."""

    async def start(self) -> None:
        raise ConnectionRefusedError("nothing listens there")


async def test_a_failed_start_is_service_unavailable() -> None:
    with pytest.raises(ServiceUnavailable, match="not reachable"):
        await connections.start(_Refused(), Settings())


async def test_a_cancel_that_coincides_with_the_failure_stays_a_cancel() -> None:
    # The start fails in the same loop turn the caller is cancelled: 3.11's wait_for then returns the failure, and a
    # reconnect loop that retries on ServiceUnavailable (the ingress's) would never end.
    task = asyncio.create_task(connections.start(_Refused(), Settings()))
    await asyncio.sleep(0)  # the task now waits on the start it scheduled
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
