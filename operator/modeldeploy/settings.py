"""Run-time settings of the operator process, validated at start-up.

They come from a YAML file (``modeldeploy run --config FILE``, in a cluster the chart's
ConfigMap) and are overridden by command-line flags. ``planning`` holds the
``OperatorConfig`` that planning and rendering read (runtime images, headroom, limits).
An unknown key or a wrong type stops the operator with one message naming the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from modeldeploy.config import OperatorConfig
from modeldeploy.fetch.envvars import SETTINGS_VARS, settings_from_env


class SettingsError(ValueError):
    """The operator's settings file or flags are invalid."""


class AdmissionSettings(BaseModel):
    """The validating webhook for ModelPolicy enforcement (docs/compliance.md)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )

    enabled: bool = Field(default=False, description="Serve the validating admission webhook.")
    port: int = Field(default=9443, ge=1, le=65535, description="HTTPS port of the webhook.")
    cert_file: Path | None = Field(
        default=None, description="TLS certificate (PEM) the webhook serves."
    )
    key_file: Path | None = Field(default=None, description="Its private key (PEM).")

    @model_validator(mode="after")
    def _needs_a_certificate(self) -> AdmissionSettings:
        if self.enabled and (self.cert_file is None or self.key_file is None):
            raise ValueError("admission.enabled needs certFile and keyFile (PEM files)")
        return self


class LeaderElectionSettings(BaseModel):
    """One acting operator among replicas: a coordination.k8s.io Lease (docs/operator.md).

    The holder renews the Lease every ``retryPeriodSeconds``; one that has not renewed
    within ``renewDeadlineSeconds`` stops acting; a standby takes the Lease over once it
    has not changed for ``leaseDurationSeconds``. Failover after a crash takes at most
    leaseDurationSeconds + 2 x retryPeriodSeconds; after a clean shutdown (the Lease is
    released) at most retryPeriodSeconds.
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )

    enabled: bool = Field(
        default=False, description="Act only while holding the Lease; stand by otherwise."
    )
    lease_name: str = Field(
        default="modeldeploy",
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Name of the Lease.",
    )
    namespace: str | None = Field(
        default=None,
        description="Namespace of the Lease; null: the operator pod's own namespace.",
    )
    lease_duration_seconds: int = Field(
        default=15, ge=2, le=3600, description="How long a standby waits before taking over."
    )
    renew_deadline_seconds: float = Field(
        default=10.0, gt=0, description="How long the leader keeps acting without renewing."
    )
    retry_period_seconds: float = Field(
        default=2.0, gt=0, description="Period of every replica's read (and renewal)."
    )

    @model_validator(mode="after")
    def _ordered(self) -> LeaderElectionSettings:
        if not self.lease_duration_seconds > self.renew_deadline_seconds:
            raise ValueError("leaseDurationSeconds must be greater than renewDeadlineSeconds")
        if not self.renew_deadline_seconds > self.retry_period_seconds:
            raise ValueError("renewDeadlineSeconds must be greater than retryPeriodSeconds")
        return self

    @property
    def failover_bound_seconds(self) -> float:
        """The longest a crashed leader leaves the operator without one."""
        return self.lease_duration_seconds + 2 * self.retry_period_seconds


class OperatorSettings(BaseModel):
    """Everything ``modeldeploy run`` needs besides the cluster credentials."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )

    namespaces: list[str] = Field(
        default_factory=list, description="Namespaces to serve; empty means cluster-wide."
    )
    resync_seconds: float = Field(
        300.0, gt=0, description="Period of the drift check of every ModelDeployment."
    )
    peering: str | None = Field(
        None,
        description="Kopf peering name: pause while another operator is alive (one "
        "replica only; leaderElection is for several); null: no peering.",
    )
    autoscale_interval_seconds: float = Field(
        15.0,
        gt=0,
        description="Period of the operator-native autoscaler: scrape, decide, apply.",
    )
    scrape_timeout_seconds: float = Field(
        2.0, gt=0, description="Timeout of one scrape of a model pod's metrics."
    )
    max_scale_up_step: int = Field(
        4, ge=1, description="Most replicas the autoscaler adds in one decision."
    )
    metrics_port: int = Field(9090, ge=0, le=65535, description="Prometheus /metrics port.")
    health_port: int = Field(8080, ge=0, le=65535, description="Liveness /healthz port.")
    bind_address: str = Field("0.0.0.0", description="Address of the metrics and health ports.")
    log_format: Literal["plain", "json"] = "plain"
    planning: OperatorConfig = Field(default_factory=OperatorConfig)
    admission: AdmissionSettings = AdmissionSettings()
    leader_election: LeaderElectionSettings = LeaderElectionSettings()

    @model_validator(mode="after")
    def _one_coordination(self) -> OperatorSettings:
        if self.peering is not None and self.leader_election.enabled:
            # Kopf peering pauses every operator that sees another of the same priority:
            # replicas standing by for the Lease would pause the leader too.
            raise ValueError("peering and leaderElection.enabled exclude each other")
        return self

    @field_validator("planning", mode="before")
    @classmethod
    def _planning(cls, value: Any) -> OperatorConfig:
        if isinstance(value, OperatorConfig):
            return value
        if not isinstance(value, dict):
            raise ValueError("must be a mapping of planning settings")
        # camelCase in YAML like every other key; the dataclass uses snake_case.
        fields = {to_camel(name): name for name in OperatorConfig.__dataclass_fields__}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise ValueError(f"unknown keys {unknown}; allowed: {sorted(fields)}")
        snake = {fields[key]: item for key, item in value.items()}
        if "source_settings" in snake:
            snake["source_settings"] = _source_settings(snake["source_settings"])
        return TypeAdapter(OperatorConfig).validate_python(snake)


def _source_settings(value: Any) -> tuple[tuple[str, str], ...]:
    """``planning.sourceSettings``: a mapping of the non-secret source variables only."""
    if not isinstance(value, Mapping):
        raise ValueError("sourceSettings must be a mapping of variable name to value")
    unknown = sorted(set(value) - set(SETTINGS_VARS))
    if unknown:
        raise ValueError(
            f"sourceSettings: {unknown} not allowed (credentials belong in a Secret named "
            f"by spec.model.credentialsSecret); allowed: {sorted(SETTINGS_VARS)}"
        )
    return tuple(sorted((str(k), str(v)) for k, v in value.items()))


def source_settings(env: Mapping[str, str] | None = None) -> tuple[tuple[str, str], ...]:
    """The operator's own non-secret source variables (HF_ENDPOINT, ...), for sourceSettings."""
    return tuple(sorted(settings_from_env(os.environ if env is None else env).items()))


def load_settings(path: Path | None, overrides: dict[str, Any]) -> OperatorSettings:
    """Read the YAML settings file (if any), apply flag overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise SettingsError(f"cannot read settings file {path}: {error}") from error
        if not isinstance(loaded, dict):
            raise SettingsError(f"settings file {path} must hold a mapping")
        data.update(loaded)
    for key, value in overrides.items():
        if isinstance(value, Mapping):  # a nested section: merge the keys given
            given = {k: v for k, v in value.items() if v is not None}
            if given:
                section = data.get(key)
                data[key] = {**(section if isinstance(section, Mapping) else {}), **given}
        elif value is not None:
            data[key] = value
    try:
        return OperatorSettings.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "settings"
        source = f" in {path}" if path else ""
        raise SettingsError(f"invalid operator setting {where}{source}: {first['msg']}") from error
