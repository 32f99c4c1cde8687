"""``modeldeploy fetch``: the init container's entry point (and local mode's first step).

Exit status 0 after a verified publish (or a complete cache entry); otherwise the status
of the FetchError class (3 digest mismatch, 4 missing file or no matching quantization,
5 credential denied, 6 source changed, 7 transfer failed, 8 lock lost, 9 signature invalid)
or 2 for bad input
(arguments, or a ``-f`` file that is missing, not YAML or not a valid ModelDeployment),
with one ``modeldeploy fetch: error: ...`` line on stderr. Either way a short JSON result
goes to ``--termination-log`` (Kubernetes shows at most 4096 bytes of it in the pod's
status, where the operator reads it). Credentials come only from the environment.
Exit codes, ``CliError``, the ``-f`` file and logging come from ``modeldeploy.cli_common``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from modeldeploy.api import SpecError, parse_adapter
from modeldeploy.cli_common import (
    EXIT_INVALID,
    EXIT_OK,
    CliError,
    fail,
    parse_model_deployment_file,
    setup_logging,
)
from modeldeploy.fetch.credentials import redact, secret_values
from modeldeploy.fetch.download import DownloadOptions
from modeldeploy.fetch.errors import FetchError
from modeldeploy.fetch.fetcher import FetchOptions, fetch
from modeldeploy.fetch.provenance import termination_message
from modeldeploy.fetch.request import FetchRequest
from modeldeploy.fetch.signature import TrustAnchor

log = logging.getLogger("modeldeploy.fetch")
INVALID_INPUT_REASON = "InvalidInput"  # the termination message's reason for a CliError


def add_fetch_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``fetch`` on an argparse subparsers object; sets ``handler`` to ``run``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "fetch",
        help="download, verify and cache a model artifact",
        description="Resolve a model source to exact files, download them with resume and "
        "parallel ranges, verify sha256 and publish them atomically into the cache.",
    )
    configure_parser(parser)
    parser.set_defaults(handler=run)
    return parser


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the fetch options to ``parser``."""
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--source", help="hf://, s3://, gs://, https://, oci:// or pvc:// URI")
    what.add_argument(
        "-f",
        "--file-spec",
        dest="spec",
        metavar="MODEL.yaml",
        help="take spec.model from a ModelDeployment YAML file",
    )
    parser.add_argument("--revision", help="revision to fetch (commit, tag, digest, ETag set)")
    parser.add_argument("--format", default=None, choices=["auto", "gguf", "safetensors"])
    parser.add_argument("--quantization", default=None, help="e.g. Q4_K_M (case-insensitive)")
    parser.add_argument(
        "--file",
        dest="files",
        action="append",
        default=None,
        metavar="GLOB",
        help="fetch the files matching GLOB instead of choosing by quantization",
    )
    parser.add_argument(
        "--digest",
        dest="digests",
        action="append",
        default=None,
        metavar="FILE=SHA256",
        help="pin a file's sha256 (repeatable)",
    )
    parser.add_argument(
        "--signature",
        metavar="BUNDLE",
        default=None,
        help="verify the files against this model-signing bundle before publishing: a path "
        "inside the source (model.sig) or a URI; needs --public-key or --certificate-chain",
    )
    trust = parser.add_mutually_exclusive_group()
    trust.add_argument(
        "--public-key",
        type=Path,
        default=None,
        metavar="PEM",
        help="the trusted elliptic-curve public key of --signature",
    )
    trust.add_argument(
        "--certificate-chain",
        type=Path,
        action="append",
        default=None,
        metavar="PEM",
        help="trusted certificates the signing certificate must chain to (repeatable)",
    )
    parser.add_argument(
        "--adapter",
        dest="adapters",
        action="append",
        default=None,
        metavar="JSON",
        help="also fetch this LoRA adapter, an entry of spec.adapters as JSON "
        '(e.g. \'{"name": "sql", "source": "hf://org/sql-lora", "revision": "abc"}\'); '
        "repeatable, fetched after the model",
    )
    parser.add_argument("--cache", required=True, type=Path, help="cache root directory")
    parser.add_argument(
        "--termination-log",
        type=Path,
        default=None,
        help="where to write the JSON result (e.g. /dev/termination-log)",
    )
    parser.add_argument("--connections", type=int, default=4, help="parallel range requests")
    parser.add_argument("--chunk-mib", type=int, default=8, help="range size in MiB")
    parser.add_argument("--progress-interval", type=float, default=10.0, metavar="SECONDS")
    parser.add_argument(
        "--lock-stale-after",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="treat a cache lock whose heartbeat stopped this long as stale",
    )


