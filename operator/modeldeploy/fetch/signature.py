"""Model signatures: OpenSSF model-signing bundles, verified offline before anything is published.

This module owns ``spec.model.signature`` on the fetcher's side: the trust anchor (one
elliptic-curve public key, or a certificate chain; ``TrustAnchor``), bringing the bundle
from the source into staging (``fetch_bundle``: a path inside the source, the sibling of a
one-file https:// or pvc:// source, or a URI of its own; downloaded, never published), the
bundle's cryptographic check with the ``model-signing`` library (``read_signed_manifest``),
and the comparison of the signed digests with the fetched files (``SignedManifest``).

Every served file must be in the signed manifest with the same digest; files the signature
covers but the selection does not take (other quantizations of a repository signed as a
whole) are not needed. A manifest of SHA-256 file digests (model-signing's default) is
compared with the digests the download already computed; other hashes (shards, BLAKE2,
BLAKE3) re-read the files. A signature of a single file (``model-signing sign model.gguf``)
names it ``.`` and covers a one-file selection. Every failure is a ``SignatureInvalidError``
naming the file (or the bundle, or the key) and why; nothing is published after one.

The identity recorded in provenance and in the termination message: ``sha256:<hex>`` of
the public key's DER (SubjectPublicKeyInfo), or the signing certificate's subject. Keyless
Sigstore verification (an identity and an OIDC issuer, online) is not supported yet.

``model_signing`` is imported only when a bundle is verified: a warm cache starts without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import posixpath
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

from modeldeploy.fetch.envvars import SECRET_FILE_VARS, SECRET_VARS
from modeldeploy.fetch.errors import FetchError, SignatureInvalidError
from modeldeploy.fetch.uri import SourceURI, parse_source

if TYPE_CHECKING:
    from modeldeploy.fetch.provenance import VerifiedFile
    from modeldeploy.fetch.sources.base import Source
    from modeldeploy.resolution import ArtifactFile

log = logging.getLogger(__name__)

BUNDLE_DIR = ".modeldeploy-signature"  # in staging; never published
MAX_BUNDLE_BYTES = 64 * 1024 * 1024
_WHOLE_FILE = ""  # the item key of a file serialization (shards are "START:END")


@dataclass(frozen=True)
class TrustAnchor:
    """What a signature must verify against: one EC public key, or a certificate chain (PEM)."""

    public_key: Path | None = None
    certificate_chain: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        if (self.public_key is None) == (not self.certificate_chain):
            raise ValueError("a trust anchor is one public key or one certificate chain")

    @property
    def kind(self) -> str:
        """``publicKey`` or ``certificateChain``."""
        return "publicKey" if self.public_key is not None else "certificateChain"

    def describe(self) -> str:
        """The anchor in words, for error lines (paths only, never key material)."""
        if self.public_key is not None:
            return f"public key {self.public_key}"
        return "certificate chain " + ", ".join(str(p) for p in self.certificate_chain)

    def fingerprint(self) -> str:
        """``sha256:<hex>`` of the public key's DER, or of the chain's certificates' DER."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        if self.public_key is not None:
            try:
                key = serialization.load_pem_public_key(_read(self.public_key, self.describe()))
            except ValueError as error:
                raise SignatureInvalidError(
                    f"{self.describe()}: not a PEM public key ({_why(error)})"
                ) from None
            der = key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            return "sha256:" + hashlib.sha256(der).hexdigest()
        pem = b"".join(_read(path, self.describe()) for path in self.certificate_chain)
        try:
            certificates = x509.load_pem_x509_certificates(pem)
        except ValueError as error:
            raise SignatureInvalidError(
                f"{self.describe()}: not PEM certificates ({_why(error)})"
            ) from None
        digest = hashlib.sha256()
        for certificate in certificates:
            digest.update(certificate.public_bytes(serialization.Encoding.DER))
        return "sha256:" + digest.hexdigest()


def signed_selection(selection: str, trust: TrustAnchor) -> str:
    """The cache's id for a selection verified against ``trust``: its own marker and provenance."""
    return f"{selection}-sig{trust.fingerprint().removeprefix('sha256:')[:12]}"


