"""The pod runner as a detached process, for ``make demo``: its command line, start, stop.

``python -m e2e.podrunner --workdir .cluster [--namespace NS] [--selector SEL] [--mirror FILE]``
runs a ``PodRunner`` (and, with ``--mirror``, a stand-in https:// mirror whose address is
given to the pods as node environment) until SIGTERM or SIGINT, and writes its pid, mirror
URLs and log directory to ``<workdir>/podrunner.json``. ``start_background`` starts it
detached and waits for that file; ``stop_background`` stops it, giving its pods their grace
period.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from e2e.cluster.local import REPO
from e2e.podrunner.processes import pid_alive
from e2e.podrunner.runner import PodRunner

log = logging.getLogger("e2e.podrunner")

STATE_FILE = "podrunner.json"
PID_FILE = "podrunner.pid"


def start_background(
    workdir: Path,
    *,
    namespace: str | None = None,
    selector: str | None = None,
    mirror: Path | None = None,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Start ``python -m e2e.podrunner`` detached; return its state once it is watching."""
    stop_background(workdir)
    state_file = workdir / STATE_FILE
    state_file.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "e2e.podrunner", "--workdir", str(workdir)]
    if namespace:
        argv += ["--namespace", namespace]
    if selector:
        argv += ["--selector", selector]
    if mirror:
        argv += ["--mirror", str(mirror)]
    log_file = (workdir / "logs" / "podrunner.log").open("ab")
    process = subprocess.Popen(
        argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    (workdir / PID_FILE).write_text(str(process.pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the pod runner exited ({process.returncode}); see {log_file.name}")
        with contextlib.suppress(FileNotFoundError, ValueError):
            state: dict[str, Any] = json.loads(state_file.read_text())
            if state.get("pid") == process.pid:
                return state
        time.sleep(0.2)
    process.terminate()
    raise TimeoutError(f"the pod runner did not start within {timeout:.0f}s")


def stop_background(workdir: Path, timeout: float = 90.0) -> None:
    """Stop a background pod runner (its pods get their grace period) and wait for it."""
    pid_file = workdir / PID_FILE
    try:
        pid = int(pid_file.read_text())
    except (FileNotFoundError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    (workdir / STATE_FILE).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """Run the pod runner (and optionally a model mirror) until SIGTERM or SIGINT."""
    from e2e import podrunner
    from e2e.mirror import ModelMirror

    parser = argparse.ArgumentParser(prog="python -m e2e.podrunner", description=podrunner.__doc__)
    parser.add_argument("--workdir", type=Path, required=True, help="the local cluster's dir")
    parser.add_argument("--namespace", help="only pods in this namespace")
    parser.add_argument("--selector", help="only pods matching this label selector")
    parser.add_argument("--mirror", type=Path, action="append", default=[],
                        help="serve this file from a stand-in https:// mirror")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for noisy in ("httpx", "httpcore", "kubernetes", "urllib3"):  # one line per probe otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    workdir: Path = args.workdir.resolve()
    mirror = ModelMirror({p.name: p for p in args.mirror}).start() if args.mirror else None
    runner = PodRunner(
        workdir / "kubeconfig",
        workdir,
        namespace=args.namespace,
        selector=args.selector,
        node_env=mirror.plain_http_env() if mirror else None,
    ).start()
    state = {
        "pid": os.getpid(),
        "mirror": {p.name: mirror.url(p.name) for p in args.mirror} if mirror else {},
        "logs": str(runner.logs),
    }
    (workdir / STATE_FILE).write_text(json.dumps(state, indent=2))
    try:
        stop.wait()
        log.info("stopping")
    finally:
        runner.stop()
        if mirror:
            mirror.stop()
    return 0
