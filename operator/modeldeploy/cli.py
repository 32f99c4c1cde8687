"""The ``modeldeploy`` command line: one argparse parser, one function per subcommand.

This module owns the parser and ``plan``, ``estimate``, ``run``, ``gateway`` (wiring the
``gateway`` package's discovery, wake signal and server) and ``policy check``; ``serve``,
``serve-runtime`` (``serve/cli``), ``fetch`` (``fetch/cli``) and ``bom`` (``bom_cli``)
register their own parsers here. Exit codes, ``CliError``, ``-f`` files and logging are
shared (``cli_common``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import yaml

from modeldeploy import __version__
from modeldeploy.bom_cli import add_bom_parser
from modeldeploy.catalog import Engine
from modeldeploy.cli_common import (
    EXIT_FAILURE,
    EXIT_INVALID,
    EXIT_NONCOMPLIANT,
    EXIT_OK,
    CliError,
    fail,
    load_model_deployment,
    parse_model_deployment_file,
    read_yaml_documents,
)
from modeldeploy.fetch.cli import add_fetch_parser
from modeldeploy.serve.cli import add_serve_parsers

if TYPE_CHECKING:
    from modeldeploy.policy_api import ModelPolicy


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="modeldeploy",
        description="Turn a ModelDeployment into a working LLM endpoint.",
    )
    parser.add_argument("--version", action="version", version=f"modeldeploy {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_plan(commands)
    _add_estimate(commands)
    _add_run(commands)
    _add_gateway(commands)
    _add_policy(commands)
    add_serve_parsers(commands)
    add_fetch_parser(commands)
    add_bom_parser(commands)
    return parser


def _add_plan(commands: Any) -> None:
    plan = commands.add_parser(
        "plan",
        help="show the engine, hardware and objects a ModelDeployment would get",
        description=(
            "Plan a ModelDeployment against a set of nodes: print the decision (engine, "
            "hardware class, GPUs, memory estimate) and the objects the operator would "
            "apply. Exit 2 with one message on stderr if the spec is invalid or no node "
            "can serve it."
        ),
    )
    plan.add_argument("-f", "--filename", required=True, help="ModelDeployment YAML ('-': stdin)")
    nodes = plan.add_mutually_exclusive_group(required=True)
    nodes.add_argument(
        "--nodes", help="Node objects: `kubectl get nodes -o yaml` output or multi-document YAML"
    )
    nodes.add_argument(
        "--kubeconfig", help="list the nodes of this cluster (and its pods: free capacity)"
    )
    plan.add_argument("-o", "--output", choices=("json", "yaml"), help="print the full plan")
    plan.add_argument(
        "--alternatives",
        action="store_true",
        help="list every hardware class: whether it fits, what is short, free room, cost",
    )
    plan.add_argument(
        "--settings", type=Path, help="the operator's settings file (planning: prices, images)"
    )
    _add_artifact_options(plan)
    plan.set_defaults(handler=run_plan)


def _add_estimate(commands: Any) -> None:
    estimate = commands.add_parser(
        "estimate",
        help="estimate one replica's memory: weights + KV cache + overhead",
        description="Estimate the memory one replica needs, with the breakdown.",
    )
    estimate.add_argument("--parameters", help="parameter count such as 7B or 500M")
    estimate.add_argument("--quantization", help="e.g. Q4_K_M, F16, AWQ (default: from --gguf)")
    estimate.add_argument("--context", type=int, default=4096, help="tokens per sequence")
    estimate.add_argument("--parallel", type=int, default=1, help="concurrent sequences")
    estimate.add_argument("--engine", choices=[str(e) for e in Engine], help="default: from format")
    estimate.add_argument("--gpus", type=int, default=1, help="GPUs (tensor parallel size)")
    estimate.add_argument("-o", "--output", choices=("json", "yaml"), help="machine output")
    _add_artifact_options(estimate)
    estimate.set_defaults(handler=run_estimate)


def _add_artifact_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--gguf", help="read the architecture from this GGUF file's header")
    group.add_argument("--config-json", help="read the architecture from a HF config.json")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_INVALID
    handler = args.handler
    result: int = handler(args)
    return result


def load_nodes(path: str) -> list[dict[str, Any]]:
    """Node objects from a ``kind: List``/``NodeList`` or multi-document YAML file."""
    nodes: list[dict[str, Any]] = []
    for doc in read_yaml_documents(path):
        if not isinstance(doc, dict):
            raise CliError(f"{path}: expected Node objects, found {type(doc).__name__}")
        items = doc.get("items") if doc.get("kind") in ("List", "NodeList") else [doc]
        for item in items or []:
            if not isinstance(item, dict) or item.get("kind", "Node") != "Node":
                kind = item.get("kind") if isinstance(item, dict) else type(item).__name__
                raise CliError(f"{path}: expected Node objects, found {kind}")
            nodes.append(item)
    return nodes


def list_cluster_nodes(kubeconfig: str) -> list[dict[str, Any]]:
    """List the cluster's nodes with the kubernetes client, as plain dicts."""
    return _list_core(kubeconfig, "list_node")