def check_request(bundle: str | None, trust: TrustAnchor | None) -> None:
    """Refuse a bundle without a trust anchor or a trust anchor without a bundle."""
    if bundle and trust is None:
        raise SignatureInvalidError(
            f"signature bundle {bundle}: no trusted public key or certificate chain was given "
            "(--public-key or --certificate-chain); nothing is served unverified"
        )
    if trust is not None and not bundle:
        raise SignatureInvalidError(
            f"{trust.describe()} was given but no signature bundle (--signature) to verify"
        )


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SignatureInvalidError(
            f"{what}: no such file (is the Secret's or ConfigMap's key mounted?)"
        ) from None
    except OSError as error:
        raise SignatureInvalidError(f"{what}: cannot be read ({error.strerror})") from None


def _why(error: BaseException) -> str:
    """An exception as a short single line."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:299] + "…"


# --- the bundle --------------------------------------------------------------------------


def _check_relative(bundle: str) -> None:
    parts = bundle.split("/")
    if bundle.startswith("/") or ".." in parts or not bundle.strip("/"):
        raise SignatureInvalidError(
            f"signature bundle {bundle!r}: must be a path inside the source or a full URI"
        )


def _sibling(source: Source, bundle: str) -> str | None:
    """The bundle's URI beside a one-file https:// or pvc:// source, else None."""
    uri = source.uri
    if uri.scheme == "https" and not uri.url.endswith("/"):
        return urljoin(uri.url, bundle)
    if uri.scheme == "pvc":
        from modeldeploy.fetch.sources.pvc import PvcSource

        if isinstance(source, PvcSource) and source.base.is_file():
            parent = posixpath.dirname(uri.path.rstrip("/"))
            return f"pvc://{uri.authority}/{posixpath.join(parent, bundle)}"
    return None


def _env_for(bundle: SourceURI, model: SourceURI, env: Mapping[str, str]) -> Mapping[str, str]:
    """The model source's credentials go only to the same origin; other origins get none."""
    if (bundle.scheme, bundle.authority) == (model.scheme, model.authority):
        return env
    secret = {*SECRET_VARS, *SECRET_FILE_VARS}
    return {k: v for k, v in env.items() if k not in secret}


def _read_whole(source: Source, revision: str, file: ArtifactFile, what: str) -> bytes:
    from modeldeploy.fetch.resolve import read_range

    if file.size <= 0:
        raise SignatureInvalidError(f"signature bundle {what}: the file is empty")
    if file.size > MAX_BUNDLE_BYTES:
        raise SignatureInvalidError(
            f"signature bundle {what}: {file.size} bytes is more than a bundle holds"
        )
    return read_range(source, revision, file, 0, file.size)


def _from_uri(text: str, model: Source, env: Mapping[str, str], what: str) -> bytes:
    from modeldeploy.fetch.sources import open_source

    uri = parse_source(text)
    own = open_source(uri, _env_for(uri, model.uri, env))
    own.options = model.options
    try:
        listing = own.list(None)
        files = list(listing.files)
        if len(files) != 1:
            base = posixpath.basename(uri.path.rstrip("/"))
            files = [f for f in files if posixpath.basename(f.name) == base]
        if len(files) != 1:
            raise SignatureInvalidError(f"signature bundle {what}: the URI does not name one file")
        (file,) = own.enrich(files)
        return _read_whole(own, listing.revision or "", file, what)
    finally:
        own.close()


def fetch_bundle(
    bundle: str, source: Source, revision: str, staging: Path, env: Mapping[str, str]
) -> Path:
    """Download the bundle into ``staging/BUNDLE_DIR`` (never published) and return its path."""
    try:
        if "://" in bundle:
            data = _from_uri(bundle, source, env, bundle)
        else:
            _check_relative(bundle)
            sibling = _sibling(source, bundle)
            if sibling is not None:
                data = _from_uri(sibling, source, env, bundle)
            else:
                listing = source.list(revision, hints=[bundle])
                found = [f for f in listing.files if f.name == bundle.strip("/")]
                if not found:
                    raise SignatureInvalidError(
                        f"signature bundle {bundle}: not in {source.uri.canonical}@{revision}"
                    )
                (file,) = source.enrich(found)
                data = _read_whole(source, revision, file, bundle)
    except SignatureInvalidError:
        raise
    except FetchError as error:
        if error.reason in ("FileMissing", "FileSelectionFailed", "InvalidSource"):
            detail = str(error).removeprefix(f"{posixpath.basename(bundle)}: ")
            raise SignatureInvalidError(f"signature bundle {bundle}: {detail}") from None
        raise
    target = staging / BUNDLE_DIR / posixpath.basename(bundle.rstrip("/"))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


