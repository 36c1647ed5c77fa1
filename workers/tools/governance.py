"""Governed tool calls: what a tenant's policy says about one call before it runs, and about its result after.

Before (:func:`admit`), in order — the first refusal is the call's structured error, the request goes on:
the tool is registered (``unknown_tool``) → the tenant allows it and does not deny it, nor does the rule of the
request's API key (``tool_denied``) → it runs in
a region the tenant accepts (``tool_residency_violation``) → the arguments match the tool's JSON Schema
(``invalid_arguments``, via ``jsonschema``) → numeric bounds such as ``amount ≤ 100`` and URL domain allow-lists
hold (``argument_out_of_bounds``) → PII in string arguments is redacted, or blocks the call (``pii_blocked``) by the
tenant's PII rules, exactly as in prompts.

After (:func:`inspect_result`): the result is serialised (``invalid_result`` when it cannot be, ``result_too_large``
over the tool's limit), PII in it is redacted or blocks it, and an indirect prompt injection in it is blocked
(``tool_result_blocked``) or flagged by ``tools.result_injection`` before the model ever reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
from jsonschema import Draft202012Validator

from schemas.errors import ToolFailure
from schemas.policy import PiiAction, PolicyDocument, TenantPolicy, ToolSpec
from workers.detectors import injection
from workers.detectors.pii import Redactor


@dataclass
class Admitted:
    """A call that may run: its spec and its arguments as they will be executed (redacted)."""

    spec: ToolSpec
    arguments: dict[str, Any]
    decisions: list[str] = field(default_factory=list)


def admit(name: str, arguments: dict[str, Any], doc: PolicyDocument, tenant: TenantPolicy,
          principal: str | None = None) -> Admitted:
    """The governance of one call; raises :class:`ToolFailure` with the refusal's code. ``principal``: the key id
    the policy stage decided the request came from (sealed), whose rules may narrow the tenant's."""
    spec = doc.tools.get(name)
    rules = tenant.tools
    if spec is None:
        raise ToolFailure("unknown_tool", f"there is no tool named {name!r}")
    if name in rules.denied or name not in rules.allowed:
        raise ToolFailure("tool_denied", f"the policy does not allow tool {name!r} for this tenant")
    narrower = rules.principals.get(principal) if principal is not None else None
    if narrower is not None and (name in narrower.denied or (narrower.allowed is not None
                                                             and name not in narrower.allowed)):
        raise ToolFailure("tool_denied", f"the policy does not allow tool {name!r} for key {principal}")
    regions = set(rules.regions or tenant.regions)
    if regions and spec.region != "any" and spec.region not in regions:
        raise ToolFailure("tool_residency_violation", f"tool {name!r} runs in {spec.region}; the tenant is restricted "
                                                      f"to {', '.join(sorted(regions))}")
    errors = sorted(Draft202012Validator(spec.parameters).iter_errors(arguments), key=lambda e: list(e.path))
    if errors:
        where = "/".join(str(p) for p in errors[0].absolute_path) or "<arguments>"
        raise ToolFailure("invalid_arguments", f"{where}: {errors[0].message}"[:500])
    decisions = [f"allow {name}"]
    for argument, bound in rules.bounds.get(name, {}).items():
        value = arguments.get(argument)
        if value is None:
            continue
        if bound.domains:
            _check_domain(argument, value, bound.domains)
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ToolFailure("argument_out_of_bounds", f"{argument} must be a number to be checked against its bounds")
        if bound.min is not None and value < bound.min:
            raise ToolFailure("argument_out_of_bounds", f"{argument}={value:g} is below the allowed minimum "
                                                        f"{bound.min:g}")
        if bound.max is not None and value > bound.max:
            raise ToolFailure("argument_out_of_bounds", f"{argument}={value:g} is above the allowed maximum "
                                                        f"{bound.max:g}")
    redactor = Redactor(action=tenant.pii.action)
    redacted = _redact(arguments, redactor)
    if redactor.blocked:
        raise ToolFailure("pii_blocked", f"the arguments contain {', '.join(sorted(redactor.blocked))}, which the "
                                         "policy blocks")
    changed = {e: n for e, n in redactor.counts.items() if tenant.pii.action(e) is PiiAction.REDACT}
    if changed:
        decisions.append("arguments redacted " + ", ".join(f"{e}×{n}" for e, n in sorted(changed.items())))
    assert isinstance(redacted, dict)
    return Admitted(spec, redacted, decisions)


def inspect_result(result: Any, spec: ToolSpec, tenant: TenantPolicy, decisions: list[str]) -> str:
    """The result as the model will read it (JSON text), after the output checks; raises :class:`ToolFailure`."""
    try:
        text = orjson.dumps(result).decode()
    except TypeError as exc:
        raise ToolFailure("invalid_result", f"the tool's result cannot be serialised as JSON: {exc}") from exc
    if len(text) > spec.max_result_chars:
        raise ToolFailure("result_too_large", f"the result has {len(text)} characters, over the tool's "
                                              f"{spec.max_result_chars}")
    redactor = Redactor(action=tenant.pii.action)
    text = redactor.redact(text)
    if redactor.blocked:
        raise ToolFailure("pii_blocked", f"the result contains {', '.join(sorted(redactor.blocked))}, which the "
                                         "policy blocks")
    if redactor.counts:
        decisions.append("result redacted " + ", ".join(f"{e}×{n}" for e, n in sorted(redactor.counts.items())))
    action = tenant.tools.result_injection
    if action != "allow":
        found = injection.score([text])
        if found.score >= tenant.injection.threshold:
            if action == "block":
                raise ToolFailure("tool_result_blocked", f"the result looks like a prompt injection (score "
                                                         f"{found.score:.2f}: {', '.join(found.rules)})")
            decisions.append(f"result injection flagged {found.score:.2f}")
    return text


def _check_domain(argument: str, value: Any, domains: list[str]) -> None:
    """A URL argument must be http(s) and point at one of ``domains`` or a subdomain of one."""
    url = urlsplit(value) if isinstance(value, str) else None
    host = (url.hostname or "").rstrip(".").lower() if url is not None else ""
    if url is None or url.scheme not in ("http", "https") or not host:
        raise ToolFailure("argument_out_of_bounds", f"{argument} must be an http(s) URL")
    if not any(host == d.lower() or host.endswith("." + d.lower()) for d in domains):
        raise ToolFailure("argument_out_of_bounds", f"{argument} points at {host}, which is not one of the allowed "
                                                    f"domains ({', '.join(domains)})")


def _redact(value: Any, redactor: Redactor) -> Any:
    if isinstance(value, str):
        return redactor.redact(value)
    if isinstance(value, dict):
        return {key: _redact(item, redactor) for key, item in value.items()}
    if isinstance(value, list):
        return [_redact(item, redactor) for item in value]
    return value


def offered_tools(doc: PolicyDocument | None, tenant: TenantPolicy | None) -> list[str]:
    """The tools a model may be offered for this tenant: the visible ones (default: the allowed ones)."""
    if doc is None or tenant is None or not doc.tools:
        return []
    return list(tenant.tools.visible or tenant.tools.allowed)