def list_cluster_pods(kubeconfig: str) -> list[dict[str, Any]]:
    """List every pod of the cluster with the kubernetes client, as plain dicts."""
    return _list_core(kubeconfig, "list_pod_for_all_namespaces")


def _list_core(kubeconfig: str, method: str) -> list[dict[str, Any]]:
    from kubernetes import client
    from kubernetes import config as kube_config

    api_client = kube_config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call,unused-ignore]
    with api_client:
        items = getattr(client.CoreV1Api(api_client), method)().items
        found: list[dict[str, Any]] = api_client.sanitize_for_serialization(items)
    return found


def _artifact(args: argparse.Namespace) -> Any:
    from modeldeploy.fetch.gguf_header import load_hf_config, read_gguf_metadata

    try:
        if args.gguf:
            return read_gguf_metadata(args.gguf)
        if args.config_json:
            return load_hf_config(args.config_json)
    except (OSError, ValueError) as error:
        raise CliError(f"cannot read the model metadata: {error}") from None
    return None


def _emit(data: Any, output: str, stream: TextIO) -> None:
    if output == "json":
        stream.write(json.dumps(data, indent=2) + "\n")
    else:
        stream.write(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


def run_plan(args: argparse.Namespace) -> int:
    """``modeldeploy plan``: print the decision and objects, or refuse with exit 2."""
    from modeldeploy.api import parse_model_deployment
    from modeldeploy.plan import PlanError, plan

    try:
        document = load_model_deployment(args.filename)
        artifact = _artifact(args)
        config = _planning_settings(args.settings)
        usage: list[Any] = []
        if args.nodes:
            nodes = load_nodes(args.nodes)
        else:
            try:
                nodes = list_cluster_nodes(args.kubeconfig)
                usage = _usage(list_cluster_pods(args.kubeconfig))
            except Exception as error:  # any client failure is one message
                return fail("plan", f"cannot list nodes and pods: {error}", EXIT_FAILURE)
        md = parse_model_deployment(document)
        load = _load(nodes, usage)
        if args.alternatives:
            return _print_alternatives(md, nodes, config, artifact, load, output=args.output)
        result = plan(md, nodes, config, artifact=artifact, load=load)
    except CliError as error:
        return fail("plan", str(error))
    except PlanError as error:
        return fail("plan", str(error))
    if args.output:
        _emit(result.as_dict(), args.output, sys.stdout)
    else:
        sys.stdout.write(_summary(result.as_dict()))
    return EXIT_OK


def _planning_settings(path: Path | None) -> Any:
    """The planning settings of an operator settings file, or the defaults."""
    from modeldeploy.config import OperatorConfig
    from modeldeploy.settings import SettingsError, load_settings

    if path is None:
        return OperatorConfig()
    try:
        return load_settings(path, {}).planning
    except SettingsError as error:
        raise CliError(str(error)) from None


def _usage(pods: list[dict[str, Any]]) -> list[Any]:
    from modeldeploy.observed import pod_usage

    return [usage for usage in map(pod_usage, pods) if usage is not None]


def _load(nodes: list[dict[str, Any]], usage: list[Any]) -> Any:
    """What the nodes have free (all of it for a file of nodes: no pods are known)."""
    from modeldeploy.capacity import free_by_node
    from modeldeploy.nodes import parse_node
    from modeldeploy.placement import ClusterLoad

    return ClusterLoad(free=free_by_node([parse_node(n) for n in nodes], usage))


def _print_alternatives(
    md: Any, nodes: list[dict[str, Any]], config: Any, artifact: Any, load: Any, *, output: Any
) -> int:
    """``plan --alternatives``: the table (or JSON/YAML) of every class; exit 2 if none fits."""
    from modeldeploy.alternatives import plan_alternatives

    rows = plan_alternatives(md.spec, nodes, config, artifact, load)
    if output:
        _emit({"alternatives": rows}, output, sys.stdout)
    else:
        sys.stdout.write(_alternatives_table(rows))
    return EXIT_OK if any(row["chosen"] for row in rows) else EXIT_INVALID


def _alternatives_table(rows: list[dict[str, Any]]) -> str:
    from modeldeploy.pricing import money

    header = ("", "CLASS", "NODES", "FREE GPU/CPU/MEMORY", "COST/REPLICA", "FITS")
    lines = [header]
    for row in rows:
        free = row["free"]
        room = f"{free['gpus']}/{free['cpuMillis'] // 1000}/{free['memoryBytes'] // 1024**3}Gi"
        cost = row["costPerReplicaPerHour"]
        fits = "yes" if row["fits"] else f"no: {row['short']}"
        lines.append(
            (
                "*" if row["chosen"] else "",
                row["hardwareClass"],
                str(row["nodes"]),
                room,
                money(cost) if cost is not None else "-",
                fits,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    text = ""
    for line in lines:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        text += "  ".join([*cells, line[-1]]).rstrip() + "\n"
    return text + "* the class the planner chooses\n"


def _gib(value: int) -> str:
    return f"{value / 1024**3:.1f} GiB"


def _parameters(count: int) -> str:
    return f"{count / 1e9:.1f}B" if count >= 1e9 else f"{count / 1e6:.0f}M"


def _summary(plan: dict[str, Any]) -> str:
    decision = plan["decision"]
    memory = decision["memory"]
    deployment = next(o for o in plan["objects"] if o["kind"] == "Deployment")
    lines = [
        f"{deployment['metadata']['name']}: {decision['engine']} on {decision['accelerator']}"
        f" ({decision['hardwareClass']}, {decision['nodeCount']} node"
        f"{'s' if decision['nodeCount'] != 1 else ''})",
        f"  model     {decision['format']} {decision['quantization']}, "
        f"{_parameters(decision['parameters'])} parameters",
        f"  memory    {_gib(decision['estimatedMemoryBytes'])} per replica (weights "
        f"{_gib(memory['weightsBytes'])} + KV cache {_gib(memory['kvCacheBytes'])} + overhead "
        f"{_gib(memory['overheadBytes'])})",
    ]
    if decision["gpusPerReplica"]:
        lines.append(
            f"  gpus      {decision['gpusPerReplica']} per replica, tensor parallel size "
            f"{decision['tensorParallelSize']}"
        )
    engine = f"  serving   context {decision['contextLength']} x {decision['parallel']} parallel"
    if "threads" in decision:
        engine += f", {decision['threads']} threads"
    if "gpuLayers" in decision:
        engine += f", {decision['gpuLayers']} GPU layers"
    lines.append(engine)
    if "costPerHour" in decision:
        from modeldeploy.pricing import money

        lines.append(
            f"  cost      {money(decision['costPerReplicaPerHour'])} per replica, "
            f"{money(decision['costPerHour'])} in all"
        )
    lines.append(f"  reason    {decision['reason']}")
    objects = ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in plan["objects"])
    lines.append(f"  objects   {objects}")
    lines.append("  (-o yaml or -o json prints the full plan)")
    return "\n".join(lines) + "\n"


def run_estimate(args: argparse.Namespace) -> int:
    """``modeldeploy estimate``: print one replica's memory breakdown."""
    from modeldeploy.api import parse_parameter_count
    from modeldeploy.catalog import ENGINES_FOR_FORMAT, Format, quantization_info
    from modeldeploy.runtimes import runtime_for
    from modeldeploy.sizing import GIB, estimate_memory

    try:
        artifact = _artifact(args)
        quantization = args.quantization or (artifact.quantization if artifact else None)
        if quantization is None:
            raise CliError("--quantization is required (the artifact does not name one)")
        try:
            info = quantization_info(quantization)
        except KeyError as error:
            raise CliError(str(error.args[0])) from None
        parameters = None
        if args.parameters:
            try:
                parameters = round(parse_parameter_count(args.parameters))
            except ValueError as error:
                raise CliError(f"--parameters: {error}") from None
        if parameters is None and (artifact is None or artifact.parameters is None):
            raise CliError("--parameters is required (e.g. 7B) without --gguf or --config-json")
        # F16/BF16/F32 exist in both formats: a GGUF file decides, else safetensors.
        fmt = Format.GGUF if info.is_gguf_only or args.gguf else Format.SAFETENSORS
        runtime = runtime_for(args.engine or ENGINES_FOR_FORMAT[fmt][0])
        if args.context < 1 or args.parallel < 1 or args.gpus < 1:
            raise CliError("--context, --parallel and --gpus must be at least 1")
        estimate = estimate_memory(
            quantization=info.name,
            rules=runtime.sizing,
            context_length=args.context,
            parallel=args.parallel,
            parameters=parameters,
            architecture=artifact,
            devices=args.gpus,
            tensor_parallel_size=runtime.tensor_parallel_size(args.gpus),
        )
    except CliError as error:
        return fail("estimate", str(error))
    data = estimate.as_dict()
    if args.output:
        _emit(data, args.output, sys.stdout)
        return EXIT_OK
    per_device = f"{runtime.sizing.overhead_per_device / GIB:g} GiB per device"
    lines = [
        f"parameters    {_parameters(estimate.parameters)}",
        f"quantization  {estimate.quantization} ({estimate.bits_per_weight:g} bits per weight)",
        f"weights       {_gib(estimate.weights_bytes)} (from {estimate.weights_source})",
        f"kv cache      {_gib(estimate.kv_cache_bytes)} ({estimate.kv_bytes_per_token} bytes"
        f"/token x {estimate.kv_tokens} tokens for {estimate.parallel} x "
        f"{estimate.context_length}, {estimate.kv_source})",
        f"overhead      {_gib(estimate.overhead_bytes)} "
        f"({runtime.engine}: {per_device} + 5% of weights)",
        f"total         {_gib(estimate.total_bytes)} ({estimate.total_bytes} bytes)",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    return EXIT_OK


def _add_run(commands: Any) -> None:
    run = commands.add_parser(
        "run",
        help="run the operator (also: python -m modeldeploy run)",
        description=(
            "Run the ModelDeployment operator against the cluster of the in-cluster "
            "service account or the kubeconfig. Flags override the settings file."
        ),
    )
    run.add_argument("--config", type=Path, help="operator settings YAML (see docs/operator.md)")
    run.add_argument(
        "-n", "--namespace", action="append", dest="namespaces", help="serve only these"
    )
    run.add_argument("--resync-seconds", type=float, help="period of the drift check")
    run.add_argument(
        "--autoscale-interval-seconds", type=float, help="period of the native autoscaler"
    )
    peering = run.add_mutually_exclusive_group()
    peering.add_argument(
        "--leader-elect",
        action="store_true",
        help="act only while holding the leader Lease; stand by otherwise (replicas)",
    )
    peering.add_argument("--peering", help="Kopf peering name (pause while another runs)")
    peering.add_argument(
        "--standalone", action="store_true", help="no peering, no leader election (default)"
    )
    run.add_argument("--lease-name", help="name of the leader Lease")
    run.add_argument("--lease-namespace", help="its namespace (default: the pod's)")
    run.add_argument("--lease-duration-seconds", type=int, help="how long standbys wait")
    run.add_argument(
        "--renew-deadline-seconds", type=float, help="how long the leader acts unrenewed"
    )
    run.add_argument("--retry-period-seconds", type=float, help="period of reads and renewals")
    run.add_argument("--metrics-port", type=int, help="Prometheus port (0: off)")
    run.add_argument("--health-port", type=int, help="liveness /healthz port (0: off)")
    run.add_argument("--bind-address", help="address of the metrics and health ports")
    run.add_argument("--log-format", choices=("plain", "json"))
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    run.set_defaults(handler=run_operator_command)


def run_operator_command(args: argparse.Namespace) -> int:
    """``modeldeploy run``: validate the settings, then run Kopf until stopped."""
    import asyncio
    import gc
    from dataclasses import replace

    # kubernetes.client imports kubernetes.dynamic, which imports kubernetes_validate when
    # it is installed (the test extra is): jsonschema and a lark grammar, 21 MiB of RSS for
    # a client the operator never uses. httpx imports its command line client, which pulls
    # in rich, pygments and click when installed (rich is, for sigstore): 4 MiB. Marked
    # missing, each import falls back as its package designed (an ImportError it catches).
    sys.modules.setdefault("kubernetes_validate", None)  # type: ignore[arg-type]
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    import kopf

    from modeldeploy.handlers import run_operator
    from modeldeploy.settings import SettingsError, load_settings, source_settings

    overrides = {
        "namespaces": args.namespaces,
        "resyncSeconds": args.resync_seconds,
        "autoscaleIntervalSeconds": args.autoscale_interval_seconds,
        "metricsPort": args.metrics_port,
        "healthPort": args.health_port,
        "bindAddress": args.bind_address,
        "logFormat": args.log_format,
        "leaderElection": {
            "leaseName": args.lease_name,
            "namespace": args.lease_namespace,
            "leaseDurationSeconds": args.lease_duration_seconds,
            "renewDeadlineSeconds": args.renew_deadline_seconds,
            "retryPeriodSeconds": args.retry_period_seconds,
        },
    }
    try:
        settings = load_settings(args.config, overrides)
    except SettingsError as error:
        return fail("run", str(error))
    if not settings.planning.source_settings:
        settings = settings.model_copy(
            update={"planning": replace(settings.planning, source_settings=source_settings())}
        )
    # The coordination flags exclude each other, and each turns the other two off.
    election = settings.leader_election
    if args.peering:
        election = election.model_copy(update={"enabled": False})
        settings = settings.model_copy(update={"peering": args.peering})
    elif args.standalone:
        election = election.model_copy(update={"enabled": False})
        settings = settings.model_copy(update={"peering": None})
    elif args.leader_elect:
        election = election.model_copy(update={"enabled": True})
        settings = settings.model_copy(update={"peering": None})
    settings = settings.model_copy(update={"leader_election": election})
    log_format = kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.PLAIN
    kopf.configure(verbose=args.verbose, log_format=log_format)
    # What start-up made lives as long as the process. CPython runs a full collection only
    # once the objects that survived younger ones exceed a quarter of the long-lived ones;
    # frozen (gc.freeze), start-up's objects no longer count, so the passes' cycles are
    # freed sooner (0.5 MiB of peak RSS at N=200, docs/operator.md "Measured").
    gc.freeze()
    asyncio.run(run_operator(settings))
    return EXIT_OK


def _add_gateway(commands: Any) -> None:
    gateway = commands.add_parser(
        "gateway",
        help="serve one OpenAI endpoint in front of every ModelDeployment",
        description=(
            "Route each OpenAI request by its model to a Ready pod of the ModelDeployment "
            "serving that name, discovered by watching ModelDeployments, their pods and the "
            "API-key Secrets; hold requests for a model at zero replicas and signal its "
            "demand Lease. Serves until SIGTERM."
        ),
    )
    gateway.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    gateway.add_argument("--port", type=int, default=8080, help="port to serve on (default 8080)")
    gateway.add_argument("--namespace", help="route to this namespace only (default: all)")
    gateway.add_argument(
        "--keys-namespace",
        help="read the API-key Secrets in this namespace only (default: as --namespace)",
    )
    gateway.add_argument("--kubeconfig", help="default: in-cluster, else $KUBECONFIG")
    gateway.add_argument(
        "--require-api-keys",
        action="store_true",
        help="refuse requests without a key even while no key Secret exists",
    )
    gateway.add_argument(
        "--hold-seconds", type=float, default=300.0, help="how long a request waits for a pod"
    )
    gateway.add_argument(
        "--max-held", type=int, default=64, help="requests held per model at most (default 64)"
    )
    gateway.set_defaults(handler=run_gateway_command)


def run_gateway_command(args: argparse.Namespace) -> int:
    """``modeldeploy gateway``: discover targets and keys, serve until SIGTERM."""
    import asyncio
    import contextlib
    import logging
    import os
    import signal
    import socket

    from kubernetes import config as kube_config

    from modeldeploy.cli_common import setup_logging
    from modeldeploy.clients import api_client, user_agent
    from modeldeploy.gateway.discovery import Discovery
    from modeldeploy.gateway.keys import KeyRing
    from modeldeploy.gateway.routing import RoutingTable
    from modeldeploy.gateway.server import Gateway, GatewaySettings
    from modeldeploy.gateway.wake import LeaseWaker

    if args.hold_seconds <= 0 or args.max_held < 1:
        return fail("gateway", "--hold-seconds must be above 0 and --max-held at least 1")
    setup_logging()
    identity = os.environ.get("POD_NAME") or socket.gethostname()
    try:
        if args.kubeconfig:
            api = kube_config.new_client_from_config(config_file=args.kubeconfig)  # type: ignore[no-untyped-call,unused-ignore]
        else:
            api = api_client()
    except (kube_config.ConfigException, OSError) as error:
        return fail("gateway", f"cannot reach a cluster: {error}", EXIT_FAILURE)
    api.user_agent = user_agent(f"gateway {identity}")
    table, keys = RoutingTable(), KeyRing(required=args.require_api_keys)
    discovery = Discovery(
        api, table, keys, namespace=args.namespace, keys_namespace=args.keys_namespace
    ).start()
    if not discovery.wait_ready(30):
        log = logging.getLogger("modeldeploy.gateway")
        log.warning("discovery has not listed everything within 30 s; serving what it has")
    waker = LeaseWaker(api, identity)
    settings = GatewaySettings(hold_seconds=args.hold_seconds, max_held_per_model=args.max_held)
    gateway = Gateway(table, keys, settings, wake=waker)

    async def serve() -> None:
        serving = asyncio.ensure_future(gateway.serve(args.host, args.port))
        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signum, serving.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await serving

    try:
        asyncio.run(serve())
    except OSError as error:  # the address is taken, or not ours
        return fail("gateway", f"cannot serve on {args.host}:{args.port}: {error}", EXIT_FAILURE)
    finally:
        waker.close()
        discovery.stop()
    return EXIT_OK


def _add_policy(commands: Any) -> None:
    policy = commands.add_parser(
        "policy",
        help="check a ModelDeployment against ModelPolicies (docs/compliance.md)",
        description="Judge ModelDeployments by ModelPolicies without a cluster.",
    )
    actions = policy.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check",
        help="print every violation; exit 3 when there is one",
        description=(
            "Evaluate a ModelDeployment against ModelPolicies as the operator does: every "
            "policy whose namespaceSelector selects the namespace applies. Prints one line "
            "per violation (enforcement, policy, rule, field, what is allowed) and per "
            "pending rule (one that needs the resolved artifact: status.artifact, when the "
            "file has one, provides it). Exit 0 when the ModelDeployment complies, 3 when "
            "it does not, 2 for bad input."
        ),
    )
    check.add_argument("-f", "--filename", required=True, help="ModelDeployment YAML ('-': stdin)")
    check.add_argument(
        "--policy",
        action="append",
        required=True,
        dest="policies",
        metavar="FILE",
        help="ModelPolicy YAML (several documents, or `kubectl get mpol -o yaml`); repeatable",
    )
    check.add_argument(
        "--namespace-labels",
        action="append",
        default=[],
        metavar="K=V,...",
        help="the namespace's labels (kubernetes.io/metadata.name comes from metadata.namespace)",
    )
    check.add_argument("-o", "--output", choices=("json",), help="print the evaluation as JSON")
    check.set_defaults(handler=run_policy_check)


def load_model_policies(path: str) -> list[ModelPolicy]:
    """The validated ModelPolicies of a YAML file (documents, or a ``kind: List``)."""
    from modeldeploy.api import SpecError
    from modeldeploy.policy_api import parse_model_policy

    policies: list[ModelPolicy] = []
    for doc in read_yaml_documents(path):
        is_list = isinstance(doc, dict) and doc.get("kind") in ("List", "ModelPolicyList")
        items = doc.get("items") if is_list else [doc]
        for item in items or []:
            found = item.get("kind") if isinstance(item, dict) else type(item).__name__
            if found != "ModelPolicy":
                raise CliError(f"{path}: expected ModelPolicy objects, found {found}")
            try:
                policy = parse_model_policy(item)
            except SpecError as error:
                metadata = item.get("metadata")
                name = metadata.get("name") if isinstance(metadata, dict) else None
                raise CliError(f"{path}: {name or 'ModelPolicy'}: {error}") from None
            if not policy.name:
                raise CliError(f"{path}: a ModelPolicy needs metadata.name")
            policies.append(policy)
    if not policies:
        raise CliError(f"{path}: no ModelPolicy found")
    return policies


def parse_labels(texts: Sequence[str]) -> dict[str, str]:
    """``k=v,k2=v2`` (possibly several times) as a mapping; a CliError for anything else."""
    labels: dict[str, str] = {}
    for text in texts:
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise CliError(f"--namespace-labels: {item!r} is not KEY=VALUE")
            labels[key.strip()] = value.strip()
    return labels


def run_policy_check(args: argparse.Namespace) -> int:
    """``modeldeploy policy check``: one line per violation; exit 0, 3 (noncompliant) or 2."""
    from modeldeploy.compliance import ResolvedFacts, evaluate

    try:
        md = parse_model_deployment_file(args.filename)
        policies = [policy for path in args.policies for policy in load_model_policies(path)]
        labels = parse_labels(args.namespace_labels)
    except CliError as error:
        return fail("policy check", str(error))
    names = [policy.name for policy in policies]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        return fail("policy check", f"policies given more than once: {', '.join(twice)}")
    if md.namespace:
        labels.setdefault("kubernetes.io/metadata.name", md.namespace)
    result = evaluate(policies, labels, md, ResolvedFacts.from_status(md.status))
    if args.output == "json":
        sys.stdout.write(json.dumps(result.as_dict(), indent=2) + "\n")
    else:
        lines = [
            f"{v.enforcement}: {v.policy}: {v.rule}: {v.field}: {v.message}; allowed: {v.allowed}"
            for v in result.violations
        ]
        lines += [f"pending: {p.policy}: {p.rule}: {p.field}: {p.reason}" for p in result.pending]
        if not result.policies:
            lines.append("compliant: no policy selects the namespace")
        elif result.compliant:
            lines.append(f"compliant: checked by {', '.join(result.policies)}")
        else:
            violated = sorted({v.policy for v in result.violations})
            count = len(result.violations)
            lines.append(
                f"noncompliant: {count} violation{'s' if count != 1 else ''} of "
                f"{', '.join(violated)} (enforcement: {result.enforcement})"
            )
        sys.stdout.write("\n".join(lines) + "\n")
    return EXIT_OK if result.compliant else EXIT_NONCOMPLIANT