# --- the check ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedManifest:
    """What a verified bundle signs: digests by file, how they were computed, and by whom."""

    bundle: str  # as the spec names it
    bundle_sha256: str
    signer: Mapping[str, str]  # kind, identity (and issuer, for a certificate)
    trust: str  # the trust anchor's fingerprint
    signed_name: str
    method: str  # "files" or "shards"
    hash_type: str  # "sha256", "blake2", "blake3"
    shard_size: int | None
    items: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # file -> key -> hex

    def files_for(self, names: Sequence[str]) -> dict[str, Mapping[str, str]]:
        """The signed items of each name; a one-file signature (``.``) covers one name."""
        if set(self.items) == {"."} and len(names) == 1:
            return {names[0]: self.items["."]}
        return {name: self.items[name] for name in names if name in self.items}

    def require_covered(self, files: Sequence[ArtifactFile]) -> None:
        """Before any download: every file is signed, and a published sha256 agrees."""
        signed = self.files_for([f.name for f in files])
        for file in files:
            if file.name not in signed:
                raise SignatureInvalidError(
                    f"{file.name}: not covered by the signature {self.bundle} "
                    f"(it signs {_listing(self.items)}); nothing was published"
                )
            expected = signed[file.name].get(_WHOLE_FILE)
            if self._sha256_files and file.sha256 and expected and file.sha256 != expected:
                raise SignatureInvalidError(
                    f"{file.name}: the source serves sha256 {file.sha256[:12]}… but the signature "
                    f"{self.bundle} signs {expected[:12]}…; nothing was published"
                )

    @property
    def signed_by(self) -> str:
        """The signer, short: ``key sha256:0123456789abcdef…`` or a certificate's subject."""
        identity = self.signer["identity"]
        if self.signer["kind"] == "publicKey":
            return f"key {identity[:23]}…"
        return identity

    @property
    def _sha256_files(self) -> bool:
        return self.method == "files" and self.hash_type == "sha256"

    def verify(
        self, files: Sequence[VerifiedFile], paths: Mapping[str, Path], staged: set[str]
    ) -> dict[str, Any]:
        """Compare the fetched files with the signed digests; the provenance's ``signature``.

        A staged file that does not match is deleted, so a corrected source is fetched anew.
        """
        signed = self.files_for([f.name for f in files])
        for file in files:
            expected = signed.get(file.name)
            if expected is None:
                raise SignatureInvalidError(
                    f"{file.name}: not covered by the signature {self.bundle}; "
                    "nothing was published"
                )
            if self._sha256_files:
                actual: Mapping[str, str] = {_WHOLE_FILE: file.sha256}
            else:
                log.info("%s: computing its %s digests to check", file.name, self.hash_type)
                actual = self._digest(paths[file.name])
            if dict(actual) != dict(expected):
                if file.name in staged:
                    with contextlib.suppress(FileNotFoundError):
                        paths[file.name].unlink()
                raise SignatureInvalidError(
                    f"{file.name}: its {self.hash_type} digest differs from the one signed in "
                    f"{self.bundle} by {self.signed_by}: the file changed after signing; "
                    "nothing was published"
                )
        log.info(
            "signature %s verified: %d file(s) signed by %s",
            self.bundle,
            len(files),
            self.signer["identity"],
        )
        return {
            "bundle": self.bundle,
            "bundleSha256": self.bundle_sha256,
            **self.signer,
            "trust": self.trust,
            "signedName": self.signed_name,
            "hash": self.hash_type if self.method == "files" else f"{self.hash_type}-shards",
            "files": len(files),
        }

    def _digest(self, path: Path) -> dict[str, str]:
        """The file's items as the signer computed them (the library's own hashing)."""
        from model_signing import hashing

        config = hashing.Config()  # type: ignore[no-untyped-call]
        if self.method == "shards":
            assert self.shard_size is not None
            config.use_shard_serialization(
                hashing_algorithm=self.hash_type,  # type: ignore[arg-type]
                shard_size=self.shard_size,
            )
        else:
            config.use_file_serialization(hashing_algorithm=self.hash_type)  # type: ignore[arg-type]
        manifest = config.hash(path)
        return {
            _item_key(descriptor.identifier, self.method)[1]: descriptor.digest.digest_hex
            for descriptor in manifest.resource_descriptors()
        }


