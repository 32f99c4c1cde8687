"""Rendering of the NetworkPolicy in front of a ModelDeployment's pods.

With ``OperatorConfig.model_ingress_from`` set (the chart sets it with the gateway: the
gateway's pods and the operator's, whose native autoscaler scrapes the engines' metrics),
the server pods of a ModelDeployment accept ingress only from those peers and only on the
serving port (the container port named ``http``, which serves the OpenAI API and the
engine's metrics). Empty: no NetworkPolicy, nothing restricted.

Pure and deterministic, like the rest of render/.
"""

from __future__ import annotations

import copy
from typing import Any

# The package itself rather than names from it: render/__init__.py may import this module
# before it has defined them.
from modeldeploy import render
from modeldeploy.runtimes import PORT_NAME

COMPONENT_NETWORK_POLICY = "network-policy"


def render_network_policy(inputs: render.RenderInputs) -> dict[str, Any] | None:
    """The ModelDeployment's NetworkPolicy (named like it), or None without peers."""
    peers = inputs.config.model_ingress_from
    if not peers:
        return None
    md = inputs.md
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": render.child_metadata(
            md, md.name, COMPONENT_NETWORK_POLICY, str(inputs.placement.engine)
        ),
        "spec": {
            "podSelector": {"matchLabels": render.selector_labels(md.name)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [copy.deepcopy(dict(peer)) for peer in peers],
                    "ports": [{"port": PORT_NAME, "protocol": "TCP"}],
                }
            ],
        },
    }
