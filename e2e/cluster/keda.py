"""KEDA's ScaledObject CRD, pinned by version and sha256, for tests against a real API server.

KEDA's Go module (``github.com/kedacore/keda/v2``) carries its generated CRD manifests in
``config/crd/bases/``. ``go mod download`` fetches the module through the Go module proxy
(``GOPROXY``, checked against the checksum database like every other pinned Go tool here)
into the module cache; the CRD is copied from there into a cache directory outside the
repository, keyed by the version, and checked against the pinned sha256 on every use.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from modeldeploy.paths import cache_root

KEDA_MODULE = "github.com/kedacore/keda/v2"
KEDA_VERSION = "v2.21.0"
SCALED_OBJECT_CRD = "config/crd/bases/keda.sh_scaledobjects.yaml"
SCALED_OBJECT_CRD_SHA256 = "af35555862a83933b074af14ad439c4b4ceabaf4daa3e9338e9b23e36d308d80"
SCALED_OBJECT_CRD_NAME = "scaledobjects.keda.sh"
DOWNLOAD_TIMEOUT_SECONDS = 600


def keda_scaled_object_crd() -> Path:
    """Fetch (or reuse) KEDA's ScaledObject CRD manifest; return its path."""
    target = cache_root() / f"keda-{KEDA_VERSION}" / Path(SCALED_OBJECT_CRD).name
    if target.exists():
        _check_digest(target.read_bytes(), target)
        return target
    print(f"[tools] fetching {KEDA_MODULE}@{KEDA_VERSION} for its CRDs", file=sys.stderr)
    data = (_module_dir() / SCALED_OBJECT_CRD).read_bytes()
    _check_digest(data, Path(SCALED_OBJECT_CRD))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target


def _module_dir() -> Path:
    """The module cache directory of the pinned KEDA module, downloaded if need be."""
    go = shutil.which("go")
    if go is None:
        raise RuntimeError("`go` is not on PATH: it fetches KEDA's CRDs from the module proxy")
    # Outside any module (an empty directory, no workspace), so that neither the caller's
    # go.mod nor GOFLAGS such as -mod=vendor decide what is downloaded.
    env = {**os.environ, "GO111MODULE": "on", "GOWORK": "off", "GOFLAGS": "-mod=mod"}
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [go, "mod", "download", "-json", f"{KEDA_MODULE}@{KEDA_VERSION}"],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=DOWNLOAD_TIMEOUT_SECONDS,
            check=False,
        )
    try:
        info = json.loads(result.stdout)
    except json.JSONDecodeError:
        info = {}
    if result.returncode != 0 or "Error" in info or "Dir" not in info:
        problem = info.get("Error") or result.stderr.strip() or f"exit code {result.returncode}"
        raise RuntimeError(f"go mod download {KEDA_MODULE}@{KEDA_VERSION}: {problem}")
    return Path(info["Dir"])


def _check_digest(data: bytes, where: Path) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != SCALED_OBJECT_CRD_SHA256:
        raise RuntimeError(
            f"{where}: sha256 {digest} does not match the pinned {SCALED_OBJECT_CRD_SHA256}"
        )
