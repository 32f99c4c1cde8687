"""llama.cpp: ``llama-server`` flags and environment from a placement, and its command line.

``engine_args`` is what the operator renders into the container's args; ``launch_argv`` is
what the launcher runs once the model file is known. A GGUF without a chat template gets
one from ``templates/`` by architecture (``chat_template_for``), unless the spec's args or
environment name one: llama-server would otherwise fall back to ChatML, which a model not
trained on it answers badly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from importlib.resources import files
from pathlib import Path

from modeldeploy.config import OperatorConfig
from modeldeploy.hardware import Placement
from modeldeploy.runtimes import has_flag

BINARY = "llama-server"
# Prometheus gauges (--metrics) that count requests in a slot or waiting for one.
BUSY_GAUGES = ("llamacpp:requests_processing", "llamacpp:requests_deferred")
MODEL_FLAGS = ("-m", "--model")
HOST_FLAGS = ("--host",)
THREAD_FLAGS = ("-t", "--threads")
TEMPLATE_FLAGS = ("--chat-template", "--chat-template-file")
TEMPLATE_ENV = ("LLAMA_ARG_CHAT_TEMPLATE", "LLAMA_ARG_CHAT_TEMPLATE_FILE")
# Architectures (GGUF general.architecture) whose chat format we ship a template for.
_TEMPLATES = {
    "gemma": "gemma.jinja",
    "gemma2": "gemma.jinja",
    "gemma3": "gemma.jinja",
    "gemma3n": "gemma.jinja",
}
_SPLIT_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


def engine_args(
    placement: Placement, served_name: str, user_args: list[str], config: OperatorConfig
) -> list[str]:
    """Flags for ``llama-server -m <model>``; the user's args come last and win."""
    # llama-server splits --ctx-size evenly across its --parallel slots.
    total_context = placement.context_length * placement.parallel
    # Only GPU placements name GPU layers: a CPU build warns about the flag at every start.
    offload = ["--n-gpu-layers", str(placement.gpu_layers)] if placement.gpu_layers else []
    return [
        "--port",
        str(config.port),
        "--alias",
        served_name,
        "--ctx-size",
        str(total_context),
        "--parallel",
        str(placement.parallel),
        "--threads",
        str(placement.threads or 1),
        *offload,
        "--metrics",
        *user_args,
    ]


def engine_env() -> list[dict[str, str]]:
    """llama.cpp needs nothing beyond the shared variables."""
    return []


def template_path(name: str) -> Path:
    """A chat template shipped in this package."""
    return Path(str(files("modeldeploy.runtimes").joinpath("templates", name)))


def chat_template_for(
    architecture: str | None,
    model_has_template: bool,
    args: Sequence[str],
    env: Mapping[str, str],
) -> Path | None:
    """The template file to add, or None: the model has one, the spec names one, or unknown."""
    if model_has_template or has_flag(args, *TEMPLATE_FLAGS):
        return None
    if any(env.get(name) for name in TEMPLATE_ENV):
        return None
    name = _TEMPLATES.get((architecture or "").lower())
    return template_path(name) if name else None


def first_shard(names: Sequence[str]) -> str:
    """The file to pass to ``-m``: the only GGUF, or shard 1 of a split set (projectors aside)."""
    ggufs = sorted(n for n in names if n.lower().endswith(".gguf") and "mmproj" not in n.lower())
    if not ggufs:
        raise ValueError("no .gguf file among " + (", ".join(sorted(names)) or "no files"))
    firsts = [n for n in ggufs if (m := _SPLIT_SHARD.search(n)) and int(m.group(1)) == 1]
    if len(firsts) == 1:
        return firsts[0]
    singles = [n for n in ggufs if not _SPLIT_SHARD.search(n)]
    if len(singles) == 1 and not firsts:
        return singles[0]
    raise ValueError("more than one model among " + ", ".join(ggufs) + "; select one file")


def launch_argv(
    binary: str,
    model: str,
    args: Sequence[str],
    *,
    host: str,
    threads: int | None,
    chat_template: Path | None = None,
) -> list[str]:
    """``llama-server -m MODEL [--host] [--threads] [--jinja --chat-template-file] ARGS``.

    What the rendered args (or the user's, which come last) already set is not added:
    llama-server takes the last occurrence of a flag, so the user's always win anyway.
    """
    argv = [binary]
    if not has_flag(args, *MODEL_FLAGS):
        argv += ["-m", model]
    if not has_flag(args, *HOST_FLAGS):
        argv += ["--host", host]
    if threads is not None and not has_flag(args, *THREAD_FLAGS):
        argv += ["--threads", str(threads)]
    if chat_template is not None:
        argv += ["--jinja", "--chat-template-file", str(chat_template)]
    return argv + list(args)
