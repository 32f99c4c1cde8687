"""A test-side pod runner: the kubelet's part, on this machine, for our pods on kwok nodes.

kwok simulates nodes and gives pods IPs in 127.1.0.0/16, but runs nothing. ``PodRunner``
watches pods bound to simulated nodes (label ``type=kwok``) whose image is one of ours
(the repositories of ``OperatorConfig``: ``ghcr.io/modeldeploy/*``) and runs them here as
local processes: the init containers in order (the operator renders the fetch init
container), each to completion, then the containers, each bound to the pod IP. Nothing in
the operator knows it exists; it is a stand-in for a kubelet plus a container runtime, and
behaves like one where that is cheap. Its parts:

* ``images``: which images are ours; the "image PATH" a container's command is found on.
* ``environment``: a container's environment (``value``, ``$(VAR)``, the downward API,
  ``resourceFieldRef``, Secret and ConfigMap references, ``envFrom``).
* ``volumes``: how the pod's volumes map to host directories, and container paths onto them.
* ``processes``: starting, reaping, backing off and stopping the containers' processes.
* ``status``: the pod's status written back to the API server; readiness probes.
* ``pod``: one pod's life (a thread per pod); ``runner``: the watch that starts them.
* ``background``: ``python -m e2e.podrunner``, detached, for ``make demo``.

    python -m e2e.podrunner --workdir .cluster --namespace demo --mirror FILE
"""

from __future__ import annotations

from e2e.podrunner.background import main, start_background, stop_background
from e2e.podrunner.environment import PodConfigError, expand
from e2e.podrunner.images import image_path, image_repository, llama_server_dir, our_repositories
from e2e.podrunner.pod import PodRun, PodWorker
from e2e.podrunner.processes import descendants, pid_alive
from e2e.podrunner.runner import PodRunner
from e2e.podrunner.volumes import rewrite_path

__all__ = [
    "PodConfigError",
    "PodRun",
    "PodRunner",
    "PodWorker",
    "descendants",
    "expand",
    "image_path",
    "image_repository",
    "llama_server_dir",
    "main",
    "our_repositories",
    "pid_alive",
    "rewrite_path",
    "start_background",
    "stop_background",
]
