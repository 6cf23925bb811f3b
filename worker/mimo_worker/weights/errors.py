"""Why a download or a verify failed, and the exit code each reason leaves for the operator.

The operator cannot read a pod's log, but it sees a container's exit code in the pod status everywhere
(and the termination message where the kubelet writes one), so every reason has its own code. The
operator's copy of this table is ``mimo_operator.weights.EXIT_REASONS``; a test keeps the two equal.
Codes 3–5 and 7 are permanent until a person acts (a bigger volume, a fixed checkpoint, a token): the download
Job fails at once on them instead of retrying.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "EXIT_REASONS",
    "InvalidCheckpoint",
    "NotEnoughSpace",
    "Unauthorized",
    "UnsupportedPrecision",
    "VerificationFailed",
    "WeightsError",
]


class WeightsError(Exception):
    """Base of the reasons a download or verify fails; ``exit_code`` is what the process exits with."""

    exit_code = 1
    reason = "DownloadFailed"


class NotEnoughSpace(WeightsError):
    """The volume cannot hold the checkpoint; the message carries the numbers."""

    exit_code = 3
    reason = "NotEnoughSpace"

    def __init__(self, needed: int, free: int, reserve: int, where: Path) -> None:
        super().__init__(
            f"not enough space on the volume at {where}: the checkpoint needs {_gb(needed)} more "
            f"(plus {_gb(reserve)} kept free), the volume has {_gb(free)} free; "
            f"give the cache a volume with at least {_gb(needed + reserve)} free")
        self.needed = needed
        self.free = free


def _gb(n: int) -> str:
    return f"{n / 1e9:,.1f} GB ({n:,} bytes)"


class InvalidCheckpoint(WeightsError):
    """The repo at this revision is not a checkpoint SGLang can load (no shards, an index naming absent shards)."""

    exit_code = 4
    reason = "InvalidCheckpoint"


class Unauthorized(WeightsError):
    """The hub refused the token (or its absence): a gated or private repo, or a wrong Secret."""

    exit_code = 5
    reason = "Unauthorized"


class VerificationFailed(WeightsError):
    """Files on the volume do not match what the hub listed (missing, truncated, wrong hash)."""

    exit_code = 6
    reason = "VerificationFailed"


class UnsupportedPrecision(WeightsError):
    """The checkpoint's weights are not in the precision the plan assumed (an AWQ, GPTQ or GGUF-only copy,
    or BF16 where the plan sized FP8): loading it would need other memory than planned, or cannot work."""

    exit_code = 7
    reason = "UnsupportedPrecision"


EXIT_REASONS: dict[int, str] = {
    cls.exit_code: cls.reason
    for cls in (WeightsError, NotEnoughSpace, InvalidCheckpoint, Unauthorized, VerificationFailed,
                UnsupportedPrecision)
}
