"""`aipo plan --address` against the live three-node cluster: every stage's pair of 1.5-1.7 CPU
members fits, one per worker node, never on the 1-CPU head."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.multinode import REPO

pytestmark = pytest.mark.cluster


def test_aipo_plan_on_the_cluster_places_each_stage_on_the_two_worker_nodes(healthy_cluster):
    aipo = Path(sys.executable).parent / "aipo"
    result = subprocess.run([str(aipo), "plan", "tests/cluster/three_nodes.yaml", "--address",
                             healthy_cluster.address, "model.path=unused"],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    nodes = re.findall(r"^  \[(\d+)\] (.*)$", result.stdout, re.M)
    head = [i for i, resources in nodes if "head" in resources]
    assert len(nodes) == 3 and len(head) == 1
    hosts = re.findall(r"^  fits .*; one fits on (.*)$", result.stdout, re.M)
    assert len(hosts) == 4  # generations, rankings, ref_logps, train
    for line in hosts:
        assert len(line.split(", ")) == 2 and f"[{head[0]}]" not in line, result.stdout
