"""Inside a local pod's private mount namespace: bind-mount its volumes, then exec its command.

Started by the pod runner as ``unshare --mount --propagation private -- python -m
mimo_operator.localcluster.podexec LAUNCH.json``; the mounts vanish with the namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def main(launch_file: str) -> None:
    with open(launch_file) as f:
        launch = json.load(f)
    for source, target, read_only in launch["mounts"]:
        subprocess.run(["mount", "--bind", source, target], check=True)
        if read_only:
            subprocess.run(["mount", "-o", "remount,bind,ro", target], check=True)
    os.chdir(launch["cwd"])
    argv = launch["argv"]
    try:
        os.execvpe(argv[0], argv, launch["env"])  # noqa: S606 - the pod's argv, never a shell
    except OSError as e:
        print(f"localcluster: cannot run {argv[0]!r}: {e}", file=sys.stderr, flush=True)
        sys.exit(127)


if __name__ == "__main__":
    main(sys.argv[1])
