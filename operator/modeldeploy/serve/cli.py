"""Registration of ``modeldeploy serve`` and ``modeldeploy serve-runtime`` on the CLI.

Exit codes, ``CliError``, the ``-f`` file and logging come from ``cli_common``; this module
imports no other CLI module. Kept free of heavy imports: the handlers import the serving
modules when they run.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from modeldeploy.catalog import Engine
from modeldeploy.cli_common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    CliError,
    fail,
    parse_model_deployment_file,
    setup_logging,
)


def add_serve_parsers(commands: Any) -> None:
    """Register ``serve`` and ``serve-runtime`` on an argparse subparsers object."""
    serve = commands.add_parser(
        "serve",
        help="fetch a ModelDeployment's model and serve it on this machine",
        description=(
            "Serve the model of a ModelDeployment on this machine: fetch it into a local "
            "cache, plan against this machine's CPU, memory and GPUs (refusing what it "
            "cannot run), start the engine the operator would deploy, print the OpenAI "
            "base URL once it is ready, and serve until Ctrl-C."
        ),
    )
    serve.add_argument("-f", "--filename", required=True, help="ModelDeployment YAML ('-': stdin)")
    serve.add_argument(
        "--cache",
        type=Path,
        help="model cache (default: $MODELDEPLOY_CACHE/models, else ~/.cache/modeldeploy/models)",
    )
    serve.add_argument("--port", type=int, default=8000, help="port to serve on (default 8000)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument(
        "--pvc-root",
        type=Path,
        help="directory standing for mounted claims: pvc://CLAIM/PATH is PVC_ROOT/CLAIM/PATH",
    )
    trust = serve.add_mutually_exclusive_group()
    trust.add_argument(
        "--public-key",
        type=Path,
        metavar="PEM",
        help="the trusted public key of spec.model.signature (its Secret is the cluster's)",
    )
    trust.add_argument(
        "--certificate-chain",
        type=Path,
        action="append",
        metavar="PEM",
        help="the trusted certificate chain of spec.model.signature (repeatable)",
    )
    serve.set_defaults(handler=run_serve)

    runtime = commands.add_parser(
        "serve-runtime",
        help="run an engine for a rendered pod (the runtime container's command)",
        description=(
            "Start an engine with the model from the cache (MODELDEPLOY_* environment), bound "
            "to POD_IP, and supervise it: SIGTERM drains in-flight requests, then stops it."
        ),
    )
    runtime.add_argument(
        "--print-argv", action="store_true", help="print the engine command line and exit"
    )
    runtime.add_argument("engine", choices=[str(engine) for engine in Engine])
    runtime.add_argument("engine_args", nargs=argparse.REMAINDER, help="-- ENGINE_ARGS")
    runtime.set_defaults(handler=run_serve_runtime)


def _logging() -> None:
    from modeldeploy.fetch.credentials import secret_values

    setup_logging(secret_values(os.environ))


def run_serve_runtime(args: argparse.Namespace) -> int:
    """``modeldeploy serve-runtime``: start and supervise the engine."""
    from modeldeploy.serve.launcher import LaunchError, plan_launch, serve_runtime

    engine_args = list(args.engine_args)
    if engine_args[:1] == ["--"]:
        engine_args = engine_args[1:]
    _logging()
    try:
        if args.print_argv:
            print(shlex.join(plan_launch(args.engine, engine_args, os.environ).argv))
            return EXIT_OK
        return serve_runtime(args.engine, engine_args)
    except LaunchError as error:
        return fail("serve-runtime", str(error))


def run_serve(args: argparse.Namespace) -> int:
    """``modeldeploy serve``: fetch, plan here, serve until interrupted."""
    from modeldeploy.api import SpecError
    from modeldeploy.fetch.signature import TrustAnchor
    from modeldeploy.serve.launcher import LaunchError
    from modeldeploy.serve.local import LocalServeError, default_cache, serve_local

    _logging()
    logging.getLogger("modeldeploy").setLevel(logging.INFO)
    if args.pvc_root is not None:
        os.environ["MODELDEPLOY_PVC_ROOT"] = str(args.pvc_root.resolve())
    try:
        md = parse_model_deployment_file(args.filename)
        if not md.name:
            raise CliError(f"{args.filename}: metadata.name is required")
        trust = None
        if args.public_key is not None or args.certificate_chain:
            trust = TrustAnchor(args.public_key, tuple(args.certificate_chain or ()))
        return serve_local(
            md,
            cache=(args.cache or default_cache()).resolve(),
            host=args.host,
            port=args.port,
            trust=trust,
        )
    except (CliError, SpecError, LocalServeError, LaunchError) as error:
        return fail("serve", str(error))
    except KeyboardInterrupt:  # before the engine started (during the fetch): just stop
        print("modeldeploy serve: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
