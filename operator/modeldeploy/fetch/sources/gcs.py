"""gs:// — objects in a Google Cloud Storage bucket, through ``google-cloud-storage``.

``gs://BUCKET/PREFIX`` lists the objects under ``PREFIX/`` (or the one object ``PREFIX``).
Credentials: the service-account key file in ``GOOGLE_APPLICATION_CREDENTIALS`` (mounted
from a Secret), else Application Default Credentials; ``STORAGE_EMULATOR_HOST`` points the
client at an emulator (anonymous). The revision is derived from the objects' generations,
and downloads are pinned to that generation (the JSON API media URL with
``generation=``), so an overwritten object is refused rather than mixed in. GCS publishes
MD5/CRC32C, not sha256: the sha256 is checked when the spec pins one and recorded always.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from modeldeploy.fetch.download import HttpLocation
from modeldeploy.fetch.envvars import AMBIENT_CREDENTIALS_VAR
from modeldeploy.fetch.errors import CredentialError, FetchError, MissingFileError
from modeldeploy.fetch.retry import RetryableError, retry_call
from modeldeploy.fetch.sources.base import BucketSource, Location
from modeldeploy.fetch.uri import SourceURI
from modeldeploy.resolution import ArtifactFile, Listing

READ_ONLY_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"


class GcsSource(BucketSource):
    """Objects under a prefix in one GCS bucket."""

    def __init__(self, uri: SourceURI, env: Mapping[str, str]) -> None:
        super().__init__(uri, env)
        self._gcs: Any = None
        self._credentials: Any = None
        self.emulator = env.get("STORAGE_EMULATOR_HOST") or None

    @property
    def gcs(self) -> Any:
        """The storage client, with credentials from ``env`` only."""
        if self._gcs is None:
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import storage

            key_file = self.env.get("GOOGLE_APPLICATION_CREDENTIALS")
            ambient = self.env.get(AMBIENT_CREDENTIALS_VAR, "true").lower() != "false"
            options = {"api_endpoint": self._endpoint()} if self.emulator else None
            if self.emulator or (not key_file and not ambient):
                self._credentials = None
                self._gcs = storage.Client(
                    project="modeldeploy",
                    credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                    client_options=options,
                )
            elif key_file:
                from google.oauth2 import service_account

                self._credentials = service_account.Credentials.from_service_account_file(
                    key_file,
                    scopes=[READ_ONLY_SCOPE],  # type: ignore[no-untyped-call]
                )
                self._gcs = storage.Client(
                    project=self._credentials.project_id, credentials=self._credentials
                )
            else:
                self._gcs = storage.Client()
                self._credentials = self._gcs._credentials
        return self._gcs

    def _endpoint(self) -> str:
        host = self.emulator or "https://storage.googleapis.com"
        return host if "://" in host else f"http://{host}"

    def _call(self, what: str, action: Any) -> Any:
        from google.api_core import exceptions
        from google.auth import exceptions as auth_exceptions

        def attempt() -> Any:
            try:
                return action()
            except (exceptions.Unauthorized, exceptions.Forbidden) as error:
                raise CredentialError(
                    f"{what}: access denied (HTTP {error.code}); check the service account"
                ) from None
            except auth_exceptions.GoogleAuthError as error:
                raise CredentialError(
                    f"{what}: credentials rejected ({type(error).__name__})"
                ) from None
            except exceptions.NotFound:
                raise MissingFileError(f"{what}: not found") from None
            except (exceptions.ServerError, exceptions.TooManyRequests) as error:
                raise RetryableError(f"HTTP {error.code}") from None
            except exceptions.GoogleAPICallError as error:
                raise FetchError(f"{what}: GCS error HTTP {error.code}") from None

        return retry_call(attempt, what=what, options=self.options)

    def list(self, revision: str | None, hints: Sequence[str] = ()) -> Listing:
        blobs = self._call(
            self.where, lambda: list(self.gcs.list_blobs(self.bucket, prefix=self.prefix))
        )
        files = (
            ArtifactFile(name=name, size=int(blob.size), ref=f"generation:{blob.generation}")
            for name, blob in self.by_name(blobs, lambda blob: str(blob.name))
        )
        return Listing(tuple(files), revision=None, derived_kind="generations")

    def location(self, revision: str, file: ArtifactFile) -> Location:
        url = (
            f"{self._endpoint()}/download/storage/v1/b/{quote(self.bucket, safe='')}/o/"
            f"{quote(self.object_key(file.name), safe='')}?alt=media"
        )
        if file.ref and file.ref.startswith("generation:"):
            url += "&generation=" + file.ref.removeprefix("generation:")
        headers: dict[str, str] = {}
        self.gcs  # noqa: B018 - builds the credentials
        if self._credentials is not None:
            import google.auth.transport.requests

            if not self._credentials.valid:
                self._credentials.refresh(google.auth.transport.requests.Request())
            headers["Authorization"] = f"Bearer {self._credentials.token}"
        return HttpLocation(url, headers)
