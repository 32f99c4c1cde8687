"""Run the Argo CD health check of ModelDeployments (examples/argocd/health.lua) here.

Argo CD runs resource health checks in a Lua 5.1 interpreter (gopher-lua) with the live
object as the global ``obj``, and reads ``status`` and ``message`` from the table the
script returns. ``health`` does the same with lupa's bundled Lua 5.1, so the script is
tested against objects recorded from real reconciles (tests/fixtures/argocd/) and against
live objects, without an Argo CD installation.

    kubectl get mdep -A -o json | python -m e2e.argocd -
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from e2e.cluster.local import REPO

HEALTH_LUA = REPO / "examples" / "argocd" / "health.lua"
STATUSES = ("Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown")


def _runtime() -> Any:
    from lupa import lua51  # Lua 5.1: the language version of Argo CD's gopher-lua

    runtime = lua51.LuaRuntime(register_eval=False, unpack_returned_tuples=True)
    interpreter = runtime.execute("return _VERSION")
    if interpreter != "Lua 5.1":
        raise RuntimeError(f"expected a Lua 5.1 interpreter, got {interpreter}")
    # Argo CD's sandbox has no file, OS or module access: a script using them fails there.
    for unsafe in ("io", "os", "require", "dofile", "loadfile", "package", "debug"):
        runtime.globals()[unsafe] = None
    return runtime


def _to_lua(runtime: Any, value: Any) -> Any:
    if isinstance(value, Mapping):
        table = runtime.table()
        for key, item in value.items():
            if item is not None:
                table[key] = _to_lua(runtime, item)
        return table
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        table = runtime.table()
        for index, item in enumerate(value, start=1):
            table[index] = _to_lua(runtime, item)
        return table
    return value


def health(obj: Mapping[str, Any], script: Path = HEALTH_LUA) -> dict[str, str]:
    """The health Argo CD would show for ``obj``: {"status": ..., "message": ...}."""
    runtime = _runtime()
    runtime.globals().obj = _to_lua(runtime, obj)
    result = runtime.execute(script.read_text())
    if result is None:
        raise RuntimeError(f"{script.name} returned nothing")
    found = {key: result[key] for key in ("status", "message") if result[key] is not None}
    if found.get("status") not in STATUSES:
        raise RuntimeError(f"{script.name} returned an unknown health status: {found}")
    return {key: str(value) for key, value in found.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """Print the health of each ModelDeployment in a JSON file (``-``: stdin)."""
    parser = argparse.ArgumentParser(prog="python -m e2e.argocd", description=main.__doc__)
    parser.add_argument("file", help="`kubectl get mdep -o json` output (an object or a List)")
    args = parser.parse_args(argv)
    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    document = json.loads(text)
    items = document.get("items", []) if document.get("kind", "").endswith("List") else [document]
    for item in items:
        meta = item.get("metadata", {})
        result = health(item)
        name = f"{meta.get('namespace', '')}/{meta.get('name', '')}".lstrip("/")
        print(f"{name}\t{result['status']}\t{result.get('message', '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
