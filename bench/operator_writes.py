"""API writes the operator makes while a deployment waits for its weights.

A 2-replica MiMo-V2.5 deployment with a shared-volume cache whose download takes 10 minutes, reconciled
by the real Reconciler against the in-memory API (tests/helpers/fakekube.py) on a fake clock, as the
operator's loop would (at each requeue; its own status writes do not wake it). Prints the writes up to the
first status, and after it, with and without the download pod reporting progress.

    .venv/bin/python bench/operator_writes.py [--minutes 10] [--replicas 2]
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers.operator_world import writes_during_weights_download


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--replicas", type=int, default=2)
    args = parser.parse_args()
    print(f"weights download of {args.minutes:g} min, {args.replicas} replicas")
    print(f"{'download pod':<24} {'reconciles':>10} {'writes to 1st status':>21} {'writes after':>13}  what")
    for progress in (True, False):
        f = writes_during_weights_download(minutes=args.minutes, replicas=args.replicas, progress=progress)
        kinds = collections.Counter(f"{verb} {kind}" for verb, kind, _ in f.after)
        what = ", ".join(f"{n}× {k}" for k, n in sorted(kinds.items())) or "none"
        label = "reports progress" if progress else "reports no progress"
        print(f"{label:<24} {f.reconciles:>10} {f.first_status:>21} {len(f.after):>13}  {what}")


if __name__ == "__main__":
    main()
