"""The operator's connections: the API client, the Secret reader, the peering reader, the
identity it announces itself with. Used by the Kopf wiring (``handlers``) at start-up.

Every client's user agent is ``modeldeploy/<version> (<identity>)``, so the API server's
audit log tells the writes of two operator replicas apart.
"""

from __future__ import annotations

import base64
import datetime
import getpass
import os
import secrets
import socket
from collections.abc import Callable, Mapping
from typing import Any, cast

from kubernetes import client
from kubernetes import config as kube_config

from modeldeploy import __version__
from modeldeploy.settings import OperatorSettings

PEERING_GROUP, PEERING_VERSION = "kopf.dev", "v1"
PeeringReader = Callable[[], list[Mapping[str, Any] | None]]


# Threads that run reconcile passes (asyncio's default executor, set at start-up): a pass
# waits on API calls, so more of them than CPU cores keep a burst of creates moving, but
# its planning holds the GIL, so many more only contend (bench/reconcile.py at N=200 on
# 2 cores: p99 create→Deployment 4: 12.2 s, 8: 10.5-11.6 s, 16: 12.6 s, 32: worse).
PASS_THREADS = 8


def api_client(who: str = "") -> client.ApiClient:
    """The Kubernetes API client: in-cluster, else the kubeconfig; our user agent (with
    the process's identity ``who`` when given)."""
    _load_config()
    configuration = client.Configuration.get_default_copy()
    # One connection per pass thread (the client's default pool is 5 per CPU core).
    configuration.connection_pool_maxsize = PASS_THREADS
    api = client.ApiClient(configuration)
    api.user_agent = user_agent(who)  # tells our calls apart in audit logs
    return api


def probe_client(who: str = "") -> client.ApiClient:
    """A client for the Lease and the health probe: no urllib3 retries (their callers
    retry on their own period, and a call must fail within its timeout)."""
    _load_config()
    configuration = client.Configuration.get_default_copy()
    configuration.retries = False
    api = client.ApiClient(configuration)
    api.user_agent = user_agent(who)
    return api


def user_agent(who: str = "") -> str:
    """``modeldeploy/<version>``, with `` (<identity>)`` when given."""
    return f"modeldeploy/{__version__}" + (f" ({who})" if who else "")


def _load_config() -> None:
    try:
        kube_config.load_incluster_config()
    except kube_config.ConfigException:
        kube_config.load_kube_config()


SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def own_namespace() -> str | None:
    """The namespace of the operator's pod (``POD_NAMESPACE``, else the service account's
    mounted namespace file); None outside a cluster."""
    found = os.environ.get("POD_NAMESPACE")
    if found:
        return found
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE) as file:
            return file.read().strip() or None
    except OSError:
        return None


def secret_reader(core: client.CoreV1Api) -> Any:
    """Read one Secret's data (decoded) by name, None when it does not exist. Only ``get``:
    the operator never lists or watches Secrets, and keeps none of their values."""

    def read(namespace: str, name: str) -> dict[str, str] | None:
        try:
            secret = core.read_namespaced_secret(name, namespace)
        except client.ApiException as error:
            if error.status == 404:
                return None
            raise
        return {
            key: base64.b64decode(value).decode(errors="replace")
            for key, value in (secret.data or {}).items()
        }

    return read


def peering_reader(
    custom: client.CustomObjectsApi, settings: OperatorSettings
) -> PeeringReader | None:
    """Read the Kopf peering objects this operator announces itself in; None: standalone.

    The ClusterKopfPeering when cluster-wide, else the KopfPeering of each namespace
    served; a missing one reads as None (``list`` by name, which Kopf's peering needs too).
    """
    name = settings.peering
    if name is None:
        return None
    by_name = {"field_selector": f"metadata.name={name}"}

    def first(found: Mapping[str, Any]) -> Mapping[str, Any] | None:
        items = found.get("items") or []
        return cast("Mapping[str, Any]", items[0]) if items else None

    def read() -> list[Mapping[str, Any] | None]:
        try:
            if not settings.namespaces:
                found = [
                    custom.list_cluster_custom_object(
                        PEERING_GROUP, PEERING_VERSION, "clusterkopfpeerings", **by_name
                    )
                ]
            else:
                found = [
                    custom.list_namespaced_custom_object(
                        PEERING_GROUP, PEERING_VERSION, ns, "kopfpeerings", **by_name
                    )
                    for ns in settings.namespaces
                ]
        except client.ApiException as error:
            if error.status == 404:  # the peering CRD is not served: Kopf pauses
                return [None]
            raise
        return [first(listed) for listed in found]

    return read


def identity() -> str:
    """This process's name in the peering objects, in Kopf's form: the pod (``POD_ID``),
    else ``user@host/started/random``."""
    pod = os.environ.get("POD_ID")
    if pod:
        return pod
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the uid (a container)
        user = str(os.getuid())
    started = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d%H%M%S")
    return f"{user}@{socket.gethostname()}/{started}/{secrets.token_hex(2)}"
