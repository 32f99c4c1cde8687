"""``modeldeploy policy check``: one line per violation, exit 0 / 3 / 2, JSON, inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from modeldeploy.cli import main
from modeldeploy.cli_common import EXIT_INVALID, EXIT_NONCOMPLIANT, EXIT_OK

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_POLICIES = ROOT / "examples" / "policies" / "production.yaml"
PINNED = ROOT / "examples" / "qwen-7b-gguf-pinned.yaml"
SHA1 = "0123456789abcdef0123456789abcdef01234567"


def model_deployment(namespace: str | None = "serving", **model: Any) -> dict[str, Any]:
    """A ModelDeployment object (owner annotated) with the given model fields."""
    metadata: dict[str, Any] = {"name": "demo", "annotations": {"modeldeploy.io/owner": "ml"}}
    if namespace:
        metadata["namespace"] = namespace
    model.setdefault("source", "hf://Qwen/Qwen2.5-7B-Instruct-GGUF")
    return {
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": metadata,
        "spec": {"model": model},
    }


def model_policy(name: str = "production", **spec: Any) -> dict[str, Any]:
    """A ModelPolicy object."""
    return {
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


def write(path: Path, *documents: Any) -> str:
    """Write ``documents`` as multi-document YAML; return the path."""
    path.write_text(yaml.safe_dump_all(documents))
    return str(path)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the CLI in-process; return the exit code, stdout and stderr."""
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


STRICT = model_policy(
    allowedSources=["hf://Qwen/*"],
    requireRevisionPin=True,
    requiredAnnotations=[{"key": "modeldeploy.io/owner"}],
)


def test_a_compliant_deployment_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    md = write(tmp_path / "md.yaml", model_deployment(revision=SHA1))
    policies = write(tmp_path / "p.yaml", STRICT)
    code, out, err = run(["policy", "check", "-f", md, "--policy", policies], capsys)
    assert (code, err) == (EXIT_OK, "")
    assert out == "compliant: checked by production\n"


def test_each_violation_is_one_line_and_the_exit_code_is_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    md = write(tmp_path / "md.yaml", model_deployment(source="hf://evil/model", revision="main"))
    policies = write(tmp_path / "p.yaml", STRICT)
    code, out, err = run(["policy", "check", "-f", md, "--policy", policies], capsys)
    assert (code, err) == (EXIT_NONCOMPLIANT, "")
    assert out.splitlines() == [
        "enforce: production: allowedSources: spec.model.source: hf://evil/model matches none "
        "of the allowed patterns; allowed: hf://Qwen/*",
        "enforce: production: requireRevisionPin: spec.model.revision: main is not a pin for a "
        "hf:// source (a branch or tag moves); allowed: a 40-character lowercase hex commit sha "
        "of the repository",
        "noncompliant: 2 violations of production (enforcement: enforce)",
    ]


def test_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    md = write(tmp_path / "md.yaml", model_deployment(source="hf://evil/model", revision=SHA1))
    policies = write(
        tmp_path / "p.yaml",
        model_policy("warned", enforcement="warn", allowedSources=["hf://Qwen/*"]),
        model_policy("licensed", allowedLicenses=["Apache-2.0"]),
    )
    code, out, _ = run(["policy", "check", "-f", md, "--policy", policies, "-o", "json"], capsys)
    assert code == EXIT_NONCOMPLIANT
    data = json.loads(out)
    assert data["compliant"] is False and data["enforcement"] == "warn"
    assert data["policies"] == ["licensed", "warned"]
    assert [(v["policy"], v["rule"], v["field"]) for v in data["violations"]] == [
        ("warned", "allowedSources", "spec.model.source")
    ]
    assert data["violations"][0]["allowed"] == "hf://Qwen/*"
    assert [(p["policy"], p["rule"]) for p in data["pending"]] == [("licensed", "allowedLicenses")]


def test_warn_and_audit_violations_also_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    md = write(tmp_path / "md.yaml", model_deployment(source="hf://evil/model"))
    audit = write(
        tmp_path / "p.yaml", model_policy(enforcement="audit", allowedSources=["s3://b/**"])
    )
    code, out, _ = run(["policy", "check", "-f", md, "--policy", audit], capsys)
    assert code == EXIT_NONCOMPLIANT
    assert out.startswith("audit: production: allowedSources: ")
    assert out.endswith("(enforcement: audit)\n")


@pytest.mark.parametrize(
    ("labels", "selected"),
    [
        ([], False),
        (["--namespace-labels", "env=prod"], True),
        (["--namespace-labels", "team=a,env=prod"], True),
        (["--namespace-labels", "team=a", "--namespace-labels", "env=prod"], True),
        (["--namespace-labels", "env=dev"], False),
    ],
)
def test_namespace_labels_select_policies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], labels: list[str], selected: bool
) -> None:
    md = write(tmp_path / "md.yaml", model_deployment(source="hf://evil/model"))
    prod = model_policy(
        namespaceSelector={"matchLabels": {"env": "prod"}}, allowedSources=["hf://Qwen/*"]
    )
    policies = write(tmp_path / "p.yaml", prod)
    code, out, _ = run(["policy", "check", "-f", md, "--policy", policies, *labels], capsys)
    assert code == (EXIT_NONCOMPLIANT if selected else EXIT_OK)
    if not selected:
        assert out == "compliant: no policy selects the namespace\n"


