"""Starting and stopping a pod's real container commands, bound to the pod IP.

* **Entrypoint.** A container runs ``command`` + ``args`` (``$(VAR)`` expanded as Kubernetes
  does, container paths rewritten onto the host), the executable looked up on the image
  PATH (``images``). Each process starts in its own session with a fresh environment (no
  host variables leak in), in a per-pod directory (or its ``workingDir``).
* **Network.** Processes share this machine's network; they bind the pod IP because the
  rendered container passes ``--host`` from ``POD_IP`` (downward API), which kwok hands out
  from 127.1.0.0/16. Nothing isolates ports otherwise.
* **Restarts.** A failed container waits in ``CrashLoopBackOff`` (10 s doubling to 5 min,
  reset after 10 min of running, as the kubelet does) before it starts again.
* **Stop.** Processes get SIGTERM (process group), then SIGKILL once the pod's grace period
  is over; they also get SIGTERM if the runner itself dies (``PR_SET_PDEATHSIG``, through
  ``modeldeploy.serve.parent_death``).
* **Output.** Each container's output goes to ``<workdir>/logs/pods/NS_POD_CONTAINER.log``;
  its termination message is read from its ``terminationMessagePath`` file (or the log's
  tail, for ``FallbackToLogsOnError``). Exit codes are also logged.

``securityContext``, resource limits, ``/dev/shm`` sizes and lifecycle hooks are not
enforced.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from e2e.podrunner.environment import PodConfigError, expand
from e2e.podrunner.volumes import Mounts, rewrite_path
from modeldeploy.serve.parent_death import die_with_parent
from modeldeploy.serve.supervisor import exit_status

log = logging.getLogger("e2e.podrunner")

BACKOFF_START_S = 10.0
BACKOFF_MAX_S = 300.0
BACKOFF_RESET_S = 600.0  # a container that ran this long restarts without back-off
TERMINATION_MESSAGE_BYTES = 4096
FALLBACK_LOG_LINES = 80


def now() -> str:
    """The current time as the API's RFC 3339 timestamp (seconds, UTC)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Container:
    """One container's process and the status the runner reports for it."""

    spec: dict[str, Any]
    init: bool
    runnable: str | None = None  # why not, when the image is not one of ours
    process: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = None
    started_at: float = 0.0
    started_stamp: str = ""
    exits: list[int] = field(default_factory=list)
    restarts: int = 0
    backoff: float = 0.0
    next_start: float = 0.0
    ready: bool = False
    probe_due: float = 0.0
    probe_failures: int = 0
    state: dict[str, Any] = field(
        default_factory=lambda: {"waiting": {"reason": "PodInitializing"}}
    )
    last_state: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The container's name."""
        return str(self.spec["name"])

    @property
    def running(self) -> bool:
        """True while the container's process has not exited."""
        return self.process is not None and self.process.poll() is None


