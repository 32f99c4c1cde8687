"""What the runner runs, and where a container's executable is looked up.

A pod is ours when one of its images belongs to a repository of ``OperatorConfig`` (the
runtime images and the operator/fetcher image, ``ghcr.io/modeldeploy/*``); other images are
not run. Our images declare no entrypoint of their own (the renderer always sets
``command``), so the "image PATH" stands in for their filesystem: the project venv's ``bin/``
(``modeldeploy`` is ``.venv/bin/modeldeploy``), the directory of the pinned ``llama-server``
build, then ``/usr/local/bin:/usr/bin:/bin``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from e2e.cluster.local import REPO
from modeldeploy.config import OperatorConfig

SYSTEM_PATH = ("/usr/local/bin", "/usr/bin", "/bin")


def image_repository(image: str) -> str:
    """``registry/name`` of an image reference, without tag or digest."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def our_repositories(operator_config: OperatorConfig | None = None) -> frozenset[str]:
    """The image repositories of the operator's config (runtimes, operator/fetcher)."""
    cfg = operator_config or OperatorConfig()
    images = [getattr(cfg, f.name) for f in fields(cfg) if f.name.endswith("_image")]
    return frozenset(image_repository(str(image)) for image in images)


def llama_server_dir() -> Path | None:
    """The directory of the pinned llama-server build, or None when it is not built."""
    from e2e.runtime import NotBuiltError, llama_server_binary

    try:
        return llama_server_binary().parent
    except NotBuiltError:
        return None


def image_path(extra: Sequence[Path] = ()) -> str:
    """PATH inside "our images": the venv's bin/, ``extra`` (llama-server), the system dirs."""
    venv_bin = Path(sys.prefix) / "bin"
    if not (venv_bin / "modeldeploy").exists():
        venv_bin = REPO / ".venv" / "bin"
    return os.pathsep.join([str(venv_bin), *map(str, extra), *SYSTEM_PATH])
