"""Render the kustomize overlays and validate every object against its schema, with no cluster and no network.

Kubernetes' own kinds are checked by ``kubernetes-validate`` (the API's OpenAPI schemas as JSON Schema, shipped in
its PyPI wheel; strict: an unknown field is an error). Custom resources (Strimzi, KEDA, Prometheus Operator) are
checked against the ``openAPIV3Schema`` of their CRDs, vendored in ``deploy/k8s/schemas/`` (SOURCES.md), made strict
the way the API server's field validation is: unknown fields are errors except under
``x-kubernetes-preserve-unknown-fields``.

    python -m deploy.k8s.validate [OVERLAY ...]     (default: base, overlays/dev, overlays/prod)

Rendering uses ``kubectl kustomize`` (kubectl ships kustomize; no cluster is contacted).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import yaml

HERE = Path(__file__).resolve().parent
SCHEMAS = HERE / "schemas"
KUBERNETES_VERSION = "1.32"
TARGETS = ("base", "overlays/dev", "overlays/prod")


class RenderError(RuntimeError):
    pass


def render(target: str | Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize`` renders for ``target`` (a directory under deploy/k8s or a path)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RenderError("kubectl is needed to render the kustomizations (`kubectl kustomize`, offline); "
                          "install it (Debian: kubectl or kubernetes-client)")
    path = HERE / target if not Path(target).is_absolute() else Path(target)
    done = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120,
                          check=False)
    if done.returncode != 0:
        raise RenderError(f"kubectl kustomize {target} failed: {done.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _strict(node: Any) -> Any:
    """Close every object schema that lists its properties (the API server rejects unknown fields)."""
    if isinstance(node, list):
        return [_strict(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items()}
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@cache
def _crd_validator(kind: str, api_version: str) -> Any:
    group, _, version = api_version.rpartition("/")
    path = SCHEMAS / f"{kind.lower()}-{group}-{version}.json"
    if not path.exists():
        return None
    schema = _strict(json.loads(path.read_text()))
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema)


def problems(doc: dict[str, Any]) -> list[str]:
    """What is wrong with one object ([] when it validates); an object no schema knows is a problem too."""
    kind, api_version = doc.get("kind", "?"), doc.get("apiVersion", "?")
    name = f"{kind}/{doc.get('metadata', {}).get('name', '?')}"
    if "." in api_version.split("/")[0] and not api_version.split("/")[0].endswith("k8s.io"):
        validator = _crd_validator(kind, api_version)
        if validator is None:
            return [f"{name}: no vendored schema for {api_version} {kind} in {SCHEMAS}"]
        return [f"{name}: {'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
                for e in validator.iter_errors(doc)]
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{name}: {'.'.join(map(str, exc.path)) or '(root)'}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"{name}: {exc.message}"]
    return []


def main(argv: list[str]) -> int:
    failed = 0
    for target in argv or TARGETS:
        docs = render(target)
        found = [p for doc in docs for p in problems(doc)]
        for problem in found:
            print(f"{target}: {problem}")
        print(f"{target}: {len(docs)} objects, {len(found)} problems")
        failed += bool(found)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
