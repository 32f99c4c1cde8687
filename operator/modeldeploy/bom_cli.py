"""``modeldeploy bom``: print a ModelDeployment's ML-BOM (CycloneDX 1.6 JSON).

``modeldeploy bom mdep/NAME [-n NS] [--kubeconfig FILE]`` prints the BOM the operator
stored in the ModelDeployment's ConfigMap (``render/bom.py``). ``modeldeploy bom -f
model.yaml`` builds it here instead: the fetcher brings the model into the local cache
(the one ``modeldeploy serve`` uses, so a served model is not fetched again), the BOM
takes every file's verified sha256 from it, the architecture from the artifact, and the
engine and image the spec asks for (``auto``: the format's first engine).

Registered on the CLI by ``cli.py``; exit codes, ``CliError`` and ``-f`` files come from
``cli_common``. Kept free of heavy imports: the kubernetes client, the fetcher and the
CycloneDX library load when the command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modeldeploy.cli_common import (
    EXIT_FAILURE,
    EXIT_OK,
    CliError,
    fail,
    parse_model_deployment_file,
)

if TYPE_CHECKING:
    from modeldeploy.api import ModelDeployment

# What names a ModelDeployment on the command line, as kubectl accepts it.
RESOURCE_NAMES = ("mdep", "modeldeployment", "modeldeployments", "modeldeployments.modeldeploy.io")


def add_bom_parser(commands: Any) -> None:
    """Register ``bom`` on an argparse subparsers object."""
    bom = commands.add_parser(
        "bom",
        help="print a ModelDeployment's ML-BOM (CycloneDX 1.6 JSON)",
        description=(
            "Print the ML-BOM of a ModelDeployment: the one the operator stored in the "
            "cluster (mdep/NAME), or one built here after fetching the model (-f)."
        ),
    )
    what = bom.add_mutually_exclusive_group(required=True)
    what.add_argument("target", nargs="?", metavar="mdep/NAME", help="a ModelDeployment")
    what.add_argument("-f", "--filename", help="ModelDeployment YAML ('-': stdin): build here")
    bom.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
    bom.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    bom.add_argument(
        "--cache",
        type=Path,
        help="with -f: model cache (default: the one of modeldeploy serve)",
    )
    bom.add_argument(
        "--pvc-root",
        type=Path,
        help="with -f: directory standing for claims: pvc://CLAIM/PATH is PVC_ROOT/CLAIM/PATH",
    )
    bom.set_defaults(handler=run_bom)


def run_bom(args: argparse.Namespace) -> int:
    """``modeldeploy bom``: print the stored or a locally built ML-BOM."""
    from modeldeploy.api import SpecError

    try:
        if args.filename:
            if args.namespace or args.kubeconfig:
                raise CliError("-n and --kubeconfig name a cluster; -f builds the BOM here")
            env = dict(os.environ)
            if args.pvc_root is not None:
                env["MODELDEPLOY_PVC_ROOT"] = str(args.pvc_root.resolve())
            md = parse_model_deployment_file(args.filename)
            if not md.name:
                raise CliError(f"{args.filename}: metadata.name is required")
            text = local_bom(md, cache=args.cache, env=env)
        else:
            text = stored_bom(parse_target(args.target), args.namespace, args.kubeconfig)
    except (CliError, SpecError) as error:
        return fail("bom", str(error))
    except BomUnavailableError as error:
        return fail("bom", str(error), EXIT_FAILURE)
    sys.stdout.write(text)
    return EXIT_OK


class BomUnavailableError(Exception):
    """The BOM could not be read or built: the cluster or the source failed."""


def parse_target(text: str) -> str:
    """The ModelDeployment name in ``mdep/NAME`` (or ``modeldeployment/NAME``, or ``NAME``)."""
    kind, slash, name = text.rpartition("/")
    if slash and kind.lower() not in RESOURCE_NAMES:
        raise CliError(f"{text!r}: expected mdep/NAME (a ModelDeployment)")
    if not name:
        raise CliError(f"{text!r}: no ModelDeployment name")
    return name


def stored_bom(name: str, namespace: str | None, kubeconfig: str | None) -> str:
    """The ML-BOM the operator stored in the ModelDeployment's ConfigMap."""
    from kubernetes import client
    from kubernetes import config as kube_config

    from modeldeploy.render.bom import BOM_KEY, bom_config_map_name

    try:
        api_client = kube_config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call,unused-ignore]
        if namespace is None:
            _, active = kube_config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call,unused-ignore]
            namespace = (active or {}).get("context", {}).get("namespace") or "default"
    except Exception as error:  # any kubeconfig problem is one message
        raise BomUnavailableError(f"cannot load the kubeconfig: {error}") from None
    config_map = bom_config_map_name(name)
    with api_client:
        try:
            stored = client.CoreV1Api(api_client).read_namespaced_config_map(config_map, namespace)
        except client.ApiException as error:
            if error.status == 404:
                raise BomUnavailableError(
                    f"mdep/{name} in {namespace} has no ML-BOM (no ConfigMap {config_map}): "
                    "it is written once the operator has planned the ModelDeployment"
                ) from None
            reason = error.reason
            raise BomUnavailableError(f"cannot read {namespace}/{config_map}: {reason}") from None
        except Exception as error:  # an unreachable cluster is one message
            raise BomUnavailableError(f"cannot read {namespace}/{config_map}: {error}") from None
    text = (stored.data or {}).get(BOM_KEY)
    if not text:
        raise BomUnavailableError(f"ConfigMap {namespace}/{config_map} holds no {BOM_KEY}")
    return str(text) if str(text).endswith("\n") else f"{text}\n"


