"""The built-in demo tools: a calculator, and a ticket desk (lookup, update, refund) over Redis or memory.

Each built-in is ``async (arguments, tenant) -> JSON-able result`` and raises :class:`ToolFailure` with a code when
it cannot do what was asked. The arguments were already checked against the tool's JSON Schema and the tenant's
bounds (``workers/tools/governance.py``); a built-in still refuses what makes no sense for it (an unknown ticket).

The ticket store keeps each tenant's tickets apart (``<prefix>:tickets:<tenant>`` hashes). ``issue_refund`` is the
payment-like tool: it appends to the ticket's refunds and returns the refund's id; the tools stage runs it at most
once per tool call (``workers/tools/effects.py``), and tests count its refunds to prove it.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from schemas.errors import ToolFailure

# ------------------------------------------------------------------ calculator
_BINARY: Mapping[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY: Mapping[type[ast.unaryop], Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_MAX_EXPRESSION_CHARS = 200
_MAX_EXPONENT = 64


def calculate(expression: str) -> int | float:
    """Arithmetic only (numbers, + - * / // % **, parentheses): the expression is parsed, never evaluated as code."""
    text = expression.replace("^", "**").replace("×", "*").replace("÷", "/").strip()
    if not text or len(text) > _MAX_EXPRESSION_CHARS:
        raise ToolFailure("invalid_arguments", f"an expression of 1 to {_MAX_EXPRESSION_CHARS} characters is needed")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ToolFailure("invalid_arguments", f"not an arithmetic expression: {exc.msg}") from exc

    def value(node: ast.AST) -> int | float:
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
                raise ToolFailure("invalid_arguments", f"exponents above {_MAX_EXPONENT} are refused")
            try:
                result: int | float = _BINARY[type(node.op)](left, right)
            except ZeroDivisionError as exc:
                raise ToolFailure("invalid_arguments", "division by zero") from exc
            return result
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            unary: int | float = _UNARY[type(node.op)](value(node.operand))
            return unary
        raise ToolFailure("invalid_arguments",
                          f"only numbers and + - * / // % ** are allowed, not {type(node).__name__}")

    result = value(tree)
    if isinstance(result, float) and (math.isnan(result) or math.isinf(result)):
        raise ToolFailure("invalid_arguments", "the result is not a finite number")
    return int(result) if isinstance(result, float) and result.is_integer() else result


# ------------------------------------------------------------------ tickets
class TicketStore(Protocol):
    async def get(self, tenant: str, ticket_id: str) -> dict[str, Any] | None: ...

    async def put(self, tenant: str, ticket_id: str, ticket: dict[str, Any]) -> None: ...


@dataclass
class MemoryTicketStore:
    tickets: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    async def get(self, tenant: str, ticket_id: str) -> dict[str, Any] | None:
        found = self.tickets.get((tenant, ticket_id))
        return orjson.loads(orjson.dumps(found)) if found is not None else None  # a copy, as Redis would give

    async def put(self, tenant: str, ticket_id: str, ticket: dict[str, Any]) -> None:
        self.tickets[(tenant, ticket_id)] = orjson.loads(orjson.dumps(ticket))


class RedisTicketStore:
    def __init__(self, client: Redis, *, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def key(self, tenant: str) -> str:
        return f"{self.prefix}:tickets:{tenant}"

    async def get(self, tenant: str, ticket_id: str) -> dict[str, Any] | None:
        try:
            raw = await self.client.hget(self.key(tenant), ticket_id)
        except (RedisError, OSError) as exc:
            raise ToolFailure("tool_unavailable", f"the ticket store is unreachable: {exc}") from exc
        if raw is None:
            return None
        ticket: dict[str, Any] = orjson.loads(raw)
        return ticket

    async def put(self, tenant: str, ticket_id: str, ticket: dict[str, Any]) -> None:
        try:
            await self.client.hset(self.key(tenant), ticket_id, orjson.dumps(ticket))
        except (RedisError, OSError) as exc:
            raise ToolFailure("tool_unavailable", f"the ticket store is unreachable: {exc}") from exc


TICKET_STATUSES = ("open", "pending", "resolved", "closed")
BuiltinFn = Callable[[dict[str, Any], str], Awaitable[Any]]


@dataclass
class Builtins:
    """The built-in tools by name, over one ticket store. ``idempotency_key`` is passed for side-effecting calls."""

    tickets: TicketStore = field(default_factory=MemoryTicketStore)

    def names(self) -> tuple[str, ...]:
        return ("calculator", "ticket_lookup", "ticket_update", "issue_refund")

    async def run(self, name: str, arguments: dict[str, Any], tenant: str, *, idempotency_key: str) -> Any:
        if name == "calculator":
            return {"expression": arguments.get("expression", ""), "result": calculate(str(arguments["expression"]))}
        ticket_id = str(arguments.get("ticket_id", ""))
        ticket = await self.tickets.get(tenant, ticket_id)
        if ticket is None:
            raise ToolFailure("not_found", f"ticket {ticket_id!r} does not exist")
        if name == "ticket_lookup":
            return {"ticket_id": ticket_id, **ticket}
        if name == "ticket_update":
            status = str(arguments.get("status", ""))
            if status not in TICKET_STATUSES:
                raise ToolFailure("invalid_arguments", f"status must be one of {', '.join(TICKET_STATUSES)}")
            ticket["status"] = status
            await self.tickets.put(tenant, ticket_id, ticket)
            return {"ticket_id": ticket_id, "status": status}
        if name == "issue_refund":
            amount = arguments.get("amount")
            if not isinstance(amount, int | float) or isinstance(amount, bool) or amount <= 0:
                raise ToolFailure("invalid_arguments", "amount must be a positive number")
            refunds: list[dict[str, Any]] = ticket.setdefault("refunds", [])
            done = next((r for r in refunds if idempotency_key and r.get("idempotency_key") == idempotency_key), None)
            if done is not None:  # the same call sent again (after a crash left it in doubt): the first refund
                return {"ticket_id": ticket_id, "refund_id": done["refund_id"], "amount": done["amount"]}
            refund_id = f"rf_{len(refunds) + 1}_{ticket_id}"
            refunds.append({"refund_id": refund_id, "amount": amount, "idempotency_key": idempotency_key})
            await self.tickets.put(tenant, ticket_id, ticket)
            return {"ticket_id": ticket_id, "refund_id": refund_id, "amount": amount}
        raise ToolFailure("unknown_tool", f"there is no built-in tool {name!r}")


async def seed_demo_tickets(store: TicketStore, tenant: str) -> None:
    """The demo's tickets (``make demo`` and the tests)."""
    await store.put(tenant, "T-1001", {"subject": "Invoice charged twice", "status": "open", "customer": "c_42"})
    await store.put(tenant, "T-1002", {"subject": "API returns 500 on login", "status": "pending",
                                       "customer": "c_7"})
