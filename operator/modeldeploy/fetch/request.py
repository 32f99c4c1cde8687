"""What a fetch asks for: the fields of ``spec.model`` that decide which bytes are served.

Kept free of heavy imports: the warm-cache path of ``modeldeploy fetch`` needs only this,
``uri`` and ``cache``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from modeldeploy.fetch.layout import selection_id
from modeldeploy.fetch.uri import SourceURI, parse_source

if TYPE_CHECKING:
    from modeldeploy.api import Adapter, ModelSource

ADAPTER_FORMAT = "adapter"  # the format of an adapter request: a GGUF LoRA or a PEFT pair


@dataclass(frozen=True)
class FetchRequest:
    """What to fetch: the fields of ``spec.model`` that decide the bytes."""

    source: str
    revision: str | None = None
    format: str = "auto"
    quantization: str = "auto"
    files: tuple[str, ...] = ()
    digests: Mapping[str, str] = field(default_factory=dict)
    # The signature bundle (``spec.model.signature.bundle``): a path inside the source or a
    # URI. The trusted key is the fetcher's own input (``signature.TrustAnchor``).
    signature: str | None = None

    @classmethod
    def from_model(cls, model: ModelSource, revision: str | None = None) -> FetchRequest:
        """The request for a ``spec.model`` (``revision`` overrides it, e.g. the resolved one)."""
        return cls(
            source=model.source,
            revision=revision or model.revision,
            format=model.format,
            quantization=model.quantization,
            files=tuple(model.files),
            digests=dict(model.digests),
            signature=model.signature.bundle if model.signature else None,
        )

    @classmethod
    def from_adapter(cls, adapter: Adapter, revision: str | None = None) -> FetchRequest:
        """The request for one of ``spec.adapters`` (its files chosen as an adapter's)."""
        return cls(
            source=adapter.source,
            revision=revision or adapter.revision,
            format=ADAPTER_FORMAT,
            files=tuple(adapter.files),
            digests=dict(adapter.digests),
        )

    @property
    def is_adapter(self) -> bool:
        """Whether this request fetches a LoRA adapter rather than a model."""
        return self.format == ADAPTER_FORMAT

    @property
    def uri(self) -> SourceURI:
        """The parsed source."""
        return parse_source(self.source)

    @property
    def requested_revision(self) -> str | None:
        """The revision asked for: ``revision``, else the one in the URI (``@rev``, ``:tag``)."""
        return self.revision or self.uri.reference

    @property
    def selection(self) -> str:
        """The cache's id for what this request selects from a revision."""
        return selection_id(self.format, self.quantization, self.files)
