"""The validating admission webhook: ModelPolicy enforcement before a ModelDeployment is
stored (Kopf's admission support, served over TLS).

Every ModelPolicy that selects the object's namespace is evaluated (``compliance.evaluate``,
before resolution: license and digest rules that need the resolved artifact are pending
here and judged by the operator after it resolves). The strictest enforcement of the
violated policies decides: ``enforce`` rejects the request with every violation listed;
``warn`` admits it with one admission warning per violation (``kubectl apply`` prints
them); ``audit`` admits it and logs. The webhook needs no leader: every operator replica
serves it from its own indexes of ModelPolicies and namespaces (``handlers``). This module
is imported (and so registered with Kopf) only when ``admission.enabled``: Kopf refuses to
start with admission handlers and no webhook server.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from modeldeploy.api import API_GROUP, API_VERSION, PLURAL, SpecError, parse_model_deployment
from modeldeploy.compliance import Evaluation, evaluate
from modeldeploy.observed import labels_of, policies_of

log = logging.getLogger("modeldeploy.admission")
HANDLER_ID = "compliance"  # the webhook's path: /compliance


def admission_outcome(evaluation: Evaluation) -> tuple[str | None, list[str]]:
    """(rejection message or None, warnings) for an evaluation."""
    lines = [str(violation) for violation in evaluation.violations]
    if evaluation.enforcement == "enforce":
        count = len(lines)
        return f"{count} policy violation{'s' if count != 1 else ''}: " + " | ".join(lines), []
    if evaluation.enforcement == "warn":
        return None, lines
    return None, []


@kopf.on.validate(API_GROUP, API_VERSION, PLURAL, id=HANDLER_ID, operations=["CREATE", "UPDATE"])
def check_compliance(
    *, body: kopf.Body, namespace: str | None, warnings: list[str], **kwargs: Any
) -> None:
    """Reject, warn or record a ModelDeployment by the policies of its namespace."""
    try:
        md = parse_model_deployment(dict(body))
    except SpecError:
        return  # the CRD's schema and CEL rules answer for an invalid object
    labels = labels_of(kwargs["namespace_labels"], namespace or "")
    evaluation = evaluate(policies_of(kwargs["model_policies"]), labels, md)
    rejection, warned = admission_outcome(evaluation)
    if evaluation.violations:
        log.info(
            "admission of %s/%s: %s (%s)",
            namespace,
            md.name,
            evaluation.enforcement,
            "; ".join(str(v) for v in evaluation.violations),
        )
    if rejection is not None:
        raise kopf.AdmissionError(rejection, code=403)
    warnings.extend(warned)
