"""Fixtures for e2e tests: one cluster per session, one namespace per test."""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e.cluster.local import POD_CIDR, REPO, LocalCluster
from e2e.cluster.tools import control_plane_bin_dir
from e2e.harness import ClusterHandle, existing_cluster, install_crds
from kubernetes import client


@pytest.fixture(scope="session")
def cluster() -> Iterator[ClusterHandle]:
    """The local control plane, started for this session (or an existing cluster)."""
    existing = existing_cluster()
    if existing is not None:
        yield existing
        return
    root = REPO / ".cluster"
    for stale in root.glob("pytest-*"):  # left by sessions that have ended
        if not Path(f"/proc/{stale.name.removeprefix('pytest-')}").exists():
            shutil.rmtree(stale, ignore_errors=True)
    # One work directory per pytest process, so concurrent sessions never share one.
    workdir = root / f"pytest-{os.getpid()}"
    local = LocalCluster(workdir, control_plane_bin_dir())
    local.start()
    try:
        yield ClusterHandle(local.kubeconfig, POD_CIDR, workdir=local.workdir)
    finally:
        local.stop()


@pytest.fixture(scope="session")
def crd_cluster(cluster: ClusterHandle) -> ClusterHandle:
    """The cluster with the CRDs applied (idempotently), Established and explained."""
    install_crds(cluster)
    return cluster


@pytest.fixture
def namespace(cluster: ClusterHandle, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards."""
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{base}-{secrets.token_hex(3)}"
    api = client.CoreV1Api(cluster.api_client())
    api.create_namespace({"metadata": {"name": name, "labels": {"modeldeploy.io/e2e": "true"}}})
    try:
        yield name
    finally:
        api.delete_namespace(name)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e as e2e, so `-m "not e2e"` selects unit tests."""
    e2e_dir = Path(__file__).parent
    for item in items:
        if e2e_dir in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)