def _request(args: argparse.Namespace) -> FetchRequest:
    """The request the arguments describe; a CliError for a bad ``-f`` file or ``--digest``."""
    if args.spec:
        base = FetchRequest.from_model(parse_model_deployment_file(args.spec).spec.model)
    else:
        base = FetchRequest(source=args.source)
    digests = dict(base.digests)
    for item in args.digests or []:
        name, sep, value = item.partition("=")
        if not sep or len(value) != 64 or any(c not in "0123456789abcdefABCDEF" for c in value):
            raise CliError(f"--digest {item!r}: expected FILE=SHA256 (64 hex characters)")
        digests[name] = value.lower()
    return FetchRequest(
        source=base.source,
        revision=args.revision or base.revision,
        format=args.format or base.format,
        quantization=args.quantization or base.quantization,
        files=tuple(args.files) if args.files else base.files,
        digests=digests,
        signature=args.signature or base.signature,
    )


def adapter_requests(items: list[str] | None) -> list[tuple[str, FetchRequest]]:
    """(name, request) per ``--adapter JSON``; a CliError naming the bad one."""
    requests = []
    for item in items or []:
        try:
            adapter = parse_adapter(json.loads(item))
        except (ValueError, SpecError) as error:
            raise CliError(f"--adapter {item[:200]!r}: {error}") from None
        requests.append((adapter.name, FetchRequest.from_adapter(adapter)))
    return requests


def trust_anchor(
    public_key: Path | None, certificate_chain: list[Path] | None, bundle: str | None
) -> TrustAnchor | None:
    """The trust anchor the flags name; a CliError when it and the bundle do not go together."""
    if public_key is None and not certificate_chain:
        if bundle:
            raise CliError(
                f"signature {bundle}: name its trusted key with --public-key PEM "
                "or --certificate-chain PEM"
            )
        return None
    if not bundle:
        raise CliError("--public-key and --certificate-chain need a signature (--signature)")
    return TrustAnchor(public_key=public_key, certificate_chain=tuple(certificate_chain or ()))


def _write_termination(path: Path | None, payload: dict[str, Any], secrets: list[str]) -> None:
    if path is None:
        return
    try:
        path.write_text(redact(termination_message(payload), secrets))
    except OSError as error:
        log.warning("could not write the termination message to %s: %s", path, error)


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``fetch`` command and return the exit status."""
    secrets = secret_values(os.environ)
    setup_logging(secrets)
    try:
        request = _request(args)
        options = FetchOptions(
            download=DownloadOptions(
                connections=max(1, args.connections), chunk_size=max(1, args.chunk_mib) << 20
            ),
            progress_interval=args.progress_interval,
            lock_stale_after=args.lock_stale_after,
            lock_heartbeat=max(0.05, min(5.0, args.lock_stale_after / 6)),
        )
        trust = trust_anchor(args.public_key, args.certificate_chain, request.signature)
        adapters = adapter_requests(args.adapters)
        result = fetch(request, args.cache, options=options, trust=trust)
    except CliError as error:
        return _fail(args, str(error), INVALID_INPUT_REASON, EXIT_INVALID, secrets)
    except FetchError as error:
        return _fail(args, str(error), error.reason, error.exit_code, secrets)
    fetched = []
    for name, adapter in adapters:
        try:
            done = fetch(adapter, args.cache, options=options)
        except FetchError as error:
            return _fail(args, f"adapter {name}: {error}", error.reason, error.exit_code, secrets)
        fetched.append({"name": name, "revision": done.revision, "files": len(done.files)})
    summary = result.summary()
    if fetched:
        summary["adapters"] = fetched
    _write_termination(args.termination_log, summary, secrets)
    print(redact(json.dumps(summary), secrets))
    return EXIT_OK


def _fail(
    args: argparse.Namespace, message: str, reason: str, code: int, secrets: list[str]
) -> int:
    """One redacted error line on stderr and in the termination log; returns ``code``."""
    line = redact(message, secrets)
    _write_termination(args.termination_log, {"error": line, "reason": reason}, secrets)
    return fail("fetch", line, code)


def main(argv: list[str] | None = None) -> int:
    """``python -m modeldeploy.fetch``: the same command without the ``modeldeploy`` wrapper."""
    parser = argparse.ArgumentParser(prog="modeldeploy fetch")
    configure_parser(parser)
    return run(parser.parse_args(argv))
