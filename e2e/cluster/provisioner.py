"""A stand-in for a dynamic volume provisioner (a CSI driver such as local-path) in the
local cluster, which has no storage: it makes the default StorageClass and, for every
claim of that class, a hostPath PersistentVolume under the cluster's work directory,
pre-bound through ``claimRef`` so that kube-controller-manager's PV controller binds it.
Volumes whose claim is gone are deleted with their directory. Any access mode is
granted: every simulated node is this one machine, so ReadWriteMany holds.

Like a real provisioner it lists once and then watches from the list's resourceVersion
(listing again only after an error, such as 410 Gone), and it creates each volume once:
every update of a claim not bound yet arrives as an event, and creating its volume again
only earns a 409 that costs the API server as much as a write.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
from pathlib import Path
from typing import Any

from kubernetes import client, watch

STORAGE_CLASS = "modeldeploy-local"
PROVISIONER = "e2e.modeldeploy.io/local-path"
log = logging.getLogger(__name__)


class LocalPathProvisioner:
    """Watches claims in a background thread and provisions hostPath volumes for them."""

    def __init__(self, api: client.ApiClient, root: Path) -> None:
        self.core = client.CoreV1Api(api)
        self.storage = client.StorageV1Api(api)
        self.root = root
        self._stop = threading.Event()
        self._provisioned: set[str] = set()  # names of the volumes made (or found) here
        self._thread = threading.Thread(target=self._run, name="pv-provisioner", daemon=True)

    def start(self) -> None:
        """Create the default StorageClass and start provisioning."""
        self.storage.create_storage_class(
            {
                "metadata": {
                    "name": STORAGE_CLASS,
                    "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
                },
                "provisioner": PROVISIONER,
                "reclaimPolicy": "Delete",
                "volumeBindingMode": "Immediate",
            }
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the watch loop (returns within its poll timeout)."""
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        resource_version: str | None = None
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    resource_version = self._sync_all()
                # A short server-side timeout, so that stop() is seen within it; the watch
                # resumes from the last event's resourceVersion.
                stream = watch.Watch().stream(
                    self.core.list_persistent_volume_claim_for_all_namespaces,
                    timeout_seconds=2,
                    resource_version=resource_version,
                )
                for event in stream:
                    resource_version = event["object"].metadata.resource_version
                    self._sync_claim(event["type"], event["object"])
                    if self._stop.is_set():
                        break
            except Exception:  # 410 Gone, or the API server is stopping: list again
                resource_version = None
                if self._stop.wait(1):
                    return
                log.exception("provisioner pass failed; retrying")

    def _sync_all(self) -> str:
        """Provision every claim that needs it, delete volumes of claims that are gone; the
        claims list's resourceVersion."""
        listed = self.core.list_persistent_volume_claim_for_all_namespaces()
        live = {c.metadata.uid for c in listed.items}
        self._provisioned.clear()
        for pv in self.core.list_persistent_volume().items:
            ours = (pv.metadata.annotations or {}).get("pv.kubernetes.io/provisioned-by")
            if ours != PROVISIONER:
                continue
            if pv.spec.claim_ref and pv.spec.claim_ref.uid not in live:
                self._delete(pv.metadata.name)
            else:
                self._provisioned.add(pv.metadata.name)
        for claim in listed.items:
            self._sync_claim("ADDED", claim)
        return str(listed.metadata.resource_version)

    def _sync_claim(self, event_type: str, claim: Any) -> None:
        if claim.spec.storage_class_name != STORAGE_CLASS:
            return
        if event_type == "DELETED":
            self._delete(f"pvc-{claim.metadata.uid}")
        elif not claim.spec.volume_name and not claim.metadata.deletion_timestamp:
            self._provision(claim)

    def _provision(self, claim: Any) -> None:
        meta = claim.metadata
        name = f"pvc-{meta.uid}"
        if name in self._provisioned:
            return
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        body = {
            "metadata": {
                "name": name,
                "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
            },
            "spec": {
                "capacity": {"storage": claim.spec.resources.requests["storage"]},
                "accessModes": claim.spec.access_modes,
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": STORAGE_CLASS,
                "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
                "claimRef": {
                    "namespace": meta.namespace,
                    "name": meta.name,
                    "uid": meta.uid,
                },
            },
        }
        try:
            self.core.create_persistent_volume(body)
        except client.ApiException as error:
            if error.status != 409:
                raise
        self._provisioned.add(name)

    def _delete(self, name: str) -> None:
        self._provisioned.discard(name)
        with contextlib.suppress(client.ApiException):
            self.core.delete_persistent_volume(name)
        shutil.rmtree(self.root / name, ignore_errors=True)
