"""Tool steps per task: a task (``request.task_id``, e.g. one agent job spread over several requests and turns) may
take at most ``tools.max_steps_per_task`` model turns that ask for tools, whatever its requests.

Each step is recorded by its id (``<request_id>:<step>``) in a set per tenant and task, so a redelivered batch does
not count a step twice; the count is the set's size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from schemas.errors import BackendError


class TaskSteps(Protocol):
    async def count(self, tenant: str, task_id: str, step_id: str) -> int:
        """Record ``step_id`` for the task (idempotent); the number of steps the task has taken with it."""


@dataclass
class MemoryTaskSteps:
    steps: dict[tuple[str, str], set[str]] = field(default_factory=dict)

    async def count(self, tenant: str, task_id: str, step_id: str) -> int:
        taken = self.steps.setdefault((tenant, task_id), set())
        taken.add(step_id)
        return len(taken)


class RedisTaskSteps:
    def __init__(self, client: Redis, *, prefix: str, ttl_s: int = 7 * 24 * 3600) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_s = ttl_s

    async def count(self, tenant: str, task_id: str, step_id: str) -> int:
        key = f"{self.prefix}:toolsteps:{tenant}:{task_id}"
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.sadd(key, step_id)
                pipe.scard(key)
                pipe.expire(key, self.ttl_s)
                _, taken, _ = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BackendError(f"the task step counter is unreachable: {exc}") from exc
        return int(taken)
