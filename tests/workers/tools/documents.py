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
