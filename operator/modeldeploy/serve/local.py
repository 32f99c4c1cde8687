"""``modeldeploy serve -f model.yaml``: serve a ModelDeployment's model on this machine.

The same path a pod takes, run here: the spec is validated, planned against this machine
(``machine.local_node``) and refused if it cannot run here; the fetcher brings the artifact
and its LoRA adapters (each checked against the base, ``adapters.adapter_problems``) into a
local cache; the planner runs again with the real architecture; the renderer
produces the container the operator would deploy, and its command runs through the same
launcher (``launcher.serve_runtime``) with the cache, the model path and the bind address
of this machine. When ``/health`` answers, the OpenAI base URL is printed on stdout (one
line, for scripts); everything else goes to stderr. Ctrl-C drains and stops.

A spec with ``spec.model.signature`` is verified as the pod would verify it, against the
trusted key or chain given here (``--public-key``/``--certificate-chain``: the Secret or
ConfigMap the spec names lives in a cluster).
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modeldeploy.adapters import ResolvedAdapter, adapter_bytes, adapter_problems
from modeldeploy.api import ModelDeployment
from modeldeploy.catalog import ENGINES_FOR_FORMAT, Format
from modeldeploy.config import OperatorConfig
from modeldeploy.decision import Placement, PlacementRefusal
from modeldeploy.fetch.gguf_header import load_hf_config
from modeldeploy.paths import cache_root
from modeldeploy.placement import plan_placement
from modeldeploy.render import RenderInputs, render_container
from modeldeploy.resolution import ArtifactFile, Resolution
from modeldeploy.runtimes import POD_IP_ENV, runtime_for
from modeldeploy.serve.launcher import Launch, LaunchError, engine_binary, serve_runtime
from modeldeploy.serve.machine import local_node
from modeldeploy.serve.model import read_gguf_info
from modeldeploy.sizing import ModelArchitecture

if TYPE_CHECKING:
    from modeldeploy.fetch.signature import TrustAnchor

log = logging.getLogger(__name__)

# Pod-only settings the local process does not take from the rendered container.
_POD_ONLY_ENV = {"HOME"}


class LocalServeError(Exception):
    """This machine cannot serve the spec, or a step before serving failed."""


@dataclass(frozen=True)
class Prepared:
    """Everything needed to start the engine here."""

    placement: Placement
    engine: str
    args: list[str]
    env: dict[str, str]
    model_path: Path


def default_cache() -> Path:
    """The local model cache: ``models`` in ``paths.cache_root()`` (~/.cache/modeldeploy)."""
    return cache_root() / "models"


def _plan_here(
    md: ModelDeployment,
    node: dict[str, Any],
    config: OperatorConfig,
    artifact: ModelArchitecture | None,
    adapter_bytes: int = 0,
) -> Placement | None:
    """Plan on this machine; None when the size is only known from the artifact."""
    try:
        return plan_placement(md.spec, [node], config, artifact, adapter_bytes=adapter_bytes)
    except PlacementRefusal as refusal:
        if artifact is None and refusal.field_path == "spec.model.parameters":
            return None
        raise LocalServeError(f"this machine cannot serve {md.name}: {refusal}") from None


def _artifact(placement_format: str, path: Path) -> ModelArchitecture | None:
    if placement_format == "gguf":
        return read_gguf_info(path).architecture
    config_json = path / "config.json"
    return load_hf_config(config_json) if config_json.exists() else None


def prepare(
    md: ModelDeployment,
    *,
    cache: Path,
    host: str,
    port: int,
    env: dict[str, str],
    node: dict[str, Any] | None = None,
    trust: TrustAnchor | None = None,
) -> Prepared:
    """Plan here, check the engine exists, fetch (verifying a signature), re-plan, render."""
    from modeldeploy.fetch import FetchError, FetchRequest, fetch

    signature = md.spec.model.signature
    if signature is not None and trust is None:
        flag = "--public-key" if signature.public_key is not None else "--certificate-chain"
        raise LocalServeError(
            f"spec.model.signature is set: pass the trusted key with {flag} PEM "
            "(the Secret or ConfigMap it names is read only in a cluster)"
        )
    if signature is None and trust is not None:
        raise LocalServeError("--public-key/--certificate-chain need spec.model.signature")

    config = OperatorConfig(port=port)
    node = node or local_node()
    first = _plan_here(md, node, config, None)
    if first is not None:
        try:
            engine_binary(str(first.engine), env)
        except LaunchError as error:
            raise LocalServeError(str(error)) from None
    try:
        result = fetch(FetchRequest.from_model(md.spec.model), cache, env=env, trust=trust)
    except FetchError as error:
        raise LocalServeError(f"fetch failed: {error}") from None
    names = [f.name for f in result.files]
    if first is not None:
        fmt = str(first.format)
    else:
        fmt = "gguf" if any(n.lower().endswith(".gguf") for n in names) else "safetensors"
    runtime = runtime_for(first.engine if first else ENGINES_FOR_FORMAT[Format(fmt)][0])
    served_file = runtime.model_file(names)
    model_path = result.path / served_file if served_file else result.path
    architecture = _artifact(fmt, model_path)
    adapters = fetch_adapters(md, cache, env)
    base = Resolution(
        md.spec.model.source, result.revision, fmt, None, (), architecture=architecture
    )
    problems = adapter_problems(base, adapters)
    if problems:
        raise LocalServeError("; ".join(problems))
    placement = _plan_here(md, node, config, architecture, adapter_bytes(adapters))
    assert placement is not None
    engine = str(placement.engine)
    try:
        engine_binary(engine, env)
    except LaunchError as error:
        raise LocalServeError(str(error)) from None
    container = render_container(RenderInputs(md, placement, config))
    user_env = {variable.name for variable in md.spec.serving.env}
    run_env = dict(env)
    for variable in container["env"]:
        name = variable["name"]
        if "value" in variable and (name not in _POD_ONLY_ENV or name in user_env):
            run_env[name] = variable["value"]
    run_env.update(
        {
            "MODELDEPLOY_CACHE_DIR": str(cache),
            "MODELDEPLOY_MODEL_PATH": str(model_path),
            POD_IP_ENV: host,
        }
    )
    return Prepared(placement, engine, list(container["args"]), run_env, model_path)


def fetch_adapters(md: ModelDeployment, cache: Path, env: dict[str, str]) -> list[ResolvedAdapter]:
    """Fetch and verify each of ``spec.adapters`` into the cache, reading what each says."""
    from modeldeploy.fetch import FetchError, FetchRequest, fetch
    from modeldeploy.fetch.adapter_files import read_adapter_facts

    adapters = []
    for adapter in md.spec.adapters:
        try:
            done = fetch(FetchRequest.from_adapter(adapter), cache, env=env)
        except FetchError as error:
            raise LocalServeError(f"fetch of adapter {adapter.name} failed: {error}") from None
        files = tuple(ArtifactFile(f.name, f.size, f.sha256) for f in done.files)
        fmt = "gguf" if any(f.name.lower().endswith(".gguf") for f in files) else "peft"

        def read(file: ArtifactFile, offset: int, length: int, root: Path = done.path) -> bytes:
            with (root / file.name).open("rb") as handle:
                handle.seek(offset)
                return handle.read(length)

        try:
            facts = read_adapter_facts(read, fmt, files)
        except (OSError, FetchError) as error:
            raise LocalServeError(f"adapter {adapter.name}: {error}") from None
        resolution = Resolution(adapter.source, done.revision, fmt, None, files, adapter=facts)
        adapters.append(ResolvedAdapter(adapter.name, adapter.scale, resolution))
    return adapters


def serve_local(
    md: ModelDeployment, *, cache: Path, host: str, port: int, trust: TrustAnchor | None = None
) -> int:
    """Fetch, plan and serve ``md`` here until interrupted; return the exit status."""
    prepared = prepare(md, cache=cache, host=host, port=port, env=dict(os.environ), trust=trust)
    decision = prepared.placement.decision()
    log.info(
        "%s: %s %s on %s (%s); %s",
        md.name,
        decision["engine"],
        decision["quantization"],
        decision["hardwareClass"],
        prepared.model_path,
        decision["reason"],
    )

    def ready(launch: Launch) -> None:
        base = launch.public.url("/v1")
        body = (
            '{"model": "' + md.served_name + '", "messages": '
            '[{"role": "user", "content": "Hello"}]}'
        )
        print(base, flush=True)
        print(
            f"modeldeploy serve: {md.served_name} is ready at {base} (OpenAI-compatible)\n"
            f"  try: curl {base}/chat/completions -H 'Content-Type: application/json' "
            f"-d {shlex.quote(body)}\n"
            "  Ctrl-C stops it; requests in flight finish first",
            file=sys.stderr,
            flush=True,
        )

    return serve_runtime(prepared.engine, prepared.args, prepared.env, on_ready=ready)
