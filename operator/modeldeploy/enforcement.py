"""Defence in depth: what the policies' verdict means for one reconcile pass. Pure.

Admission (``admission.py``) judges a ModelDeployment before it is stored, but license and
digests are known only once the source is resolved, and a policy may be created or changed
later. So every pass evaluates again, with the resolved facts: a violated ``enforce``
policy blocks the object (phase ``Blocked``, no serving pods: a running workload is scaled
to zero, its other children kept), ``warn`` and ``audit`` record the violation and serve.
The ``Compliant`` condition says which; it exists only while some policy selects the
namespace, so a cluster without policies computes the status it always did.
"""

from __future__ import annotations

from dataclasses import dataclass

from modeldeploy.artifacts import ArtifactState
from modeldeploy.compliance import Evaluation, ResolvedFacts

MAX_MESSAGE = 2048  # a condition message stays readable; the Events carry each violation


@dataclass(frozen=True)
class Verdict:
    """The pass's compliance outcome: blocked or not, the condition, the Event."""

    blocked: bool
    condition: tuple[bool, str, str]  # status, reason, message of Compliant
    warning: str | None  # a Warning Event's message, when not compliant


def resolved_facts(
    artifact: ArtifactState | None,
    engine: str | None,
    accelerator: str | None,
    signature_identity: str | None = None,
) -> ResolvedFacts | None:
    """The facts resolution (and a pod's verified signature) gave; None before resolution."""
    resolution = artifact.resolution if artifact is not None else None
    if resolution is None:
        return None
    return ResolvedFacts(
        license=resolution.license,
        file_digests={f.name: f.sha256 or "" for f in resolution.files},
        revision=resolution.revision,
        signature_identity=signature_identity,
        engine=engine,
        accelerator=accelerator,
    )


def verdict(evaluation: Evaluation) -> Verdict | None:
    """The outcome of an evaluation; None when no policy selects the namespace."""
    if not evaluation.policies:
        return None
    names = ", ".join(evaluation.policies)
    if evaluation.compliant:
        message = f"complies with {names}"
        if evaluation.pending:
            message += (
                f" (pending until the artifact is resolved: {', '.join(evaluation.pending_rules)})"
            )
        return Verdict(False, (True, "Compliant", message), None)
    listed = "; ".join(str(v) for v in evaluation.violations)
    count = len(evaluation.violations)
    summary = f"{count} violation{'s' if count != 1 else ''}: {listed}"
    if len(summary) > MAX_MESSAGE:
        summary = summary[: MAX_MESSAGE - 3] + "..."
    if evaluation.enforcement == "enforce":
        return Verdict(True, (False, "PolicyViolation", f"blocked: {summary}"), summary)
    reason = "Warned" if evaluation.enforcement == "warn" else "Audited"
    return Verdict(False, (False, reason, f"served ({evaluation.enforcement}): {summary}"), summary)
