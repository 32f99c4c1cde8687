"""Certificates and kubeconfig for the local control plane, made with the openssl CLI.

One CA signs one certificate (CN ``admin``, O ``system:masters``) that serves the API
server and authenticates every client; a separate RSA key signs service-account tokens.
Everything is generated once per work directory and reused on later starts.
"""

from __future__ import annotations

import base64
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

# The first address of --service-cluster-ip-range (10.96.0.0/12) is the `kubernetes`
# Service's ClusterIP, which in-cluster clients dial; it must be in the serving cert.
SERVING_SANS = (
    "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,"
    "DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.96.0.1"
)


@dataclass(frozen=True)
class Pki:
    """Paths of the generated key material."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def admin_cert(self) -> Path:
        return self.directory / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.directory / "admin.key"

    @property
    def sa_key(self) -> Path:
        return self.directory / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.directory / "sa.pub"


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def ensure_pki(directory: Path) -> Pki:
    """Create the CA, the admin certificate and the service-account key unless present."""
    pki = Pki(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not pki.ca_cert.exists():
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
                 "-subj", "/CN=modeldeploy-e2e-ca",
                 "-keyout", pki.ca_key, "-out", pki.ca_cert)  # fmt: skip
    if not pki.admin_cert.exists():
        csr = directory / "admin.csr"
        extensions = directory / "admin.ext"
        extensions.write_text(
            f"subjectAltName={SERVING_SANS}\n"
            "extendedKeyUsage=serverAuth,clientAuth\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
        )
        _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj",
                 "/O=system:masters/CN=admin", "-keyout", pki.admin_key, "-out", csr)  # fmt: skip
        _openssl("x509", "-req", "-in", csr, "-CA", pki.ca_cert, "-CAkey", pki.ca_key,
                 "-CAcreateserial", "-days", "3650", "-extfile", extensions,
                 "-out", pki.admin_cert)  # fmt: skip
    if not pki.sa_key.exists():
        _openssl("genrsa", "-out", pki.sa_key, "2048")
        _openssl("rsa", "-in", pki.sa_key, "-pubout", "-out", pki.sa_pub)
    return pki


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, pki: Pki, name: str = "modeldeploy-local") -> None:
    """Write a self-contained kubeconfig (certificates embedded) for the admin identity."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": name,
                "cluster": {"server": server, "certificate-authority-data": _b64(pki.ca_cert)},
            }
        ],
        "users": [
            {
                "name": "admin",
                "user": {
                    "client-certificate-data": _b64(pki.admin_cert),
                    "client-key-data": _b64(pki.admin_key),
                },
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": "admin"}}],
        "current-context": name,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    tmp.chmod(0o600)
    tmp.replace(path)
