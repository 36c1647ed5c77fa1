"""The whole route co-located as one consumer group, on the real broker: every request answered and audited once."""

from __future__ import annotations

import pytest

from streams.settings import Settings
from tests.kafka_helpers import route_answers_and_audits

pytestmark = pytest.mark.integration


async def test_a_colocated_route_answers_and_audits_every_request(settings: Settings) -> None:
    await route_answers_and_audits(settings, ["all+"])