@pytest.mark.parametrize(
    ("namespace", "selected"), [("serving", True), ("other", False), (None, False)]
)
def test_the_namespace_name_label_comes_from_metadata_namespace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], namespace: str | None, selected: bool
) -> None:
    md = write(tmp_path / "md.yaml", model_deployment(namespace, source="hf://evil/model"))
    by_name = model_policy(
        namespaceSelector={"matchLabels": {"kubernetes.io/metadata.name": "serving"}},
        allowedSources=["hf://Qwen/*"],
    )
    policies = write(tmp_path / "p.yaml", by_name)
    code, _, _ = run(["policy", "check", "-f", md, "--policy", policies], capsys)
    assert code == (EXIT_NONCOMPLIANT if selected else EXIT_OK)


def test_the_status_artifact_of_the_file_resolves_pending_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    licensed = write(tmp_path / "p.yaml", model_policy(allowedLicenses=["Apache-2.0"]))
    fresh = model_deployment(revision=SHA1)
    code, out, _ = run(
        ["policy", "check", "-f", write(tmp_path / "a.yaml", fresh), "--policy", licensed], capsys
    )
    assert code == EXIT_OK
    assert out.splitlines()[0].startswith("pending: production: allowedLicenses: ")
    resolved = model_deployment(revision=SHA1)
    resolved["status"] = {
        "artifact": {"resolvedRevision": SHA1, "license": "cc-by-nc-4.0", "files": []}
    }
    code, out, _ = run(
        ["policy", "check", "-f", write(tmp_path / "b.yaml", resolved), "--policy", licensed],
        capsys,
    )
    assert code == EXIT_NONCOMPLIANT
    assert "status.artifact.license: license CC-BY-NC-4.0 is not allowed" in out
    assert "pending" not in out


def test_policies_from_several_files_and_a_kubectl_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    md = write(tmp_path / "md.yaml", model_deployment(source="hf://evil/model"))
    listed = write(
        tmp_path / "list.yaml",
        {"apiVersion": "v1", "kind": "List", "items": [model_policy("a", requireDigests=True)]},
    )
    single = write(tmp_path / "one.yaml", model_policy("b", allowedSources=["hf://Qwen/*"]))
    code, out, _ = run(
        ["policy", "check", "-f", md, "--policy", listed, "--policy", single], capsys
    )
    assert code == EXIT_NONCOMPLIANT
    assert [line.split(": ")[1:3] for line in out.splitlines()[:-1]] == [
        ["a", "requireDigests"],
        ["b", "allowedSources"],
    ]


def test_the_example_policies(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["policy", "check", "-f", str(PINNED), "--policy", str(EXAMPLE_POLICIES)]
    code, out, _ = run([*argv, "--namespace-labels", "env=prod"], capsys)
    assert code == EXIT_OK  # the license waits for the resolved artifact
    assert out.splitlines() == [
        "pending: production: allowedLicenses: metadata.annotations['modeldeploy.io/license']: "
        "the license is known once the operator has resolved the artifact",
        "compliant: checked by production",
    ]
    code, out, _ = run(argv, capsys)
    assert (code, out) == (EXIT_OK, "compliant: checked by everywhere-else\n")


# --- bad input: exit 2, one line on stderr, nothing on stdout --------------------------


@pytest.mark.parametrize(
    ("md", "policies", "extra", "fragment"),
    [
        (model_deployment(), None, [], "missing.yaml"),
        (
            {"kind": "ModelDeployment", "spec": {"model": {"source": "ftp://x/y"}}},
            [STRICT],
            [],
            "spec.model.source",
        ),
        (
            model_deployment(),
            [model_policy(enforcement="block")],
            [],
            "production: spec.enforcement",
        ),
        (
            model_deployment(),
            [model_policy(allowedSources=["Qwen/*"])],
            [],
            "spec.allowedSources[0]",
        ),
        (
            model_deployment(),
            [model_deployment()],
            [],
            "expected ModelPolicy objects, found ModelDeployment",
        ),
        (model_deployment(), [], [], "no ModelPolicy found"),
        (model_deployment(), [{**STRICT, "metadata": {}}], [], "needs metadata.name"),
        (model_deployment(), [STRICT, STRICT], [], "policies given more than once: production"),
        (model_deployment(), [STRICT], ["--namespace-labels", "env"], "'env' is not KEY=VALUE"),
        (model_deployment(), [STRICT], ["--namespace-labels", "=prod"], "is not KEY=VALUE"),
    ],
)
def test_bad_input_exits_2_with_one_line_on_stderr(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    *,
    md: dict[str, Any],
    policies: list[dict[str, Any]] | None,
    extra: list[str],
    fragment: str,
) -> None:
    md_path = write(tmp_path / "md.yaml", md)
    policy_path = (
        str(tmp_path / "missing.yaml")
        if policies is None
        else write(tmp_path / "p.yaml", *policies)
    )
    code, out, err = run(
        ["policy", "check", "-f", md_path, "--policy", policy_path, *extra], capsys
    )
    assert (code, out) == (EXIT_INVALID, "")
    assert err.startswith("modeldeploy policy check: error: ")
    assert fragment in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["policy"],
        ["policy", "check", "-f", "md.yaml"],
        ["policy", "check", "--policy", "p.yaml"],
        ["policy", "check", "-f", "md.yaml", "--policy", "p.yaml", "-o", "yaml"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == EXIT_INVALID
    assert "usage:" in capsys.readouterr().err


def test_the_installed_command_exits_3(tmp_path: Path) -> None:
    md = write(tmp_path / "md.yaml", model_deployment(source="hf://evil/model"))
    policies = write(tmp_path / "p.yaml", STRICT)
    result = subprocess.run(
        [sys.executable, "-m", "modeldeploy", "policy", "check", "-f", md, "--policy", policies],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == EXIT_NONCOMPLIANT, result.stderr
    assert "allowedSources" in result.stdout
