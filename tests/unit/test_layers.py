"""The operator and mimoctl start without the local cluster's extra (pyproject's `cluster`)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import REPO

# Imports as a plain `pip install mimo-operator` has them: the local cluster's packages are absent.
_WITHOUT_CLUSTER_EXTRA = textwrap.dedent("""
    import importlib.abc, sys
    class Absent(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.partition(".")[0] in {"lightkube", "cryptography", "httpx"}:
                raise ModuleNotFoundError(f"No module named {name!r}")
            return None
    sys.meta_path.insert(0, Absent())
""")


def test_the_operator_and_mimoctl_plan_need_no_local_cluster_packages() -> None:
    code = _WITHOUT_CLUSTER_EXTRA + textwrap.dedent("""
        import mimo_operator.__main__, mimo_operator.handlers, mimo_operator.reconciler
        from mimo_operator.cli import main
        sys.exit(main(["plan", "-f", "examples/mimo-v25-pro-h200-autoscaling.yaml", "-o", "json"]))
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert '"nodesPerReplica"' in result.stdout
