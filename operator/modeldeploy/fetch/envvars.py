"""The environment variables of model sources, by name: credentials and non-secret settings.

One home for the names, so that the sources and ``credentials`` (which read them), the
fetch init container's rendering (which maps a credentials Secret's keys to them) and the
operator's settings (which pass the non-secret ones on) agree. Names and a pure filter
only: nothing here reads the process environment.
"""

from __future__ import annotations

from collections.abc import Mapping

# Secrets (values never printed). A credentials Secret's keys have the variables' names.
HF_TOKEN_VAR = "HF_TOKEN"
HF_TOKEN_VARS = (HF_TOKEN_VAR, "HUGGING_FACE_HUB_TOKEN")
AWS_SECRET_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
OCI_SECRET_VARS = ("OCI_USERNAME", "OCI_PASSWORD")
HTTPS_TOKEN_VAR = "MODELDEPLOY_BEARER_TOKEN"
SECRET_VARS = (*HF_TOKEN_VARS, *AWS_SECRET_VARS, *OCI_SECRET_VARS, HTTPS_TOKEN_VAR)
HF_TOKEN_PATH_VAR = "HF_TOKEN_PATH"  # a file holding the Hub token
SECRET_FILE_VARS = (HF_TOKEN_PATH_VAR,)
# gs:// takes a service account key file: this key of the Secret, mounted as a file.
GCS_KEY_FILE = "credentials.json"

# The Secret keys the fetch init container maps to env vars, per scheme.
SECRET_KEYS: dict[str, tuple[str, ...]] = {
    "hf": (HF_TOKEN_VAR,),
    "s3": AWS_SECRET_VARS,
    "gs": (),
    "https": (HTTPS_TOKEN_VAR,),
    "oci": OCI_SECRET_VARS,
    "pvc": (),
}

# Non-secret settings the operator passes on from its own environment: endpoints, regions.
PLAIN_HTTP_HOSTS_VAR = "MODELDEPLOY_PLAIN_HTTP_HOSTS"
SETTINGS_VARS = (
    "HF_ENDPOINT",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "STORAGE_EMULATOR_HOST",
    "MODELDEPLOY_OCI_PLAIN_HTTP",
    PLAIN_HTTP_HOSTS_VAR,
)
# "false": never use the process's own cloud identity (the operator resolving a user's source).
AMBIENT_CREDENTIALS_VAR = "MODELDEPLOY_AMBIENT_CREDENTIALS"


def settings_from_env(env: Mapping[str, str]) -> dict[str, str]:
    """The non-secret source settings (``SETTINGS_VARS``) set in ``env``."""
    return {k: v for k, v in env.items() if k in SETTINGS_VARS and v}
