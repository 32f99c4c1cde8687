"""The user cache directory of modeldeploy, outside any repository or cluster.

One rule for every user of it (local ``modeldeploy serve``'s model cache, the launcher's
look-up of a locally built llama-server, the e2e and bench tooling, and the shell scripts
``e2e/cluster/go-build-lib.sh`` (``cache_bin``, for the Go tool builds) and
``runtime-images/llamacpp/build-llama-server.sh``, which spell it
``${MODELDEPLOY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modeldeploy}``):
``$MODELDEPLOY_CACHE`` if set, else ``$XDG_CACHE_HOME/modeldeploy``, else
``~/.cache/modeldeploy``. Empty values count as unset, as in the shell.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

CACHE_ENV = "MODELDEPLOY_CACHE"


def cache_root(env: Mapping[str, str] | None = None) -> Path:
    """The modeldeploy cache directory for ``env`` (default: this process's environment)."""
    env = os.environ if env is None else env
    if env.get(CACHE_ENV):
        return Path(env[CACHE_ENV])
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".cache")
    return Path(base) / "modeldeploy"
