"""Fixtures for e2e tests: one cluster per session, one namespace per test."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from e2e.cluster.keda import SCALED_OBJECT_CRD_NAME, keda_scaled_object_crd
from e2e.cluster.local import POD_CIDR, REPO, LocalCluster
from e2e.cluster.tools import control_plane_bin_dir
from e2e.harness import ClusterHandle, existing_cluster, install_crds, wait_until
from e2e.podrunner import llama_server_dir
from kubernetes import client

KEDA_DEADLINE_SECONDS = 60


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


class ClusterPolicies:
    """The cluster-scoped ModelPolicies one test creates with kubectl, deleted when it ends.

    A policy outlives its test's namespace, and one left behind would judge the
    ModelDeployments of every later test: each name gets a random suffix, and the fixture
    deletes every policy it created.
    """

    def __init__(self, cluster: ClusterHandle, workdir: Path) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.names: list[str] = []

    def name(self, base: str) -> str:
        """A fresh policy name starting with ``base``."""
        return f"{base}-{secrets.token_hex(3)}"

    def create(self, obj: dict[str, object]) -> subprocess.CompletedProcess[str]:
        """``kubectl create`` one ModelPolicy from a file (the result, not checked)."""
        metadata = obj["metadata"]
        assert isinstance(metadata, dict)
        name = str(metadata["name"])
        path = self.workdir / f"policy-{name}.yaml"
        path.write_text(yaml.safe_dump(obj))
        self.names.append(name)
        return self.cluster.kubectl("create", "-f", str(path), check=False)

    def apply(self, obj: dict[str, object]) -> None:
        """``kubectl apply`` one ModelPolicy (create it, or change it); it must succeed."""
        metadata = obj["metadata"]
        assert isinstance(metadata, dict)
        name = str(metadata["name"])
        path = self.workdir / f"policy-{name}.yaml"
        path.write_text(yaml.safe_dump(obj))
        if name not in self.names:
            self.names.append(name)
        applied = self.cluster.kubectl("apply", "-f", str(path), check=False)
        assert applied.returncode == 0, applied.stderr

    def delete_all(self) -> None:
        """Delete every policy this test created (those the API server refused are absent)."""
        if self.names:
            self.cluster.kubectl(
                "delete", "modelpolicies", *self.names, "--ignore-not-found", check=False
            )


@pytest.fixture
def model_policies(crd_cluster: ClusterHandle, tmp_path: Path) -> Iterator[ClusterPolicies]:
    """Create ModelPolicies in the CRD cluster; every one is deleted after the test."""
    policies = ClusterPolicies(crd_cluster, tmp_path)
    try:
        yield policies
    finally:
        policies.delete_all()


@pytest.fixture(scope="module")
def keda_cluster(crd_cluster: ClusterHandle) -> Iterator[ClusterHandle]:
    """The cluster with KEDA's ScaledObject CRD Established; the CRD is deleted afterwards."""
    crd = keda_scaled_object_crd()
    applied = crd_cluster.kubectl("apply", "--server-side", "-f", str(crd), check=False)
    assert applied.returncode == 0, applied.stderr
    extensions = client.ApiextensionsV1Api(crd_cluster.api_client())

    def established() -> bool:
        found = extensions.read_custom_resource_definition(SCALED_OBJECT_CRD_NAME)
        conditions = {c.type: c.status for c in (found.status.conditions or [])}
        return conditions.get("Established") == "True"

    wait_until(established, KEDA_DEADLINE_SECONDS, f"CRD {SCALED_OBJECT_CRD_NAME} Established")
    wait_until(
        lambda: crd_cluster.kubectl("get", "scaledobjects", "-A", check=False).returncode == 0,
        KEDA_DEADLINE_SECONDS,
        "scaledobjects in discovery",
    )
    try:
        yield crd_cluster
    finally:
        crd_cluster.kubectl(
            "delete", "crd", SCALED_OBJECT_CRD_NAME, "--wait=true",
            f"--timeout={KEDA_DEADLINE_SECONDS}s", check=False,
        )  # fmt: skip

        def gone() -> bool:
            found = crd_cluster.kubectl("get", "crd", SCALED_OBJECT_CRD_NAME, check=False)
            return found.returncode != 0 and "NotFound" in found.stderr

        wait_until(gone, KEDA_DEADLINE_SECONDS, f"CRD {SCALED_OBJECT_CRD_NAME} deleted")


@pytest.fixture
def llama_server() -> Path:
    """The pinned llama-server's directory; the test skips when it is not built."""
    found = llama_server_dir()
    if found is None:
        pytest.skip("llama-server is not built: run `make llama-server` (about 6 minutes)")
    return found


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e as e2e, so `-m "not e2e"` selects unit tests."""
    e2e_dir = Path(__file__).parent
    for item in items:
        if e2e_dir in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)
