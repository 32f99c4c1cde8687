"""Test support: `modeldeploy serve` of the local gemma example, and what the tests expect of it."""

from __future__ import annotations

from pathlib import Path

from e2e.models import claims_root
from e2e.runtime import REPO, LocalServe

EXAMPLE = REPO / "examples" / "local" / "gemma-270m.yaml"
SLOTS = 2  # the example's maxConcurrentRequests
SERVED_NAME = "gemma-3-270m"


def local_serve(tmp: Path, env: dict[str, str]) -> LocalServe:
    """`modeldeploy serve -f examples/local/gemma-270m.yaml` with a fresh cache under ``tmp``."""
    return LocalServe(
        EXAMPLE,
        cache=tmp / "cache",
        pvc_root=claims_root(),
        extra_env=env,
        log=tmp / "serve.log",
    )
