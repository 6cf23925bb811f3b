"""Not a test of its own: the inner run that test_cluster_lifecycle interrupts with SIGINT."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from mimo_operator.localcluster.cluster import LocalCluster

MARKER = os.environ.get("MIMO_INTERRUPT_TARGET")


@pytest.mark.cluster
@pytest.mark.skipif(not MARKER, reason="only run by test_pytest_interrupted_with_sigint_stops_its_cluster")
def test_wait_to_be_interrupted(cluster: LocalCluster) -> None:
    assert MARKER
    Path(MARKER).write_text(json.dumps({"stateDir": str(cluster.state_dir)}))
    time.sleep(600)
