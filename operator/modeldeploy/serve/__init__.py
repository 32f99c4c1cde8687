"""Serving processes: the launcher a runtime container runs, and local mode.

Modules: ``model`` (find the fetched model in the cache and read what the launcher needs
from a GGUF header), ``supervisor`` (run an engine, forward signals, drain in-flight requests
before stopping it), ``launcher`` (``modeldeploy serve-runtime``: environment + rendered
args -> the engine's command line, supervised), ``machine`` (this machine as a Node object
for the planner), ``local`` (``modeldeploy serve -f``: fetch, plan here, launch),
``parent_death`` (the ``preexec_fn`` that makes a child die with the process that started
it) and ``cli`` (their argparse registration). The pure argv construction lives in
``modeldeploy.runtimes``.
"""
