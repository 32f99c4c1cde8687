"""llama.cpp: ``llama-server`` flags and environment from a placement."""

from __future__ import annotations

from modeldeploy.config import OperatorConfig
from modeldeploy.hardware import Placement


def engine_args(
    placement: Placement, served_name: str, user_args: list[str], config: OperatorConfig
) -> list[str]:
    """Flags for ``llama-server -m <model>``; the user's args come last and win."""
    # llama-server splits --ctx-size evenly across its --parallel slots.
    total_context = placement.context_length * placement.parallel
    return [
        "--host",
        "0.0.0.0",
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
        "--n-gpu-layers",
        str(placement.gpu_layers or 0),
        "--metrics",
        *user_args,
    ]


def engine_env() -> list[dict[str, str]]:
    """llama.cpp needs nothing beyond the shared variables."""
    return []
