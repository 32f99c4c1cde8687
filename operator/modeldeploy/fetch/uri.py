"""Parsing of model source URIs into their parts, one rule per scheme.

Accepted forms::

    hf://ORG/REPO[@REVISION][/SUBPATH]     a Hugging Face Hub model repository
    s3://BUCKET/PREFIX                     objects under a key prefix (or one key)
    gs://BUCKET/PREFIX                     the same on Google Cloud Storage
    https://HOST/PATH                      one file, or a directory URL ending in "/" with files
    oci://REGISTRY/REPOSITORY(:TAG|@DIGEST) an ORAS-style artifact in an OCI registry
    pvc://CLAIM/PATH                       files on a PersistentVolumeClaim mounted into the pod

The revision is never part of the cache identity (``canonical``): it names a directory below it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from modeldeploy.fetch.errors import FetchError

SCHEMES = ("hf", "s3", "gs", "https", "oci", "pvc")
_HF_PART = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.]*$")
_OCI_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-fA-F0-9]{32,}$")
_OCI_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class SourceURIError(FetchError):
    """A source URI that does not follow its scheme's form."""

    exit_code = 2
    reason = "InvalidSource"


@dataclass(frozen=True)
class SourceURI:
    """A parsed source: ``authority`` and ``path`` mean what the scheme makes them mean.

    hf: authority ``ORG/REPO``, path the subpath in the repo, reference the revision.
    s3/gs: authority the bucket, path the key prefix. oci: authority the registry host,
    path the repository, reference the tag or digest. pvc: authority the claim, path the
    path inside it. https: authority the host, path the URL path, ``url`` the whole URL.
    """

    scheme: str
    authority: str
    path: str
    reference: str | None
    url: str

    @property
    def canonical(self) -> str:
        """The source without its revision, tag or digest: the cache identity."""
        if self.scheme == "https":
            return self.url
        if self.scheme == "oci":
            return f"oci://{self.authority}/{self.path}"
        tail = f"/{self.path}" if self.path else ""
        return f"{self.scheme}://{self.authority}{tail}"

    @property
    def is_oci_digest(self) -> bool:
        """True when an oci:// reference is a digest (immutable) rather than a tag."""
        return self.reference is not None and _OCI_DIGEST.match(self.reference) is not None


def parse_source(text: str) -> SourceURI:
    """Parse a source URI or raise SourceURIError saying what form was expected."""
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in SCHEMES:
        raise SourceURIError(
            f"{text!r} is not a source URI; use one of " + ", ".join(f"{s}://" for s in SCHEMES)
        )
    if not rest:
        raise SourceURIError(f"{text!r}: nothing after {scheme}://")
    parser = {
        "hf": _parse_hf,
        "s3": _parse_bucket,
        "gs": _parse_bucket,
        "https": _parse_https,
        "oci": _parse_oci,
        "pvc": _parse_pvc,
    }[scheme]
    return parser(text, scheme, rest)


def _parse_hf(text: str, scheme: str, rest: str) -> SourceURI:
    parts = rest.split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise SourceURIError(f"{text!r}: an hf:// source is hf://ORG/REPO[@REVISION][/PATH]")
    org, repo = parts[0], parts[1]
    revision: str | None = None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
        if not revision:
            raise SourceURIError(f"{text!r}: empty revision after '@'")
    if not _HF_PART.match(org) or not _HF_PART.match(repo):
        raise SourceURIError(f"{text!r}: {org}/{repo} is not a Hub repository id")
    subpath = "/".join(p for p in parts[2:] if p)
    return SourceURI(scheme, f"{org}/{repo}", subpath, revision, text)


def _parse_bucket(text: str, scheme: str, rest: str) -> SourceURI:
    bucket, _, prefix = rest.partition("/")
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,221}[a-z0-9]", bucket):
        raise SourceURIError(f"{text!r}: {bucket!r} is not a bucket name")
    return SourceURI(scheme, bucket, prefix, None, text)


def _parse_https(text: str, scheme: str, rest: str) -> SourceURI:
    parts = urlsplit(text)
    if not parts.hostname:
        raise SourceURIError(f"{text!r}: an https:// source needs a host")
    if parts.username or parts.password:
        raise SourceURIError(
            "an https:// source must not carry credentials in the URL; use a Secret"
        )
    return SourceURI(scheme, parts.netloc, parts.path or "/", None, text)


def _parse_oci(text: str, scheme: str, rest: str) -> SourceURI:
    registry, _, remainder = rest.partition("/")
    if not registry or not remainder:
        raise SourceURIError(
            f"{text!r}: an oci:// source is oci://REGISTRY/REPOSITORY(:TAG|@sha256:DIGEST)"
        )
    reference: str | None
    if "@" in remainder:
        repository, reference = remainder.split("@", 1)
        if not _OCI_DIGEST.match(reference):
            raise SourceURIError(f"{text!r}: {reference!r} is not a digest like sha256:...")
    else:
        repository, colon, tag = remainder.rpartition(":")
        if not colon or "/" in tag:
            repository, reference = remainder, None
        else:
            reference = tag
            if not _OCI_TAG.match(tag):
                raise SourceURIError(f"{text!r}: {tag!r} is not a valid tag")
    if not re.fullmatch(
        r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*",
        repository,
    ):
        raise SourceURIError(f"{text!r}: {repository!r} is not a repository name")
    return SourceURI(scheme, registry, repository, reference, text)


def _parse_pvc(text: str, scheme: str, rest: str) -> SourceURI:
    claim, _, path = rest.partition("/")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", claim):
        raise SourceURIError(f"{text!r}: {claim!r} is not a PersistentVolumeClaim name")
    if ".." in path.split("/"):
        raise SourceURIError(f"{text!r}: '..' is not allowed in a pvc:// path")
    return SourceURI(scheme, claim, path.strip("/"), None, text)
