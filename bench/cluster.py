"""The local control plane a bench runs on: started in a temporary directory, CRDs
installed, stopped at the end (what ``bench.autoscale`` and ``bench.scale_from_zero``
share)."""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from e2e.cluster.local import LocalCluster
from e2e.cluster.tools import control_plane_bin_dir
from e2e.harness import ClusterHandle, install_crds


@contextlib.contextmanager
def bench_cluster(name: str) -> Iterator[ClusterHandle]:
    """A fresh local cluster with the CRDs, for the bench ``name``."""
    with tempfile.TemporaryDirectory(prefix=f"modeldeploy-bench-{name}-") as tmp:
        local = LocalCluster(Path(tmp) / "cluster", control_plane_bin_dir())
        print(f"[bench {name}] starting the local cluster", file=sys.stderr, flush=True)
        local.start()
        try:
            cluster = ClusterHandle(local.kubeconfig, None, workdir=local.workdir)
            install_crds(cluster)
            yield cluster
        finally:
            local.stop()
