"""Vendor the ``openAPIV3Schema`` of CRDs as JSON Schema files: ``python -m deploy.k8s.schemas.vendor CRD.yaml...``.

Each served version of each CRD becomes ``<kind>-<group>-<version>.json`` beside this file (lower case), with the
``description`` texts dropped (they do not change what validates and make up most of the bytes). Where the files
came from, at which commit and under which licence: SOURCES.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent


def _strip(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def vendor(crd_path: Path, out_dir: Path = HERE) -> list[Path]:
    written = []
    for crd in yaml.safe_load_all(crd_path.read_text()):
        if not crd or crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if not version.get("served", True):
                continue
            schema = _strip(version["schema"]["openAPIV3Schema"])
            target = out_dir / f"{kind.lower()}-{group}-{version['name']}.json"
            target.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
            written.append(target)
    return written


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        for path in vendor(Path(arg)):
            print(path.name)