def local_bom(
    md: ModelDeployment,
    *,
    cache: Path | None = None,
    env: dict[str, str] | None = None,
    timestamp: str | None = None,
) -> str:
    """Fetch ``md``'s model and adapters into the local cache; its ML-BOM from the fetched files."""
    import dataclasses
    import json

    from modeldeploy.bom import RuntimeFacts, build_bom
    from modeldeploy.catalog import ACCELERATORS_FOR_ENGINE, ENGINES_FOR_FORMAT, Engine, Format
    from modeldeploy.catalog import Accelerator as Hardware
    from modeldeploy.clock import utc_now
    from modeldeploy.config import OperatorConfig
    from modeldeploy.fetch import FetchError, FetchRequest, fetch
    from modeldeploy.fetch.gguf_header import load_hf_config, read_gguf_metadata
    from modeldeploy.provenance import provenance_from
    from modeldeploy.resolution import ArtifactFile, Resolution
    from modeldeploy.runtimes import runtime_for
    from modeldeploy.serve.local import LocalServeError, default_cache, fetch_adapters

    env = dict(os.environ) if env is None else env
    cache = cache or default_cache()
    try:
        result = fetch(FetchRequest.from_model(md.spec.model), cache, env=env)
    except FetchError as error:
        raise BomUnavailableError(f"fetch failed: {error}") from None
    try:
        record = json.loads(result.provenance_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    names = [f.name for f in result.files]
    fmt = record.get("format") or (
        "gguf" if any(n.lower().endswith(".gguf") for n in names) else "safetensors"
    )
    resolution = Resolution(
        source=result.source,
        revision=result.revision,
        format=fmt,
        quantization=record.get("quantization"),
        files=tuple(ArtifactFile(f.name, f.size, f.sha256) for f in result.files),
        license=result.license,
    )
    try:
        if resolution.primary_file:
            path = result.path / resolution.primary_file
            architecture = read_gguf_metadata(path, total_bytes=resolution.total_bytes)
        elif (result.path / "config.json").exists():
            architecture = load_hf_config(result.path / "config.json")
        else:
            architecture = None
    except (OSError, ValueError) as error:
        raise BomUnavailableError(f"cannot read the model metadata: {error}") from None
    quantization = resolution.quantization or (architecture.quantization if architecture else None)
    resolution = dataclasses.replace(
        resolution, quantization=quantization, architecture=architecture
    )
    spec = md.spec
    engine = Engine(spec.engine) if spec.engine != "auto" else ENGINES_FOR_FORMAT[Format(fmt)][0]
    if spec.hardware.accelerator != "auto":
        accelerator = Hardware(spec.hardware.accelerator)
    elif Hardware.CPU in ACCELERATORS_FOR_ENGINE[engine]:
        accelerator = Hardware.CPU
    else:
        accelerator = Hardware.GPU
    config = OperatorConfig()
    parameters = architecture.parameters if architecture else None
    if parameters is None and spec.model.parameter_count is not None:
        parameters = round(spec.model.parameter_count)
    runtime = RuntimeFacts(
        engine=str(engine),
        image=runtime_for(engine).image(config, gpu=accelerator is Hardware.GPU),
        accelerator=str(accelerator),
        parameters=parameters,
        operator_image=config.operator_image,
    )
    try:
        adapters = fetch_adapters(md, cache, env)
    except LocalServeError as error:
        raise BomUnavailableError(str(error)) from None
    when = timestamp or str(md.metadata.get("creationTimestamp") or "") or utc_now()
    provenance = provenance_from(md, resolution)
    return build_bom(md, resolution, runtime, provenance, adapters=adapters, timestamp=when)