class PodProcesses:
    """The processes of one pod's containers: start, reap, back off, terminate."""

    def __init__(self, namespace: str, pod_name: str, pod_dir: Path, logs: Path) -> None:
        self.namespace = namespace
        self.pod_name = pod_name
        self.dir = pod_dir
        self.logs = logs
        self.lock = threading.Lock()  # guards each Container's process and exits

    def termination_file(self, container: Container) -> Path:
        """The host file that stands for the container's ``terminationMessagePath``."""
        return self.dir / "termination" / container.name

    def log_path(self, container: Container) -> Path:
        """The container's output log."""
        return self.logs / f"{self.namespace}_{self.pod_name}_{container.name}.log"

    def start(self, container: Container, env: Mapping[str, str], mounts: Mounts) -> None:
        """Start one container's process with ``env`` (host paths already) and ``mounts``."""
        spec = container.spec
        argv = [
            rewrite_path(expand(str(a), env), mounts)
            for a in [*(spec.get("command") or []), *(spec.get("args") or [])]
        ]
        if not spec.get("command"):
            raise PodConfigError(f"container {container.name}: no command (no image entrypoint)")
        executable = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=env["PATH"])
        if executable is None:
            raise PodConfigError(
                f"container {container.name}: {argv[0]} not found on {env['PATH']}"
            )
        termination = self.termination_file(container)
        termination.parent.mkdir(parents=True, exist_ok=True)
        termination.write_bytes(b"")
        log_file = self.log_path(container).open("ab")
        log_file.write(f"[podrunner {now()}] start: {' '.join(argv)}\n".encode())
        log_file.flush()
        working = spec.get("workingDir")
        cwd = Path(rewrite_path(working, mounts)) if working else self.dir
        cwd.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(
            [executable, *argv[1:]],
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # Only the prctl call, resolved before the fork (see parent_death). The pod's
            # worker thread forks it and lives as long as the pod.
            preexec_fn=die_with_parent(signal.SIGTERM),  # noqa: PLW1509
        )
        with self.lock:
            container.process, container.log_file = process, log_file
        container.started_at, container.started_stamp = time.monotonic(), now()
        container.state = {"running": {"startedAt": container.started_stamp}}
        container.probe_due, container.probe_failures = 0.0, 0
        log.info("pod %s/%s: %s started (pid %d): %s", self.namespace, self.pod_name,
                 container.name, process.pid, " ".join(argv))  # fmt: skip

    def reap(self, container: Container) -> int | None:
        """The exit status if the container's process has exited (recorded), else None."""
        process = container.process
        if process is None or process.poll() is None:
            return None
        code = process.returncode
        status = exit_status(code)
        with self.lock:
            container.exits.append(status)
            container.process = None
        if container.log_file is not None:
            container.log_file.write(f"[podrunner {now()}] exit {status}\n".encode())
            container.log_file.close()
            container.log_file = None
        terminated = {
            "exitCode": status,
            "reason": "Completed" if status == 0 else "Error",
            "startedAt": container.started_stamp,
            "finishedAt": now(),
        }
        if code < 0:
            terminated["signal"] = -code
        message = self._termination_message(container, status)
        if message:
            terminated["message"] = message
        container.state = {"terminated": terminated}
        container.ready = False
        log.log(logging.INFO if status == 0 else logging.WARNING,
                "pod %s/%s: %s exited with %d%s", self.namespace, self.pod_name, container.name,
                status, f": {message.strip()[:500]}" if message else "")  # fmt: skip
        return status

    def _termination_message(self, container: Container, status: int) -> str:
        try:
            message = self.termination_file(container).read_bytes()[:TERMINATION_MESSAGE_BYTES]
        except OSError:
            message = b""
        policy = container.spec.get("terminationMessagePolicy")
        if not message and status != 0 and policy == "FallbackToLogsOnError":
            lines = self.log_path(container).read_bytes().splitlines()[-FALLBACK_LOG_LINES:]
            message = b"\n".join(lines)[-2048:]
        return message.decode(errors="replace")

    def back_off(self, container: Container) -> None:
        """After a failed run: CrashLoopBackOff until ``next_start``."""
        ran = time.monotonic() - container.started_at
        if ran >= BACKOFF_RESET_S:
            container.backoff = 0.0
        container.backoff = (
            BACKOFF_START_S if not container.backoff else min(BACKOFF_MAX_S, container.backoff * 2)
        )
        container.restarts += 1
        container.next_start = time.monotonic() + container.backoff
        container.last_state = container.state
        container.state = {
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off {container.backoff:.0f}s restarting failed container="
                f"{container.name} pod={self.pod_name}",
            }
        }

    def terminate(self, containers: Sequence[Container], grace: float) -> None:
        """SIGTERM every running process group; SIGKILL what is left after ``grace``."""
        running = [c for c in containers if c.running]
        for container in running:
            assert container.process is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(container.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for container in running:
            assert container.process is not None
            try:
                container.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("pod %s/%s: %s outlived the %gs grace period; SIGKILL",
                            self.namespace, self.pod_name, container.name, grace)  # fmt: skip
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(container.process.pid, signal.SIGKILL)
                container.process.wait()
        for container in running:
            pgid = container.process.pid if container.process is not None else None
            self.reap(container)
            if pgid is not None:
                # Whatever else is left in the process group (a child that ignored SIGTERM).
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields_ = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields_[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
