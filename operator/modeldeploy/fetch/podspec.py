"""Pure helpers for the operator: the fetch init container's arguments and credentials env.

Credentials reach the init container only through ``secretKeyRef`` (optional keys, so one
Secret can serve any scheme); they never appear in arguments, annotations or status.
"""

from __future__ import annotations

from typing import Any

from modeldeploy.api import ModelSource
from modeldeploy.fetch.cache import model_path
from modeldeploy.fetch.uri import parse_source

TERMINATION_LOG = "/dev/termination-log"
GCS_KEY_FILE = "credentials.json"
GCS_MOUNT = "/var/run/secrets/modeldeploy/gcs"

# Secret keys mapped to env vars for each scheme (the key and the variable share a name).
SECRET_KEYS: dict[str, tuple[str, ...]] = {
    "hf": ("HF_TOKEN",),
    "s3": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"),
    "gs": (),
    "https": ("MODELDEPLOY_BEARER_TOKEN",),
    "oci": ("OCI_USERNAME", "OCI_PASSWORD"),
    "pvc": (),
}


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
