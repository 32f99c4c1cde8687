"""``python -m e2e.cluster``: start, stop and inspect the local control plane.

``up`` starts a detached supervisor process that owns the components (they die with it)
and returns once the cluster is ready; ``down`` signals the supervisor and waits until
every component has exited and released its port. ``tools`` prints the directory of the
project's kubectl and helm.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from e2e.cluster.local import REPO, LocalCluster, listening_ports
from e2e.cluster.tools import client_bin_dir, control_plane_bin_dir

DEFAULT_WORKDIR = REPO / ".cluster"
UP_TIMEOUT_S = 300.0
DOWN_TIMEOUT_S = 60.0


def _log(message: str) -> None:
    print(f"[cluster] {message}", file=sys.stderr, flush=True)


def _read_state(workdir: Path) -> dict[str, object] | None:
    try:
        state: dict[str, object] = json.loads((workdir / "state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return state


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _supervisor_pid(workdir: Path) -> int | None:
    try:
        pid = int((workdir / "supervisor.pid").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid) else None


def cmd_supervise(args: argparse.Namespace) -> int:
    """Run the cluster in the foreground until SIGTERM or SIGINT."""
    workdir: Path = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "supervisor.pid").write_text(str(os.getpid()))
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    cluster = LocalCluster(workdir, control_plane_bin_dir())
    try:
        cluster.start(progress=_log)
        _log(f"ready; kubeconfig {cluster.kubeconfig}")
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
        _log("stopping")
    finally:
        cluster.stop()
        with contextlib.suppress(FileNotFoundError):
            (workdir / "supervisor.pid").unlink()
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """Start the cluster in the background and wait until it is ready."""
    workdir: Path = args.workdir
    if _supervisor_pid(workdir) and _read_state(workdir):
        _log(f"already running; kubeconfig {workdir / 'kubeconfig'}")
        return 0
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "logs").mkdir(exist_ok=True)
    started = time.monotonic()
    log = (workdir / "logs" / "supervisor.log").open("ab")
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "e2e.cluster", "--workdir", str(workdir), "supervise"],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + UP_TIMEOUT_S
    while time.monotonic() < deadline:
        if supervisor.poll() is not None:
            tail = (workdir / "logs" / "supervisor.log").read_text(errors="replace")
            _log(f"failed to start (exit {supervisor.returncode}):\n{tail[-4000:]}")
            return 1
        state = _read_state(workdir)
        if state and state.get("supervisorPid") == supervisor.pid:
            elapsed = time.monotonic() - started
            _log(f"up in {elapsed:.1f}s; API server {state['server']}")
            _log(f"kubeconfig: {workdir / 'kubeconfig'}; logs: {workdir / 'logs'}")
            return 0
        time.sleep(0.2)
    supervisor.terminate()
    _log(f"not ready within {UP_TIMEOUT_S:.0f}s; see {workdir / 'logs'}")
    return 1


def cmd_down(args: argparse.Namespace) -> int:
    """Stop the cluster and wait until no component process or port is left."""
    workdir: Path = args.workdir
    from e2e.demo import stop_operator
    from e2e.podrunner import stop_background

    stop_background(workdir)  # the demo's pod runner: its model pods stop gracefully first
    stop_operator(workdir)
    state = _read_state(workdir) or {}
    pid = _supervisor_pid(workdir)
    if pid is None:
        _log("not running")
    else:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + DOWN_TIMEOUT_S
    pids = [int(p) for p in dict(state.get("pids") or {}).values()]  # type: ignore[call-overload]
    ports = [int(p) for p in dict(state.get("ports") or {}).values()]  # type: ignore[call-overload]
    while time.monotonic() < deadline:
        left = [p for p in ([pid] if pid else []) + pids if _alive(p)]
        busy = listening_ports(ports)
        if not left and not busy:
            _log("stopped")
            return 0
        time.sleep(0.2)
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p, signal.SIGKILL)
    _log(f"forced leftover processes down: {left}, ports still listening: {busy}")
    return 1


def cmd_tools(args: argparse.Namespace) -> int:
    """Fetch kubectl and helm if needed and print their directory."""
    print(client_bin_dir())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the operator on the running cluster and deploy every example."""
    from e2e.demo import run_demo

    return run_demo(args.workdir)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one subcommand."""
    parser = argparse.ArgumentParser(prog="python -m e2e.cluster")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func in (
        ("up", cmd_up),
        ("down", cmd_down),
        ("supervise", cmd_supervise),
        ("tools", cmd_tools),
        ("demo", cmd_demo),
    ):
        sub.add_parser(name, help=(func.__doc__ or "").strip()).set_defaults(func=func)
    args = parser.parse_args(argv)
    args.workdir = args.workdir.resolve()
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
