"""hf:// — a Hugging Face Hub model repository, through ``huggingface_hub``.

Resolution is one ``HfApi.model_info(files_metadata=True)`` call: it returns the commit
sha the revision (branch, tag or sha) points at, every file with its size, the LFS sha256
of large files, and the license from the model card. ``HF_ENDPOINT`` selects the Hub (or a
mirror); ``HF_TOKEN`` authorises private and gated repositories.

Files are downloaded by our own ranged downloader from ``hf_hub_url`` pinned to the
commit sha, not by ``hf_hub_download``: that gives parallel ranges, resume with a sidecar,
streaming verification against the LFS sha256 and one cache layout for every scheme,
where ``hf_hub_download`` keeps its own blob/snapshot cache and fetches a file in one
stream. Authorization goes only to the Hub's origin: httpx drops it on the redirect to the
CDN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from modeldeploy.fetch.credentials import hf_token
from modeldeploy.fetch.download import HttpLocation
from modeldeploy.fetch.errors import CredentialError, FetchError, MissingFileError
from modeldeploy.fetch.retry import RetryableError, retry_call
from modeldeploy.fetch.sources.base import Location, Source
from modeldeploy.fetch.uri import SourceURI
from modeldeploy.resolution import ArtifactFile, Listing

DEFAULT_ENDPOINT = "https://huggingface.co"


class HubSource(Source):
    """A Hub model repository (``hf://ORG/REPO[@REVISION][/SUBPATH]``)."""

    def __init__(self, uri: SourceURI, env: Mapping[str, str]) -> None:
        super().__init__(uri, env)
        self.repo_id = uri.authority
        self.subpath = uri.path
        self.endpoint = (env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        self._token = hf_token(env)

    def list(self, revision: str | None, hints: Sequence[str] = ()) -> Listing:
        from huggingface_hub import HfApi

        wanted = revision or self.uri.reference or "main"
        api = HfApi(endpoint=self.endpoint, token=self._token or False, library_name="modeldeploy")
        info = self._call(
            lambda: api.model_info(
                self.repo_id,
                revision=wanted,
                files_metadata=True,
                timeout=self.options.read_timeout,
            )
        )
        if not info.sha:
            raise FetchError(f"hf://{self.repo_id}: the Hub returned no commit for {wanted!r}")
        prefix = f"{self.subpath.rstrip('/')}/" if self.subpath else ""
        files = []
        for sibling in info.siblings or []:
            name = sibling.rfilename
            if prefix and not (name.startswith(prefix) or name == self.subpath):
                continue
            size = sibling.lfs.size if sibling.lfs else sibling.size
            if size is None:
                raise FetchError(f"hf://{self.repo_id}: the Hub did not report the size of {name}")
            files.append(
                ArtifactFile(
                    name=name,
                    size=int(size),
                    sha256=sibling.lfs.sha256 if sibling.lfs else None,
                    ref=sibling.blob_id,
                )
            )
        return Listing(tuple(files), revision=info.sha, license=_license(info))

    def _call(self, action: Any) -> Any:
        """Run a Hub API call, retrying 5xx and mapping errors to FetchErrors."""
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        def attempt() -> Any:
            try:
                return action()
            except GatedRepoError:
                raise CredentialError(
                    f"hf://{self.repo_id} is gated: accept its terms and set HF_TOKEN"
                ) from None
            except RevisionNotFoundError:
                raise MissingFileError(
                    f"hf://{self.repo_id}: revision {self.uri.reference or 'main'!r} not found"
                ) from None
            except RepositoryNotFoundError as error:
                status = _status(error)
                if status == 401 and self._token:
                    raise CredentialError(
                        f"hf://{self.repo_id}: the Hub rejected HF_TOKEN (HTTP 401)"
                    ) from None
                raise MissingFileError(
                    f"hf://{self.repo_id}: repository not found, or private and HF_TOKEN "
                    "does not grant access"
                ) from None
            except HfHubHTTPError as error:
                status = _status(error)
                if status in (401, 403):
                    what = "the Hub rejected HF_TOKEN" if self._token else "access denied"
                    raise CredentialError(
                        f"hf://{self.repo_id}: {what} (HTTP {status}); check HF_TOKEN"
                    ) from None
                if status is not None and (status >= 500 or status == 429):
                    raise RetryableError(f"HTTP {status}") from None
                raise FetchError(f"hf://{self.repo_id}: Hub API error HTTP {status}") from None
            except Exception as error:
                # huggingface_hub's HTTP client (httpx, or its httpx2 fork in 2.x) raises its
                # own TransportError for DNS, connect and read failures: transient.
                if _is_transport_error(error):
                    raise RetryableError(f"{type(error).__name__}: {error}") from None
                raise

        return retry_call(attempt, what=f"hf://{self.repo_id}", options=self.options)

    def location(self, revision: str, file: ArtifactFile) -> Location:
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils._headers import build_hf_headers

        url = hf_hub_url(self.repo_id, file.name, revision=revision, endpoint=self.endpoint)
        headers = build_hf_headers(token=self._token or False, library_name="modeldeploy")
        return HttpLocation(url, headers)


def _is_transport_error(error: Exception) -> bool:
    return isinstance(error, OSError) or any(
        cls.__name__ == "TransportError" for cls in type(error).__mro__
    )


def _status(error: Exception) -> int | None:
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    return int(status) if status is not None else None


def _license(info: Any) -> str | None:
    card = getattr(info, "card_data", None)
    value = getattr(card, "license", None) if card is not None else None
    if isinstance(value, str) and value:
        return value
    for tag in getattr(info, "tags", None) or []:
        if isinstance(tag, str) and tag.startswith("license:"):
            return tag.removeprefix("license:")
    return None
