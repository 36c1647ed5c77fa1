"""Kubernetes manifests for tollway (kustomize base + overlays) and the tools that keep them honest.

    python -m deploy.k8s.generate [--check]     topics, users + ACLs, per-stage workloads from the code's tables
    python -m deploy.k8s.validate [OVERLAY...]  render with `kubectl kustomize`, validate against the schemas
    python -m deploy.k8s.capacity               the capacity model (docs/CAPACITY.md) from measured figures
"""
