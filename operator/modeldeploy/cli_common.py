"""What every ``modeldeploy`` command shares: exit codes, the input error, ``-f`` files, logging.

The top-level CLI (``cli``), ``serve``/``serve-runtime`` (``serve/cli``) and ``fetch``
(``fetch/cli``) all build on this module, and no subcommand module imports another CLI
module. A command raises ``CliError`` for bad input; its handler prints it with ``fail``
as one ``modeldeploy COMMAND: error: ...`` line on stderr (no traceback) and exits with
``EXIT_INVALID``. ``-f FILE`` is read by ``load_model_deployment`` (missing file, bad YAML,
not exactly one ModelDeployment) and validated by ``parse_model_deployment_file`` (the
field's path and what it allows, as ``api.SpecError`` words it).

Kept light: yaml and the API models load when a file is read, not on import.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modeldeploy.fetch.credentials import RedactingFilter

if TYPE_CHECKING:
    from modeldeploy.api import ModelDeployment

EXIT_OK = 0
EXIT_FAILURE = 1  # the command could not do its work (e.g. the cluster could not be read)
EXIT_INVALID = 2  # bad input, as for argparse's usage errors: nothing on stdout
EXIT_NONCOMPLIANT = 3  # `policy check`: the ModelDeployment violates a ModelPolicy
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT

# Client libraries whose INFO lines would drown the command's own.
QUIET_LOGGERS = ("httpx", "httpcore", "botocore", "boto3", "urllib3", "huggingface_hub", "google")


class CliError(Exception):
    """Bad input to a command: ``str(error)`` is the one line to print, the exit code is 2."""


def fail(command: str, message: str, code: int = EXIT_INVALID) -> int:
    """Print ``modeldeploy COMMAND: error: MESSAGE`` on stderr and return ``code``."""
    print(f"modeldeploy {command}: error: {message}", file=sys.stderr)
    return code


def read_yaml_documents(path: str) -> list[Any]:
    """The non-empty documents of a YAML file (``-``: stdin); a CliError if unreadable."""
    import yaml

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except OSError as error:
        raise CliError(f"{path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise CliError(f"{path}: not a UTF-8 text file") from None
    except yaml.YAMLError as error:
        raise CliError(f"{path}: not valid YAML: {_yaml_problem(error)}") from None


def load_model_deployment(path: str) -> object:
    """The one ModelDeployment document in a YAML file, not yet validated."""
    documents = [
        doc
        for doc in read_yaml_documents(path)
        if not (isinstance(doc, dict) and doc.get("kind") not in (None, "ModelDeployment"))
    ]
    if len(documents) != 1:
        raise CliError(f"{path}: expected one ModelDeployment, found {len(documents)}")
    return documents[0]


def parse_model_deployment_file(path: str) -> ModelDeployment:
    """The validated ModelDeployment of a YAML file; a CliError names the field at fault."""
    from modeldeploy.api import SpecError, parse_model_deployment

    try:
        return parse_model_deployment(load_model_deployment(path))
    except SpecError as error:
        raise CliError(str(error)) from None


def setup_logging(secrets: Iterable[str] = (), level: int = logging.INFO) -> None:
    """Log to stderr, one line per event, with every credential value redacted."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _yaml_problem(error: Exception) -> str:
    """PyYAML's error as one line: where and what (its message spans several lines)."""
    import yaml

    if isinstance(error, yaml.MarkedYAMLError) and error.problem:
        mark = error.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        context = f" ({error.context})" if error.context else ""
        return f"{where}{error.problem}{context}"
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())
