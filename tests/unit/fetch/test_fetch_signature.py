"""Model signatures (``spec.model.signature``): OpenSSF model-signing bundles, verified offline.

Tiny real GGUF files (``gguf.GGUFWriter``, see payloads.py) are signed here with the
``model-signing`` library and EC P-256 keys (or a certificate chain) made by
``cryptography``, served by the https:// stand-in or a pvc:// directory, and fetched: a good
signature publishes and records who signed; a flipped byte, another key, an unsigned file
or a missing bundle fail with ``SignatureInvalid`` naming the file, and nothing is
published. Then the same through the CLI, the init container's rendering, local mode and
the ``SignatureVerified`` condition.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import model_signing
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tests.unit.fetch.conftest import markers, published_files, sha256
from tests.unit.fetch.payloads import GgufFactory
from tests.unit.fetch.standins import RangeServer

from modeldeploy.api import ModelSource, SpecError, parse_model_deployment
from modeldeploy.artifacts import ArtifactState, model_hash, signature_condition
from modeldeploy.fetch.cli import _request, configure_parser, trust_anchor
from modeldeploy.fetch.errors import SignatureInvalidError
from modeldeploy.fetch.fetcher import FetchOptions, FetchResult, fetch
from modeldeploy.fetch.request import FetchRequest
from modeldeploy.fetch.signature import TrustAnchor
from modeldeploy.render.fetch_init import SIGNATURE_MOUNT, fetch_command, fetch_init_container
from modeldeploy.resolution import Resolution
from modeldeploy.serve.local import LocalServeError, prepare
from modeldeploy.serve.machine import node_object

pytestmark = pytest.mark.timeout(120)

NAME = "tiny-Q4_K_M.gguf"
BUNDLE = "model.sig"


# --- keys, certificates and signing -----------------------------------------------------


def keypair(directory: Path, name: str) -> tuple[Path, Path]:
    """A fresh EC P-256 key: (private key PEM, public key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = directory / f"{name}.pem"
    public = directory / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def key_fingerprint(public: Path) -> str:
    """``sha256:`` of the public key's DER, as the fetcher records it."""
    key = serialization.load_pem_public_key(public.read_bytes())
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()


def sign(
    model: Path,
    private: Path,
    bundle: Path,
    *,
    shard_size: int | None = None,
    certificate: tuple[Path, Path] | None = None,
) -> bytes:
    """Sign a directory (the bundle inside it is left out) or one file; the bundle's bytes."""
    hashing = model_signing.hashing.Config()
    if shard_size is not None:
        hashing.use_shard_serialization(shard_size=shard_size)
    hashing.set_ignored_paths(paths=[bundle.name])
    config = model_signing.signing.Config()
    if certificate is None:
        config.use_elliptic_key_signer(private_key=private)
    else:
        leaf, chain = certificate
        config.use_certificate_signer(
            private_key=private, signing_certificate=leaf, certificate_chain=[chain]
        )
    config.set_hashing_config(hashing).sign(model, bundle)
    return bundle.read_bytes()


def certificate_chain(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a code-signing leaf: (leaf private key, leaf certificate, CA certificate)."""
    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme Models"),
                x509.NameAttribute(NameOID.COMMON_NAME, common),
            ]
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("Acme Root CA"))
        .issuer_name(name("Acme Root CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    private, _ = keypair(directory, "leaf")
    leaf_key = serialization.load_pem_private_key(private.read_bytes(), None)
    assert isinstance(leaf_key, ec.EllipticCurvePrivateKey)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name("model-publisher"))
        .issuer_name(ca.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=30))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    leaf_pem = directory / "leaf.crt"
    ca_pem = directory / "ca.crt"
    leaf_pem.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return private, leaf_pem, ca_pem


def flipped(data: bytes) -> bytes:
    """``data`` with one bit of one byte in the middle flipped."""
    changed = bytearray(data)
    changed[len(data) // 2] ^= 0x01
    return bytes(changed)


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """The publisher's key pair and another one."""
    directory = tmp_path / "keys"
    directory.mkdir()
    private, public = keypair(directory, "publisher")
    other_private, other_public = keypair(directory, "other")
    return {"private": private, "public": public, "other": other_public, "forger": other_private}


@pytest.fixture
def model(ggufs: GgufFactory) -> bytes:
    return ggufs.model("Q4_K_M", padding=20_000)


@dataclass
class Mirror:
    """The https:// stand-in serving the GGUF and its bundle under ``/m/``, and the keys."""

    server: RangeServer
    model: bytes
    bundle: bytes  # the publisher's signature of a directory that holds the GGUF alone
    keys: dict[str, Path]
    options: FetchOptions
    root: Path

    @property
    def source(self) -> str:
        return self.server.https(f"m/{NAME}")

    def serve(self, name: str, data: bytes) -> None:
        self.server.add(f"m/{name}", data)

    def fetch(
        self, cache: str = "c", key: str = "public", bundle: str = BUNDLE, **request: Any
    ) -> FetchResult:
        """Fetch the GGUF with ``bundle``, trusting the key named ``key``."""
        return fetch(
            FetchRequest(source=self.source, signature=bundle, **request),
            self.root / cache,
            env=self.server.env,
            options=self.options,
            trust=TrustAnchor(public_key=self.keys[key]),
        )


@pytest.fixture
def mirror(
    range_server: RangeServer,
    model: bytes,
    keys: dict[str, Path],
    tmp_path: Path,
    fast_options: FetchOptions,
) -> Mirror:
    directory = tmp_path / "signed"
    directory.mkdir()
    (directory / NAME).write_bytes(model)
    bundle = sign(directory, keys["private"], directory / BUNDLE)
    served = Mirror(range_server, model, bundle, keys, fast_options, tmp_path)
    served.serve(NAME, model)
    served.serve(BUNDLE, bundle)
    return served


def gets(server: RangeServer, name: str) -> list[str]:
    return [path for method, path, _ in server.requests if method == "GET" and path.endswith(name)]


# --- the fetch ----------------------------------------------------------------------------


def test_a_signed_file_is_verified_published_and_its_signer_recorded(mirror: Mirror) -> None:
    result = mirror.fetch()
    assert (result.path / NAME).read_bytes() == mirror.model
    # The bundle was downloaded beside the GGUF but is not served.
    assert published_files(mirror.root / "c") == [f"{result.revision}/{NAME}"]
    assert not list((mirror.root / "c").rglob(BUNDLE))
    record = json.loads(result.provenance_path.read_text())
    fingerprint = key_fingerprint(mirror.keys["public"])
    assert record["signature"] == {
        "bundle": BUNDLE,
        "bundleSha256": sha256(mirror.bundle),
        "kind": "publicKey",
        "identity": fingerprint,
        "trust": fingerprint,
        "signedName": "signed",
        "hash": "sha256",
        "files": 1,
    }
    assert result.summary()["signature"] == {
        "bundle": BUNDLE,
        "kind": "publicKey",
        "identity": fingerprint,
    }
    assert record["files"][0]["sha256"] == sha256(mirror.model)


def test_a_flipped_byte_fails_naming_the_file_and_nothing_is_published(mirror: Mirror) -> None:
    mirror.serve(NAME, flipped(mirror.model))
    with pytest.raises(SignatureInvalidError) as raised:
        mirror.fetch()
    message = str(raised.value)
    assert message.startswith(f"{NAME}: its sha256 digest differs from the one signed in")
    assert f"by key {key_fingerprint(mirror.keys['public'])[:23]}…" in message
    assert "nothing was published" in message and "\n" not in message
    assert raised.value.reason == "SignatureInvalid" and raised.value.exit_code == 9
    cache = mirror.root / "c"
    assert published_files(cache) == [] and markers(cache) == []
    # The tampered copy is not kept in staging either: a corrected source is fetched anew.
    assert not [p for p in cache.rglob(NAME) if p.is_file()]


def test_another_key_fails_before_the_model_is_downloaded(mirror: Mirror) -> None:
    with pytest.raises(SignatureInvalidError, match="signed with another key") as raised:
        mirror.fetch(key="other")
    assert str(raised.value).startswith(f"signature bundle {BUNDLE}: does not verify with public")
    assert str(mirror.keys["other"]) in str(raised.value)
    assert gets(mirror.server, NAME) == []  # the bundle is checked first
    assert published_files(mirror.root / "c") == []


def test_a_bundle_forged_by_another_key_fails(mirror: Mirror) -> None:
    directory = mirror.root / "forged"
    directory.mkdir()
    (directory / NAME).write_bytes(mirror.model)
    mirror.serve(BUNDLE, sign(directory, mirror.keys["forger"], directory / BUNDLE))
    with pytest.raises(SignatureInvalidError, match="another key"):
        mirror.fetch()
    assert published_files(mirror.root / "c") == []


def test_a_bundle_whose_manifest_was_edited_fails(mirror: Mirror) -> None:
    # Someone re-points the signed digest at the tampered bytes, keeping the signature.
    document = json.loads(mirror.bundle)
    envelope = document["dsseEnvelope"]
    statement = json.loads(base64.b64decode(envelope["payload"]))
    tampered = flipped(mirror.model)
    statement["predicate"]["resources"][0]["digest"] = sha256(tampered)
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    mirror.serve(BUNDLE, json.dumps(document).encode())
    mirror.serve(NAME, tampered)
    with pytest.raises(SignatureInvalidError, match="does not verify with public key") as raised:
        mirror.fetch()
    assert "does not match the signed content" in str(raised.value)
    assert gets(mirror.server, NAME) == []
    assert published_files(mirror.root / "c") == []


def test_a_missing_or_broken_bundle_fails_as_an_invalid_signature(mirror: Mirror) -> None:
    mirror.serve("broken.sig", b"{not json")
    for bundle, why in [
        ("absent.sig", r"^signature bundle absent.sig: not found at the source \(HTTP 404\)$"),
        ("broken.sig", r"^signature bundle broken.sig: not a model-signing bundle \("),
    ]:
        with pytest.raises(SignatureInvalidError, match=why):
            mirror.fetch(bundle=bundle)
    assert published_files(mirror.root / "c") == []


def test_a_signature_of_the_single_file_and_a_sharded_one_verify(mirror: Mirror) -> None:
    original = mirror.root / "one" / NAME
    original.parent.mkdir()
    original.write_bytes(mirror.model)
    private = mirror.keys["private"]
    # A file signed on its own is named "." in the manifest; shards are re-hashed here.
    mirror.serve("single.sig", sign(original, private, mirror.root / "single.sig"))
    sharded = sign(original.parent, private, mirror.root / "s.sig", shard_size=4096)
    mirror.serve("sharded.sig", sharded)
    for bundle, hashed in [("single.sig", "sha256"), ("sharded.sig", "sha256-shards")]:
        result = mirror.fetch(cache=f"c-{bundle}", bundle=bundle)
        record = json.loads(result.provenance_path.read_text())
        assert (record["signature"]["bundle"], record["signature"]["hash"]) == (bundle, hashed)
    mirror.serve(NAME, flipped(mirror.model))
    with pytest.raises(SignatureInvalidError, match=f"^{NAME}: its sha256 digest differs"):
        mirror.fetch(cache="c-tampered", bundle="sharded.sig")


def test_a_repository_signed_whole_serves_the_selected_files_and_refuses_unsigned_ones(
    tmp_path: Path, ggufs: GgufFactory, keys: dict[str, Path], fast_options: FetchOptions
) -> None:
    claim = tmp_path / "claims" / "models"
    claim.mkdir(parents=True)
    (claim / NAME).write_bytes(ggufs.model("Q4_K_M"))
    (claim / "tiny-Q8_0.gguf").write_bytes(ggufs.model("Q8_0"))
    (claim / "README.md").write_text("a tiny model\n")
    sign(claim, keys["private"], claim / BUNDLE)
    env = {"MODELDEPLOY_PVC_ROOT": str(tmp_path / "claims")}
    trust = TrustAnchor(public_key=keys["public"])
    # One quantization of the signed repository: the other files are not needed.
    request = FetchRequest(source="pvc://models", quantization="Q4_K_M", signature=BUNDLE)
    result = fetch(request, tmp_path / "c", env=env, options=fast_options, trust=trust)
    assert [f.name for f in result.files] == [NAME]
    assert result.signature is not None and result.signature["files"] == 1
    # A file added after signing is served by no one.
    (claim / "notes.txt").write_text("added later\n")
    unsigned = FetchRequest(source="pvc://models", files=(NAME, "notes.txt"), signature=BUNDLE)
    with pytest.raises(SignatureInvalidError, match=r"^notes.txt: not covered by the signature"):
        fetch(unsigned, tmp_path / "c2", env=env, options=fast_options, trust=trust)
    assert published_files(tmp_path / "c2") == []


def test_a_certificate_chain_verifies_and_records_the_subject(mirror: Mirror) -> None:
    private, leaf, ca = certificate_chain(mirror.root)
    directory = mirror.root / "by-certificate"
    directory.mkdir()
    (directory / NAME).write_bytes(mirror.model)
    mirror.serve(BUNDLE, sign(directory, private, directory / BUNDLE, certificate=(leaf, ca)))

    def fetch_trusting(chain: Path, cache: str) -> Any:
        return fetch(
            FetchRequest(source=mirror.source, signature=BUNDLE),
            mirror.root / cache,
            env=mirror.server.env,
            options=mirror.options,
            trust=TrustAnchor(certificate_chain=(chain,)),
        )

    assert fetch_trusting(ca, "c").summary()["signature"] == {
        "bundle": BUNDLE,
        "kind": "certificate",
        "identity": "CN=model-publisher,O=Acme Models",
        "issuer": "CN=Acme Root CA,O=Acme Models",
    }
    (mirror.root / "other").mkdir()
    _, _, other_ca = certificate_chain(mirror.root / "other")
    with pytest.raises(SignatureInvalidError, match="does not chain to the trusted"):
        fetch_trusting(other_ca, "c2")


def test_a_verified_copy_answers_offline_and_only_for_its_own_key(mirror: Mirror) -> None:
    server = mirror.server
    # An unsigned fetch first: its copy does not count as verified.
    plain = fetch(
        FetchRequest(source=mirror.source),
        mirror.root / "c",
        env=server.env,
        options=mirror.options,
    )
    assert plain.signature is None
    server.reset_counters()
    first = mirror.fetch()
    assert first.signature is not None and not first.cached
    assert gets(server, NAME) == [] and gets(server, BUNDLE)  # the file is reused, and checked
    server.reset_counters()
    again = mirror.fetch(revision=first.revision)
    assert again.cached and again.signature == first.signature
    assert server.requests == []  # a pinned, verified copy needs no network
    with pytest.raises(SignatureInvalidError, match="another key"):
        mirror.fetch(revision=first.revision, key="other")
    assert (first.path / NAME).read_bytes() == mirror.model  # the verified copy stays


def test_a_bundle_on_another_origin_gets_no_credentials(mirror: Mirror, cdn: RangeServer) -> None:
    token = "bearer-secret-0123456789"
    mirror.server.token = token
    cdn.add("sigs/tiny.sig", mirror.bundle)
    env = {
        "MODELDEPLOY_PLAIN_HTTP_HOSTS": f"{mirror.server.host},{cdn.host}",
        "MODELDEPLOY_BEARER_TOKEN": token,
    }
    result = fetch(
        FetchRequest(source=mirror.source, signature=cdn.https("sigs/tiny.sig")),
        mirror.root / "c",
        env=env,
        options=mirror.options,
        trust=TrustAnchor(public_key=mirror.keys["public"]),
    )
    assert result.signature is not None
    assert cdn.requests and all("authorization" not in h for _, _, h in cdn.requests)


def test_a_bundle_needs_a_trust_anchor_and_a_trust_anchor_a_bundle(
    keys: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(SignatureInvalidError, match="no trusted public key"):
        fetch(FetchRequest(source="pvc://m/x.gguf", signature=BUNDLE), tmp_path, env={})
    with pytest.raises(SignatureInvalidError, match="no signature bundle"):
        fetch(
            FetchRequest(source="pvc://m/x.gguf"),
            tmp_path,
            env={},
            trust=TrustAnchor(keys["public"]),
        )
    with pytest.raises(SignatureInvalidError, match="no such file"):
        TrustAnchor(public_key=tmp_path / "absent.pem").fingerprint()
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(SignatureInvalidError, match="not a PEM public key"):
        TrustAnchor(public_key=tmp_path / "junk.pem").fingerprint()
    with pytest.raises(ValueError):
        TrustAnchor()


# --- the CLI ------------------------------------------------------------------------------


def run_cli(args: Sequence[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modeldeploy.fetch", *args],
        env={"PATH": os.environ.get("PATH", ""), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_cli_verifies_and_reports_or_fails_with_one_line(mirror: Mirror) -> None:
    log = mirror.root / "termination-log"
    key = str(mirror.keys["public"])

    def base(cache: str) -> list[str]:
        cache_dir = str(mirror.root / cache)
        return ["--source", mirror.source, "--cache", cache_dir, "--termination-log", str(log)]

    good = run_cli([*base("c"), "--signature", BUNDLE, "--public-key", key], mirror.server.env)
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["signature"]["identity"] == key_fingerprint(Path(key))
    assert json.loads(log.read_text())["signature"]["kind"] == "publicKey"

    mirror.serve(NAME, flipped(mirror.model))
    bad = run_cli([*base("c2"), "--signature", BUNDLE, "--public-key", key], mirror.server.env)
    assert bad.returncode == 9 and bad.stdout == ""
    line = bad.stderr.strip().splitlines()[-1]
    assert line.startswith(f"modeldeploy fetch: error: {NAME}: its sha256 digest differs")
    report = json.loads(log.read_text())
    assert report["reason"] == "SignatureInvalid" and NAME in report["error"]

    for args, fragment in [
        (["--signature", BUNDLE], "--public-key PEM or --certificate-chain PEM"),
        (["--public-key", key], "need a signature (--signature)"),
    ]:
        refused = run_cli([*base("c3"), *args], mirror.server.env)
        assert refused.returncode == 2
        assert refused.stderr.strip().splitlines()[-1].startswith("modeldeploy fetch: error: ")
        assert fragment in refused.stderr
    both = ["--signature", BUNDLE, "--public-key", key, "--certificate-chain", key]
    assert run_cli([*base("c3"), *both], mirror.server.env).returncode == 2


def test_a_warm_verified_copy_starts_without_the_signing_library(mirror: Mirror) -> None:
    first = mirror.fetch()
    probe = (
        "import sys; from modeldeploy.fetch.cli import main; rc = main(sys.argv[1:]); "
        "print('model_signing' in sys.modules); sys.exit(rc)"
    )
    args = ["--source", mirror.source, "--revision", first.revision]
    args += ["--cache", str(mirror.root / "c"), "--signature", BUNDLE]
    args += ["--public-key", str(mirror.keys["public"])]
    warm = subprocess.run(
        [sys.executable, "-c", probe, *args],
        env={"PATH": os.environ.get("PATH", "")},  # no mirror: a network request would fail
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert warm.returncode == 0, warm.stderr
    *result, loaded = warm.stdout.strip().splitlines()
    assert json.loads(result[-1])["cached"] is True and loaded == "False"


# --- the API, the init container, local mode, the condition -------------------------------


def model_source(**signature: Any) -> dict[str, Any]:
    return {"source": "https://mirror.example/m/tiny-Q4_K_M.gguf", "signature": signature}


def deployment(model: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "tiny", "namespace": "default"},
        "spec": {"model": model, **spec},
    }


KEY_REF = {"configMapName": "model-keys", "key": "publisher.pub"}


@pytest.mark.parametrize(
    ("signature", "field", "fragment"),
    [
        ({"bundle": BUNDLE}, "spec.model.signature.publicKey", "exactly one of publicKey"),
        (
            {"bundle": BUNDLE, "publicKey": KEY_REF, "certificateChain": KEY_REF},
            "spec.model.signature.publicKey",
            "keyless Sigstore is not supported yet",
        ),
        (
            {"bundle": BUNDLE, "publicKey": {"key": "k"}},
            "spec.model.signature.publicKey.secretName",
            "exactly one of secretName or configMapName",
        ),
        ({"bundle": "../x.sig", "publicKey": KEY_REF}, "spec.model.signature.bundle", "'..'"),
        ({"bundle": "/etc/x.sig", "publicKey": KEY_REF}, "spec.model.signature.bundle", "path"),
        (
            {"bundle": BUNDLE, "publicKey": {**KEY_REF, "key": "a/b"}},
            "spec.model.signature.publicKey.key",
            "data key",
        ),
    ],
)
def test_the_api_refuses_an_ambiguous_signature(
    signature: dict[str, Any], field: str, fragment: str
) -> None:
    with pytest.raises(SpecError) as raised:
        parse_model_deployment(deployment(model_source(**signature)))
    assert raised.value.field_path == field and fragment in raised.value.message


def test_the_signature_is_rendered_as_flags_and_a_read_only_mount() -> None:
    model = ModelSource.model_validate(
        model_source(bundle=BUNDLE, publicKey={"secretName": "signing", "key": "key.pub"})
    )
    assert model_hash(model) == model_hash(model.model_copy(update={"signature": None}))
    container, volumes = fetch_init_container(model, image="i", cache_mount_path="/models")
    args = container["args"]
    assert args[args.index("--signature") + 1] == BUNDLE
    assert args[args.index("--public-key") + 1] == f"{SIGNATURE_MOUNT}/public-key.pem"
    (volume,) = [v for v in volumes if v["name"] == "model-signature-trust"]
    assert volume["secret"] == {
        "secretName": "signing",
        "items": [{"key": "key.pub", "path": "public-key.pem"}],
        "optional": True,
    }
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "model-signature-trust"]
    assert mount == {
        "name": "model-signature-trust",
        "mountPath": SIGNATURE_MOUNT,
        "readOnly": True,
    }
    assert "key.pub" not in " ".join(args) and "signing" not in " ".join(args)
    # The command parses back into the same request and the mounted anchor.
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    parsed = parser.parse_args(fetch_command(model, "/models")[2:])
    assert _request(parsed) == FetchRequest.from_model(model)
    assert trust_anchor(parsed.public_key, parsed.certificate_chain, BUNDLE) == TrustAnchor(
        public_key=Path(f"{SIGNATURE_MOUNT}/public-key.pem")
    )
    chain = ModelSource.model_validate(model_source(bundle=BUNDLE, certificateChain=KEY_REF))
    container, volumes = fetch_init_container(chain, image="i", cache_mount_path="/models")
    assert f"{SIGNATURE_MOUNT}/certificate-chain.pem" in container["args"]
    (volume,) = [v for v in volumes if v["name"] == "model-signature-trust"]
    assert volume["configMap"]["name"] == "model-keys"
    unsigned = ModelSource(source="https://mirror.example/m/tiny-Q4_K_M.gguf")
    container, volumes = fetch_init_container(unsigned, image="i", cache_mount_path="/models")
    assert "--signature" not in container["args"] and volumes == []


def test_local_mode_verifies_the_signature_before_serving(
    tmp_path: Path, ggufs: GgufFactory, keys: dict[str, Path]
) -> None:
    claim = tmp_path / "claims" / "models"
    claim.mkdir(parents=True)
    data = ggufs.model("Q4_K_M")
    (claim / NAME).write_bytes(data)
    sign(claim, keys["private"], claim / BUNDLE)
    spec = {
        "source": f"pvc://models/{NAME}",
        "parameters": "270M",
        "signature": {"bundle": BUNDLE, "publicKey": KEY_REF},
    }
    md = parse_model_deployment(deployment(spec, serving={"contextLength": 1024}))
    env = {
        "MODELDEPLOY_PVC_ROOT": str(tmp_path / "claims"),
        "MODELDEPLOY_LLAMA_SERVER": "/bin/true",
    }
    node = node_object(arch="amd64", cpus=2, memory_bytes=24 << 30, flags={"avx2"})
    common: dict[str, Any] = {"host": "127.0.0.1", "port": 8000, "env": env, "node": node}
    with pytest.raises(LocalServeError, match="pass the trusted key with --public-key"):
        prepare(md, cache=tmp_path / "c0", **common)
    prepared = prepare(md, cache=tmp_path / "c", trust=TrustAnchor(keys["public"]), **common)
    assert prepared.model_path.read_bytes() == data
    (claim / NAME).write_bytes(flipped(data))  # tampered after signing
    with pytest.raises(LocalServeError, match=f"fetch failed: {NAME}: its sha256 digest differs"):
        prepare(md, cache=tmp_path / "c2", trust=TrustAnchor(keys["public"]), **common)
    assert published_files(tmp_path / "c2") == []


def pod(name: str, exit_code: int, message: dict[str, Any] | None) -> dict[str, Any]:
    terminated = {"exitCode": exit_code, "message": json.dumps(message) if message else ""}
    return {
        "metadata": {"name": name},
        "status": {
            "initContainerStatuses": [{"name": "fetch", "state": {"terminated": terminated}}]
        },
    }


def test_signature_verified_is_derived_from_the_fetchers_reports() -> None:
    signed_model = ModelSource.model_validate(model_source(bundle=BUNDLE, publicKey=KEY_REF))
    unsigned = ModelSource(source="https://mirror.example/m/tiny-Q4_K_M.gguf")
    resolution = Resolution(signed_model.source, "etags-1", "gguf", "Q4_K_M", ())
    state = ArtifactState(resolution, "Resolved", "resolved", model_hash(signed_model), "s")
    assert signature_condition(unsigned, state, []) is None
    status, reason, message = signature_condition(signed_model, state, []) or ("", "", "")
    assert (status, reason) == ("Unknown", "Pending") and BUNDLE in message
    ok = {
        "revision": "etags-1",
        "files": [{"name": NAME, "size": 1, "sha256": "a" * 64}],
        "signature": {"bundle": BUNDLE, "kind": "publicKey", "identity": "sha256:ab12"},
    }
    assert signature_condition(signed_model, state, [pod("p-1", 0, ok)]) == (
        "True",
        "Verified",
        f"pod p-1 verified 1 file of etags-1 against {BUNDLE}, signed by key sha256:ab12",
    )
    stale = {**ok, "revision": "etags-0"}  # another revision's pod proves nothing now
    assert signature_condition(signed_model, state, [pod("p-0", 0, stale)])[0] == "Unknown"  # type: ignore[index]
    unverified = {k: v for k, v in ok.items() if k != "signature"}
    assert signature_condition(signed_model, state, [pod("p-2", 0, unverified)])[0] == "Unknown"  # type: ignore[index]
    error = f"{NAME}: its sha256 digest differs from the one signed in model.sig"
    failed = {"error": error, "reason": "SignatureInvalid"}
    assert signature_condition(signed_model, state, [pod("p-3", 9, failed)]) == (
        "False",
        "SignatureInvalid",
        f"pod p-3: {error}",
    )
