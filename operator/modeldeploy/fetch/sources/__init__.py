"""One module per source scheme; ``open_source`` picks the one for a URI."""

from __future__ import annotations

from collections.abc import Mapping

from modeldeploy.fetch.sources.base import Source
from modeldeploy.fetch.uri import SourceURI


def open_source(uri: SourceURI, env: Mapping[str, str]) -> Source:
    """The Source for a parsed URI, with credentials from ``env``."""
    # Imported lazily: each client library is heavy and only one is needed per fetch.
    if uri.scheme == "hf":
        from modeldeploy.fetch.sources.hf import HubSource

        return HubSource(uri, env)
    if uri.scheme == "s3":
        from modeldeploy.fetch.sources.s3 import S3Source

        return S3Source(uri, env)
    if uri.scheme == "gs":
        from modeldeploy.fetch.sources.gcs import GcsSource

        return GcsSource(uri, env)
    if uri.scheme == "oci":
        from modeldeploy.fetch.sources.oci import OciSource

        return OciSource(uri, env)
    if uri.scheme == "pvc":
        from modeldeploy.fetch.sources.pvc import PvcSource

        return PvcSource(uri, env)
    from modeldeploy.fetch.sources.https import HttpsSource

    return HttpsSource(uri, env)
