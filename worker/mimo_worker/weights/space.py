"""Free space on the volume, checked before the first byte is fetched.

The injection point for tests: :func:`free_bytes` reads ``statvfs``; the environment variable
``MIMO_WEIGHTS_FAKE_FREE_BYTES`` (an integer) replaces what it reports, so a test (or a rehearsal on a
laptop) can simulate a volume too small for the checkpoint without making one. Python callers can also
pass their own ``free_bytes`` function in :class:`mimo_worker.weights.DownloadOptions`.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["FAKE_FREE_ENV", "free_bytes"]

FAKE_FREE_ENV = "MIMO_WEIGHTS_FAKE_FREE_BYTES"


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding ``path``."""
    fake = os.environ.get(FAKE_FREE_ENV)
    if fake:
        return int(fake)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    st = os.statvfs(probe)
    return st.f_bavail * st.f_frsize
