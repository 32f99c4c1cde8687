"""The fetch init container of model pods: its arguments, credentials env and volumes.

Credentials reach the init container only through ``secretKeyRef`` (optional keys, so one
Secret can serve any scheme; the keys are ``fetch.envvars.SECRET_KEYS``); they never appear
in arguments, annotations or status. ``fetch_init_container`` assembles the whole container
the renderer puts first in the pod: the operator image's ``modeldeploy fetch``. With
``spec.model.signature`` the trusted public key or certificate chain is mounted read-only
from its Secret or ConfigMap (the operator itself never reads it) and passed as a path.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

from modeldeploy.api import Adapter, ModelSource
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
    "SIGNATURE_MOUNT",
    "SIGNATURE_VOLUME",
    "SOURCE_VOLUME",
    "TERMINATION_LOG",
    "adapter_argument",
    "fetch_command",
    "fetch_env",
    "fetch_init_container",
    "fetch_secret_volume",
    "fetch_signature_volume",
    "served_path",
    "signature_args",
]

TERMINATION_LOG = "/dev/termination-log"
GCS_MOUNT = "/var/run/secrets/modeldeploy/gcs"
PVC_SOURCE_ROOT = "/mnt/pvc"  # sources.pvc's default MODELDEPLOY_PVC_ROOT
SOURCE_VOLUME = "model-source"
SIGNATURE_VOLUME = "model-signature-trust"
SIGNATURE_MOUNT = "/var/run/secrets/modeldeploy/signature"
PUBLIC_KEY_FILE = "public-key.pem"
CERTIFICATE_CHAIN_FILE = "certificate-chain.pem"


def fetch_command(
    model: ModelSource,
    cache_dir: str,
    *,
    revision: str | None = None,
    adapters: Sequence[Adapter] = (),
    adapter_revisions: Mapping[str, str] | None = None,
    termination_log: str = TERMINATION_LOG,
    executable: tuple[str, ...] = ("modeldeploy",),
) -> list[str]:
    """The init container's command line; pass the resolved ``revision`` from status.artifact
    (and the adapters' resolved revisions by name)."""
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
    argv += signature_args(model)
    revisions = adapter_revisions or {}
    for adapter in adapters:
        argv += ["--adapter", adapter_argument(adapter, revisions.get(adapter.name))]
    argv += ["--termination-log", termination_log]
    return argv


def adapter_argument(adapter: Adapter, revision: str | None = None) -> str:
    """One ``--adapter`` value: the adapter as compact JSON, at its resolved revision."""
    fields = adapter.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"scale"})
    fields = {key: value for key, value in fields.items() if value not in ([], {})}
    if revision:
        fields["revision"] = revision
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def signature_args(model: ModelSource, mount: str = SIGNATURE_MOUNT) -> list[str]:
    """``--signature`` and the mounted trust anchor's flag, when ``spec.model.signature`` is set."""
    signature = model.signature
    if signature is None:
        return []
    if signature.public_key is not None:
        return ["--signature", signature.bundle, "--public-key", f"{mount}/{PUBLIC_KEY_FILE}"]
    chain = f"{mount}/{CERTIFICATE_CHAIN_FILE}"
    return ["--signature", signature.bundle, "--certificate-chain", chain]


def fetch_signature_volume(model: ModelSource) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The volume holding the signature's public key or certificate chain and its mount.

    Optional, so that a missing Secret, ConfigMap or key fails the fetch with a line saying
    which file is missing (in the pod's status) rather than leaving the pod unstarted.
    """
    signature = model.signature
    if signature is None:
        return None
    volume: dict[str, Any] = {"name": SIGNATURE_VOLUME}
    if signature.public_key is not None:
        key = signature.public_key
        items = [{"key": key.key, "path": PUBLIC_KEY_FILE}]
        if key.secret_name is not None:
            volume["secret"] = {"secretName": key.secret_name, "items": items, "optional": True}
        else:
            volume["configMap"] = {"name": key.config_map_name, "items": items, "optional": True}
    else:
        assert signature.certificate_chain is not None
        chain = signature.certificate_chain
        items = [{"key": chain.key, "path": CERTIFICATE_CHAIN_FILE}]
        volume["configMap"] = {"name": chain.config_map_name, "items": items, "optional": True}
    mount = {"name": SIGNATURE_VOLUME, "mountPath": SIGNATURE_MOUNT, "readOnly": True}
    return volume, mount


def fetch_env(model: ModelSource, adapters: Sequence[Adapter] = ()) -> list[dict[str, Any]]:
    """Env entries for the init container: the credential keys, from the Secret, of every
    scheme the model and its adapters come from."""
    if model.credentials_secret is None:
        return []
    scheme = parse_source(model.source).scheme
    schemes = [scheme] + [parse_source(a.source).scheme for a in adapters]
    keys = dict.fromkeys(key for s in schemes for key in SECRET_KEYS.get(s, ()))
    env: list[dict[str, Any]] = [
        {
            "name": key,
            "valueFrom": {
                "secretKeyRef": {"name": model.credentials_secret, "key": key, "optional": True}
            },
        }
        for key in keys
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
    adapters: Sequence[Adapter] = (),
    adapter_revisions: Mapping[str, str] | None = None,
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
    mounted read-only at ``/mnt/pvc/CLAIM``, a gs:// key file from the Secret, a signature's
    trust anchor from its Secret or ConfigMap; ``security_context`` is the model pods'
    container one (``OperatorConfig``).
    """
    argv = fetch_command(
        model,
        cache_mount_path,
        revision=revision,
        adapters=adapters,
        adapter_revisions=adapter_revisions,
    )
    mounts: list[dict[str, Any]] = [
        {"name": tmp_volume, "mountPath": "/tmp"},
        {"name": cache_volume, "mountPath": cache_mount_path},
    ]
    volumes: list[dict[str, Any]] = []
    for extra in (fetch_secret_volume(model), fetch_signature_volume(model)):
        if extra is not None:
            volumes.append(extra[0])
            mounts.append(extra[1])
    # Each pvc:// claim the model or an adapter comes from, mounted read-only once.
    sources = [parse_source(s) for s in (model.source, *(a.source for a in adapters))]
    claims = dict.fromkeys(uri.authority for uri in sources if uri.scheme == "pvc")
    for index, claim_name in enumerate(claims):
        name = SOURCE_VOLUME if index == 0 else f"{SOURCE_VOLUME}-{index}"
        claim = {"claimName": claim_name, "readOnly": True}
        volumes.append({"name": name, "persistentVolumeClaim": claim})
        mount = f"{PVC_SOURCE_ROOT}/{claim_name}"
        mounts.append({"name": name, "mountPath": mount, "readOnly": True})
    env = [{"name": k, "value": v} for k, v in sorted((settings or {}).items())]
    container = {
        "name": INIT_CONTAINER,
        "image": image,
        "imagePullPolicy": image_pull_policy,
        "command": argv[:2],
        "args": argv[2:],
        "env": [*env, *fetch_env(model, adapters), {"name": "HOME", "value": "/tmp"}],
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
