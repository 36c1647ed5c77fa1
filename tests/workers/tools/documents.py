"""The policy the tools tests share: the demo tools, and a tenant that may calculate and refund (≤ 100) but not
update tickets, which its model is nevertheless offered (so a call to it is refused, visibly)."""

from __future__ import annotations

from typing import Any

from schemas.policy import PolicyDocument, parse_policy

TOOLS: dict[str, Any] = {
    "calculator": {"description": "arithmetic", "price_micros": 100,
                   "parameters": {"type": "object", "properties": {"expression": {"type": "string", "maxLength": 200}},
                                  "required": ["expression"], "additionalProperties": False}},
    "ticket_lookup": {"price_micros": 50,
                      "parameters": {"type": "object", "properties": {"ticket_id": {"type": "string"}},
                                     "required": ["ticket_id"]}},
    "ticket_update": {"side_effects": True, "price_micros": 500,
                      "parameters": {"type": "object", "properties": {"ticket_id": {"type": "string"},
                                                                      "status": {"type": "string"}},
                                     "required": ["ticket_id", "status"]}},
    "issue_refund": {"side_effects": True, "price_micros": 2_000, "region": "eu",
                     "parameters": {"type": "object", "properties": {"ticket_id": {"type": "string"},
                                                                     "amount": {"type": "number"}},
                                    "required": ["ticket_id", "amount"]}},
    "notes": {"price_micros": 10,
              "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}},
}


def tools_policy(**acme_tools: Any) -> PolicyDocument:
    rules: dict[str, Any] = {"visible": ["calculator", "ticket_lookup", "ticket_update", "issue_refund", "notes"],
                             "allowed": ["calculator", "ticket_lookup", "issue_refund", "notes"],
                             "denied": ["ticket_update"],
                             "bounds": {"issue_refund": {"amount": {"max": 100}}}, **acme_tools}
    return parse_policy({"version": "tools-v1", "tools": TOOLS,
                         "tenants": {"acme": {"require_principal": False, "tools": rules,
                                              "pii": {"default": "redact", "credit_card": "block"}},
                                     "plain": {"require_principal": False}}})


def demo_server(transport: str = "stdio", url: str | None = None) -> dict[str, Any]:
    if transport == "stdio":
        return {"transport": "stdio", "command": ["python", "-m", "workers.tools.mcp_server"]}
    return {"transport": "streamable-http", "url": url}


BAD_TOOLS = ("slow", "raising", "huge", "picture", "prose", "die")


def mcp_policy(demo: dict[str, Any] | None = None, **acme_tools: Any) -> PolicyDocument:
    """The demo tools served by the project's MCP server (and a misbehaving one), with the same tenant rules."""
    text = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
    tools: dict[str, Any] = {
        "calculator": {**TOOLS["calculator"], "kind": "mcp", "server": "demo"},
        "ticket_lookup": {**TOOLS["ticket_lookup"], "kind": "mcp", "server": "demo", "tenant_argument": "tenant"},
        "ticket_update": {**TOOLS["ticket_update"], "kind": "mcp", "server": "demo", "tenant_argument": "tenant"},
        # Its first call may read the index topic from Kafka: a longer timeout than the others.
        "search": {"kind": "mcp", "server": "demo", "tenant_argument": "tenant", "price_micros": 30,
                   "timeout_ms": 15_000,
                   "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                                  "required": ["query"], "additionalProperties": False}},
        "slow": {"kind": "mcp", "server": "bad", "timeout_ms": 300, "price_micros": 10,
                 "parameters": {"type": "object", "properties": {"seconds": {"type": "number"}}}},
        **{name: {"kind": "mcp", "server": "bad", "price_micros": 10, "max_result_chars": 1_000,
                  "parameters": text} for name in BAD_TOOLS if name != "slow"},
    }
    names = list(tools)
    rules: dict[str, Any] = {"visible": names, "allowed": [n for n in names if n != "ticket_update"],
                             "denied": ["ticket_update"], "max_calls_per_step": 8, **acme_tools}
    return parse_policy({"version": "tools-mcp-v1", "tools": tools,
                         "mcp_servers": {"demo": demo or demo_server(),
                                         "bad": {"transport": "stdio",
                                                 "command": ["python", "-m", "tests.fakes.mcp_misbehaving"]}},
                         "tenants": {"acme": {"require_principal": False, "tools": rules,
                                              "pii": {"default": "redact", "credit_card": "block"}}}})
