"""The one place where the SGLang version the operator speaks is pinned.

The planner writes SGLang arguments for exactly this version; ``tests/unit/test_sglang_argv.py`` parses
them with this version's own parser (installed from ``hack/sglang-parser-requirements.txt``, which must
pin the same ``sglang==``), and the CRD's default engine image is ``SGLANG_IMAGE``.
"""

from __future__ import annotations

__all__ = ["SGLANG_IMAGE", "SGLANG_ROUTER_VERSION", "SGLANG_VERSION", "WORKER_IMAGE"]

SGLANG_VERSION = "0.5.23"
# lmsysorg publishes one image per release tagged v<version> (KServe's runtime pins v0.5.14 the same way).
# Not pulled on this machine (no registry access): confirm the tag exists before a real rollout.
SGLANG_IMAGE = f"lmsysorg/sglang:v{SGLANG_VERSION}"
# The router the operator deploys in front of the replicas (pyproject's `router` extra pins the same).
SGLANG_ROUTER_VERSION = "0.3.2"
# The engine pods' default image: the Dockerfile's worker target, FROM SGLANG_IMAGE plus mimo-worker, Ray
# and sglang-router. Plain SGLANG_IMAGE cannot run a gang (it has no mimo-worker).
WORKER_IMAGE = f"ghcr.io/mimo-operator/mimo-worker:v0.1.0-sglang{SGLANG_VERSION}"
