"""The fetch init container of model pods: its arguments, credentials env and volumes.

Credentials reach the init container only through ``secretKeyRef`` (optional keys, so one
Secret can serve any scheme; the keys are ``fetch.envvars.SECRET_KEYS``); they never appear
in arguments, annotations or status. ``fetch_init_container`` assembles the whole container
the renderer puts first in the pod: the operator image's ``modeldeploy fetch``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from modeldeploy.api import ModelSource
from modeldeploy.artifacts import INIT_CONTAINER
from modeldeploy.config import CONTAINER_SECURITY_CONTEXT
from modeldeploy.fetch.envvars import GCS_KEY_FILE, SECRET_KEYS
from modeldeploy.fetch.layout import model_path
from modeldeploy.fetch.uri import parse_source

__all__ = [
    "GCS_KEY_FILE",
    "GCS_MOUNT",
    "INIT_CONTAINER",
    "PVC_SOURCE_ROOT",
    "SOURCE_VOLUME",
    "TERMINATION_LOG",
    "fetch_command",
    "fetch_env",
    "fetch_init_container",
    "fetch_secret_volume",
    "served_path",
]

TERMINATION_LOG = "/dev/termination-log"
GCS_MOUNT = "/var/run/secrets/modeldeploy/gcs"
PVC_SOURCE_ROOT = "/mnt/pvc"  # sources.pvc's default MODELDEPLOY_PVC_ROOT
SOURCE_VOLUME = "model-source"


def fetch_command(
    model: ModelSource,
    cache_dir: str,
    *,
    revision: str | None = None,
    termination_log: str = TERMINATION_LOG,
    executable: tuple[str, ...] = ("modeldeploy",),
) -> list[str]:
    """The init container's command line; pass the resolved ``revision`` from status.artifact."""
    argv = [*executable, "fetch", "--source", model.source, "--cache", cache_dir]
    pinned = revision or model.revision
    if pinned:
        argv += ["--revision", pinned]
    if model.format != "auto":
        argv += ["--format", model.format]
    if model.quantization != "auto":
        argv += ["--quantization", model.quantization]
    for glob in model.files:
        argv += ["--file", glob]
    for name, digest in sorted(model.digests.items()):
        argv += ["--digest", f"{name}={digest}"]
    argv += ["--termination-log", termination_log]
    return argv


def fetch_env(model: ModelSource) -> list[dict[str, Any]]:
    """Env entries for the init container: the scheme's credential keys from the Secret."""
    if model.credentials_secret is None:
        return []
    scheme = parse_source(model.source).scheme
    env: list[dict[str, Any]] = [
        {
            "name": key,
            "valueFrom": {
                "secretKeyRef": {"name": model.credentials_secret, "key": key, "optional": True}
            },
        }
        for key in SECRET_KEYS.get(scheme, ())
    ]
    if scheme == "gs":
        env.append(
            {"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": f"{GCS_MOUNT}/{GCS_KEY_FILE}"}
        )
    return env


def fetch_secret_volume(model: ModelSource) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """For gs://, the Secret volume holding ``credentials.json`` and its mount, else None."""
    if model.credentials_secret is None or parse_source(model.source).scheme != "gs":
        return None
    volume = {
        "name": "gcs-credentials",
        "secret": {
            "secretName": model.credentials_secret,
            "items": [{"key": GCS_KEY_FILE, "path": GCS_KEY_FILE}],
            "optional": True,
        },
    }
    mount = {"name": "gcs-credentials", "mountPath": GCS_MOUNT, "readOnly": True}
    return volume, mount


def served_path(cache_dir: str, source: str, revision: str, primary_file: str = "") -> str:
    """The path the engine serves from: the GGUF's first file, or the revision directory."""
    return model_path(cache_dir, parse_source(source).canonical, revision, primary_file)


def fetch_init_container(
    model: ModelSource,
    *,
    image: str,
    cache_mount_path: str,
    cache_volume: str = "model-cache",
    tmp_volume: str = "tmp",
    revision: str | None = None,
    settings: Mapping[str, str] | None = None,
    image_pull_policy: str = "IfNotPresent",
    security_context: Mapping[str, Any] = CONTAINER_SECURITY_CONTEXT,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The fetch init container for ``model`` and the extra pod volumes it needs.

    The operator image's ``modeldeploy fetch`` into the shared cache volume, pinned digests
    verified, its JSON result in the termination message; credentials only through
    ``secretKeyRef``; ``settings`` are non-secret endpoint variables passed on as values
    (the operator's own HF_ENDPOINT, AWS_ENDPOINT_URL, ...); a pvc:// source's claim is
    mounted read-only at ``/mnt/pvc/CLAIM``, a gs:// key file from the Secret;
    ``security_context`` is the model pods' container one (``OperatorConfig``).
    """
    argv = fetch_command(model, cache_mount_path, revision=revision)
    mounts: list[dict[str, Any]] = [
        {"name": tmp_volume, "mountPath": "/tmp"},
        {"name": cache_volume, "mountPath": cache_mount_path},
    ]
    volumes: list[dict[str, Any]] = []
    secret = fetch_secret_volume(model)
    if secret is not None:
        volumes.append(secret[0])
        mounts.append(secret[1])
    uri = parse_source(model.source)
    if uri.scheme == "pvc":
        claim = {"claimName": uri.authority, "readOnly": True}
        volumes.append({"name": SOURCE_VOLUME, "persistentVolumeClaim": claim})
        mount = f"{PVC_SOURCE_ROOT}/{uri.authority}"
        mounts.append({"name": SOURCE_VOLUME, "mountPath": mount, "readOnly": True})
    env = [{"name": k, "value": v} for k, v in sorted((settings or {}).items())]
    container = {
        "name": INIT_CONTAINER,
        "image": image,
        "imagePullPolicy": image_pull_policy,
        "command": argv[:2],
        "args": argv[2:],
        "env": [*env, *fetch_env(model), {"name": "HOME", "value": "/tmp"}],
        "resources": {
            "requests": {"cpu": "500m", "memory": "256Mi"},
            "limits": {"memory": "512Mi"},
        },
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": copy.deepcopy(dict(security_context)),
        "volumeMounts": mounts,
    }
    return container, volumes
