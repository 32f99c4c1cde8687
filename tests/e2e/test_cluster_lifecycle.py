"""A crashed cluster owner leaves no process and no listening port behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from e2e.cluster.local import REPO, listening_ports
from e2e.harness import existing_cluster, wait_until

pytestmark = pytest.mark.skipif(
    existing_cluster() is not None, reason="starts its own local control plane"
)


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_sigkilled_supervisor_takes_every_component_and_port_down(tmp_path: Path) -> None:
    workdir = tmp_path / "cluster"
    up = subprocess.run(
        [sys.executable, "-m", "e2e.cluster", "--workdir", str(workdir), "up"],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert up.returncode == 0, up.stderr
    state = json.loads((workdir / "state.json").read_text())
    pids = list(state["pids"].values())
    ports = list(state["ports"].values())
    assert set(state["pids"]) == {
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
    }
    assert all(alive(p) for p in pids)
    assert sorted(listening_ports(ports)) == sorted(ports)

    os.kill(state["supervisorPid"], signal.SIGKILL)

    wait_until(lambda: not any(alive(p) for p in pids), what="every component to exit")
    wait_until(lambda: not listening_ports(ports), what="every port to be released")
