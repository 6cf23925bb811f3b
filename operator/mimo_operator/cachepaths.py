"""Where the operator's weights cache keeps a deployment's checkpoint — pure, below the planner.

The planner writes ``--model-path`` from it (the final launch reads the cache, never the hub), and the
weights builders (``build.weights``) download into the same place. A cached checkpoint is named by its
*cache key*, a function of (Hugging Face repo, revision) only, so every deployment of the same checkpoint
finds the same copy.
"""

from __future__ import annotations

import re

from mimo_operator import labels as L
from mimo_operator.catalog import Checkpoint
from mimo_operator.spec import DeploymentSpec

__all__ = ["CACHE_MOUNT_PATH", "WEIGHTS_DIR", "cache_key", "cached_checkpoint", "cached_model_path"]

# Where the builders mount the weights cache volume (spec.model.cache) in engine containers; the planner
# points Hugging Face's and DeepGEMM's caches below it.
CACHE_MOUNT_PATH = "/mimo-cache"
# Checkpoints live in <cache volume>/weights/<key>.
WEIGHTS_DIR = "weights"


def cache_key(repo: str, revision: str) -> str:
    """``<repo name, DNS-safe, ≤ 29>-<10 hex of (repo, revision)>``: a Kubernetes name and label part."""
    slug = re.sub(r"[^a-z0-9]+", "-", repo.split("/")[-1].lower()).strip("-")[:29].strip("-") or "model"
    return f"{slug}-{L.short_hash(repo, revision, length=10)}"


def cached_checkpoint(spec: DeploymentSpec, checkpoint: Checkpoint) -> tuple[str, str] | None:
    """(repo, revision) the operator caches for the deployment, or None when it manages no weights: cache
    mode none (the engine fetches the checkpoint itself) or a ``source.path`` (already on a volume)."""
    model = spec.model
    if model.cache.mode == "none" or (model.source is not None and model.source.path is not None):
        return None
    repo = model.source.hugging_face_id if model.source and model.source.hugging_face_id else checkpoint.hf_id
    return repo, model.revision or "main"


def cached_model_path(spec: DeploymentSpec, checkpoint: Checkpoint) -> str | None:
    """The checkpoint directory as engine containers see it, when the operator caches it (else None)."""
    cached = cached_checkpoint(spec, checkpoint)
    return None if cached is None else f"{CACHE_MOUNT_PATH}/{WEIGHTS_DIR}/{cache_key(*cached)}"
