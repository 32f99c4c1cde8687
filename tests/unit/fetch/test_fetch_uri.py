"""Source URI parsing, scheme by scheme."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modeldeploy.fetch.uri import SourceURIError, parse_source


@pytest.mark.parametrize(
    ("text", "authority", "path", "reference", "canonical"),
    [
        ("hf://org/repo", "org/repo", "", None, "hf://org/repo"),
        ("hf://org/repo@v1.0", "org/repo", "", "v1.0", "hf://org/repo"),
        ("hf://org/repo@abc123/sub/dir", "org/repo", "sub/dir", "abc123", "hf://org/repo/sub/dir"),
        ("s3://bucket/models/qwen", "bucket", "models/qwen", None, "s3://bucket/models/qwen"),
        ("gs://bucket/m.gguf", "bucket", "m.gguf", None, "gs://bucket/m.gguf"),
        (
            "oci://reg.io:5000/ml/qwen:q4",
            "reg.io:5000",
            "ml/qwen",
            "q4",
            "oci://reg.io:5000/ml/qwen",
        ),
        (
            "oci://reg.io/ml/qwen@sha256:" + "a" * 64,
            "reg.io",
            "ml/qwen",
            "sha256:" + "a" * 64,
            "oci://reg.io/ml/qwen",
        ),
        ("oci://localhost:5000/qwen", "localhost:5000", "qwen", None, "oci://localhost:5000/qwen"),
        ("pvc://models/qwen/7b", "models", "qwen/7b", None, "pvc://models/qwen/7b"),
        ("https://host/a/m.gguf", "host", "/a/m.gguf", None, "https://host/a/m.gguf"),
    ],
)
def test_sources_parse_into_their_parts(
    text: str, authority: str, path: str, reference: str | None, canonical: str
) -> None:
    uri = parse_source(text)
    assert (uri.authority, uri.path, uri.reference, uri.canonical) == (
        authority,
        path,
        reference,
        canonical,
    )


@pytest.mark.parametrize(
    "text",
    [
        "ftp://host/x",
        "hf://org",
        "hf://org/repo@",
        "s3://B/upper",
        "oci://reg.io/ml/qwen@md5:zz",
        "oci://reg.io",
        "pvc://claim/../etc",
        "https://user:pass@host/m.gguf",
    ],
)
def test_malformed_sources_are_refused(text: str) -> None:
    with pytest.raises(SourceURIError):
        parse_source(text)


@given(
    st.from_regex(r"[a-z][a-z0-9-]{1,20}", fullmatch=True),
    st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True),
)
def test_the_hf_revision_is_never_part_of_the_cache_identity(repo: str, revision: str) -> None:
    assert parse_source(f"hf://org/{repo}@{revision}").canonical == f"hf://org/{repo}"
