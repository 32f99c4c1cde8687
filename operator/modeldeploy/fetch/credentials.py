"""Credentials, read only from the environment a pod gets from its Secret, and their redaction.

Every source reads its credentials here, from a mapping shaped like ``os.environ`` (the
init container's env from ``secretKeyRef``; the operator passes a Secret's data the same
way; the variables' names are in ``envvars``). ``secret_values`` lists every value that
must never be printed, and ``RedactingFilter`` removes them from log records as a second
line of defence.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

from modeldeploy.fetch.envvars import (
    HF_TOKEN_PATH_VAR,
    HF_TOKEN_VARS,
    HTTPS_TOKEN_VAR,
    SECRET_FILE_VARS,
    SECRET_VARS,
)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def hf_token(env: Mapping[str, str]) -> str | None:
    """The Hub token: ``HF_TOKEN``, ``HUGGING_FACE_HUB_TOKEN`` or the file ``HF_TOKEN_PATH``."""
    for name in HF_TOKEN_VARS:
        if env.get(name):
            return env[name]
    path = env.get(HF_TOKEN_PATH_VAR)
    return _read(path) if path else None


def bearer_token(env: Mapping[str, str]) -> str | None:
    """A bearer token for https:// sources (``MODELDEPLOY_BEARER_TOKEN``)."""
    return env.get(HTTPS_TOKEN_VAR) or None


def secret_values(env: Mapping[str, str]) -> list[str]:
    """Every credential value present in ``env`` (including token files' contents)."""
    values = [env[name] for name in SECRET_VARS if env.get(name)]
    for name in SECRET_FILE_VARS:
        if env.get(name) and (content := _read(env[name])):
            values.append(content)
    # Short values would redact ordinary words; real credentials are long.
    return sorted({v for v in values if len(v) >= 6}, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret value in ``text`` by ``<redacted>``."""
    for secret in secrets:
        text = text.replace(secret, "<redacted>")
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that removes secret values from every record it passes."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = list(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = redact(record.getMessage(), self.secrets)
            record.msg, record.args = message, None
            if record.exc_text:
                record.exc_text = redact(record.exc_text, self.secrets)
        return True
