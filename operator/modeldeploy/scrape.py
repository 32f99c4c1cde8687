"""Reading a model pod's load from its Prometheus text exposition (``/metrics``).

The edge between an engine's metrics text and the pure decision in `modeldeploy.autoscale`:
it parses with prometheus-client's parser, which the pure core may not import. The gauge
names come from the engine's ``LoadGauges`` (``runtimes/``). Input is bounded: text over
``MAX_METRICS_CHARS`` is refused unparsed.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from prometheus_client.parser import text_string_to_metric_families

from modeldeploy.autoscale import PodLoad

# vLLM's full exposition (histograms per model) is some 100 KiB; anything near this is not
# an engine's metrics page.
MAX_METRICS_CHARS = 4 * 1024 * 1024


def gauge_values(text: str, names: Collection[str]) -> dict[str, list[float]] | None:
    """The sample values of each named metric, one per label set; None if unparsable or too big."""
    if len(text) > MAX_METRICS_CHARS:
        return None
    values: dict[str, list[float]] = {name: [] for name in names}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                # Sample names, not family names: the parser strips a counter's ``_total``.
                if sample.name in values:
                    values[sample.name].append(float(sample.value))
    except ValueError:
        return None
    return values


def sum_gauges(text: str, names: Sequence[str]) -> float | None:
    """Sum the samples of the named metrics across label sets; None if none is present."""
    values = gauge_values(text, names)
    if values is None or not any(values.values()):
        return None
    return sum(sum(found) for found in values.values())


def parse_load(text: str, running: str, waiting: str, kv_cache_usage: str | None) -> PodLoad | None:
    """A pod's load from its metrics text; None when running or waiting is absent or unusable."""
    names = [running, waiting] if kv_cache_usage is None else [running, waiting, kv_cache_usage]
    values = gauge_values(text, names)
    if values is None or not values[running] or not values[waiting]:
        return None
    # Requests add up across label sets (vLLM publishes one series per engine and model);
    # KV-cache usage is a share of each engine's own cache, so it is averaged.
    usage = values[kv_cache_usage] if kv_cache_usage is not None else []
    try:
        return PodLoad(
            running=sum(values[running]),
            waiting=sum(values[waiting]),
            kv_cache_usage=sum(usage) / len(usage) if usage else None,
        )
    except ValueError:  # NaN, infinite or negative: not a load to act on
        return None
