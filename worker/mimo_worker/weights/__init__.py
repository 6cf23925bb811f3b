"""Model weights for the engine: download a checkpoint from a Hugging Face hub into a cache directory,
verify it, report progress, and wait for it.

Runs in the operator's download Job (shared-volume cache) and prefetch pods (node-local cache) as
``python -m mimo_worker.weights download|verify|clean``; ``docs/weights.md`` describes the whole design.
"""

from mimo_worker.weights.download import DownloadOptions, DownloadResult, download, read_complete, token_from_env
from mimo_worker.weights.errors import (
    EXIT_REASONS,
    InvalidCheckpoint,
    NotEnoughSpace,
    Unauthorized,
    VerificationFailed,
    WeightsError,
)
from mimo_worker.weights.layout import COMPLETE_FILE, MANIFEST_FILE, STATUS_FILE, FileEntry, Manifest, engine_needs
from mimo_worker.weights.progress import Progress, StatusServer
from mimo_worker.weights.verify import Verification, verify_dir
from mimo_worker.weights.wait import wait_until_complete

__all__ = [
    "COMPLETE_FILE",
    "EXIT_REASONS",
    "MANIFEST_FILE",
    "STATUS_FILE",
    "DownloadOptions",
    "DownloadResult",
    "FileEntry",
    "InvalidCheckpoint",
    "Manifest",
    "NotEnoughSpace",
    "Progress",
    "StatusServer",
    "Unauthorized",
    "Verification",
    "VerificationFailed",
    "WeightsError",
    "download",
    "engine_needs",
    "read_complete",
    "token_from_env",
    "verify_dir",
    "wait_until_complete",
]