def _item_key(identifier: str, method: str) -> tuple[str, str]:
    """(file, key within the file): ``name`` -> (name, ""), ``name:0:100`` -> (name, "0:100")."""
    if method != "shards":
        return identifier, _WHOLE_FILE
    name, start, end = identifier.rsplit(":", 2)
    return name, f"{start}:{end}"


def _listing(items: Mapping[str, Any]) -> str:
    names = sorted(items)
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    return shown or "no files"


def read_signed_manifest(path: Path, bundle: str, trust: TrustAnchor) -> SignedManifest:
    """Verify the bundle's signature with ``trust`` and return what it signs."""
    # model-signing 1.1's public verifying.Config compares whole directories; these modules
    # are its own verifiers, used to compare exactly the selected files (pinned to <1.2).
    from model_signing._signing import sign_certificate, sign_ec_key, sign_sigstore_pb

    fingerprint = trust.fingerprint()  # also refuses unreadable or malformed trust material
    try:
        signature = sign_sigstore_pb.Signature.read(path)
    except Exception as error:
        raise SignatureInvalidError(
            f"signature bundle {bundle}: not a model-signing bundle ({_why(error)})"
        ) from None
    verifier: Any
    try:
        if trust.public_key is not None:
            verifier = sign_ec_key.Verifier(trust.public_key)
        else:
            verifier = sign_certificate.Verifier(list(trust.certificate_chain))
    except Exception as error:
        raise SignatureInvalidError(
            f"{trust.describe()}: cannot verify with it ({_why(error)}; model-signing takes "
            "elliptic-curve keys P-256, P-384 and P-521)"
        ) from None
    try:
        # The library prints a warning about old bundles on stdout, where our JSON goes.
        with contextlib.redirect_stdout(sys.stderr):
            manifest = verifier.verify(signature)
    except Exception as error:
        raise SignatureInvalidError(
            f"signature bundle {bundle}: does not verify with {trust.describe()}: "
            f"{_verification_problem(error)}; nothing was published"
        ) from None
    params = dict(manifest.serialization_type)
    method = str(params.get("method", "files"))
    if method not in ("files", "shards"):
        raise SignatureInvalidError(f"signature bundle {bundle}: unknown serialization {method}")
    items: dict[str, dict[str, str]] = {}
    for descriptor in manifest.resource_descriptors():
        name, key = _item_key(descriptor.identifier, method)
        items.setdefault(name, {})[key] = descriptor.digest.digest_hex
    shard_size = params.get("shard_size")
    return SignedManifest(
        bundle=bundle,
        bundle_sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        signer=_signer(signature, trust, fingerprint),
        trust=fingerprint,
        signed_name=str(manifest.model_name),
        method=method,
        hash_type=str(params.get("hash_type", "sha256")),
        shard_size=int(shard_size) if shard_size is not None else None,
        items=items,
    )


def _verification_problem(error: Exception) -> str:
    text = _why(error)
    if text.startswith("Key mismatch"):
        return "it was signed with another key"
    if type(error).__name__ == "InvalidSignature":
        return "the signature does not match the signed content (another key, or a changed bundle)"
    if type(error).__name__ == "X509StoreContextError":
        return f"the signing certificate does not chain to the trusted certificates ({text})"
    return text


def _signer(signature: Any, trust: TrustAnchor, fingerprint: str) -> dict[str, str]:
    """Who signed: the key's fingerprint, or the signing certificate's subject and issuer."""
    if trust.public_key is not None:
        return {"kind": "publicKey", "identity": fingerprint}
    from cryptography import x509

    chain = signature.bundle.verification_material.x509_certificate_chain
    leaf = x509.load_der_x509_certificate(chain.certificates[0].raw_bytes)
    return {
        "kind": "certificate",
        "identity": leaf.subject.rfc4514_string(),
        "issuer": leaf.issuer.rfc4514_string(),
    }
