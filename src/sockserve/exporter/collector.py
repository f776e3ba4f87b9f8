"""``stats()`` in the Prometheus text format, read at scrape time.

Design: a custom collector (``prometheus_client``'s "custom collector" pattern), not
Counter objects updated per connection: the serving core already counts, and a scrape
every few seconds reading one ``stats()`` snapshot costs nothing per connection. It
publishes exactly the fields of ``ServerStats`` (``metrics.py``), named after them:

- counters (``_total``): ``accepted``, ``finished``, ``handler_errors``,
  ``accept_errors``, ``kernel_drops``, ``bytes_in``, ``bytes_out``, ``rejected{reason}``,
  ``peer_faults{kind}``;
- gauges: ``active``, ``peak_active``, ``queue_depth``, ``workers_alive``;
- the histogram ``connection_duration_seconds`` (``DURATION_BUCKETS``).

All under the ``sockserve_`` prefix. A pre-fork master's ``stats()`` already sums its
workers, retired ones included, so the counters never go down across worker restarts.
``prometheus_client`` is the optional extra ``sockserve[metrics]``; it is imported
here only, so ``import sockserve`` never needs it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import ConfigurationError
from ..metrics import DURATION_BUCKETS, ServerStats

#: The prefix of every metric name.
NAMESPACE = "sockserve"

#: ``(ServerStats field, help)`` of the plain counters.
COUNTERS = (
    ("accepted", "Connections (or datagrams) taken from the kernel."),
    ("finished", "Admitted requests whose work has ended, however."),
    ("handler_errors", "Requests whose handler raised."),
    ("accept_errors", "Failed accept() calls that were not routine (EMFILE and the like)."),
    ("kernel_drops", "Datagrams the kernel dropped before the server read them."),
    ("bytes_in", "TCP payload bytes received from clients (TCP_INFO at close)."),
    ("bytes_out", "TCP payload bytes clients acknowledged (TCP_INFO at close)."),
)
#: ``(ServerStats field, help)`` of the gauges.
GAUGES = (
    ("active", "Requests being handled now."),
    ("peak_active", "Highest number of requests handled at once (per process, at most)."),
    ("queue_depth", "Accepted requests waiting for a worker thread."),
    ("workers_alive", "Worker threads or processes alive now."),
)


def require_prometheus_client() -> Any:
    """The ``prometheus_client`` module, or a ConfigurationError saying how to get it."""
    try:
        import prometheus_client
        import prometheus_client.core  # the metric families of a custom collector
    except ImportError:
        raise ConfigurationError(
            "metrics need prometheus_client: pip install 'sockserve[metrics]'"
        ) from None
    return prometheus_client


class StatsCollector:
    """A ``prometheus_client`` collector publishing ``stats()`` as it is at each scrape."""

    def __init__(self, stats: Callable[[], ServerStats]) -> None:
        self._stats = stats
        self._families = require_prometheus_client().core

    def collect(self) -> Iterator[Any]:
        families = self._families
        stats = self._stats()
        for field, help_text in COUNTERS:
            yield families.CounterMetricFamily(
                f"{NAMESPACE}_{field}", help_text, value=getattr(stats, field)
            )
        for field, label, help_text in (
            ("rejected", "reason", "Connections or datagrams refused or dropped, by reason."),
            ("peer_faults", "kind", "Requests ended by the client's doing, by kind."),
        ):
            family = families.CounterMetricFamily(f"{NAMESPACE}_{field}", help_text, labels=[label])
            for value, count in sorted(getattr(stats, field).items()):
                family.add_metric([value], count)
            yield family
        for field, help_text in GAUGES:
            yield families.GaugeMetricFamily(
                f"{NAMESPACE}_{field}", help_text, value=getattr(stats, field)
            )
        yield families.HistogramMetricFamily(
            f"{NAMESPACE}_connection_duration_seconds",
            "How long finished requests took, from admission to the end of their work.",
            buckets=cumulative_buckets(stats.duration_counts),
            sum_value=stats.duration_sum,
        )


def cumulative_buckets(counts: tuple[int, ...]) -> list[tuple[str, int]]:
    """Prometheus ``le`` buckets (cumulative, ``+Inf`` last) from per-bucket counts."""
    bounds = [repr(bound) for bound in DURATION_BUCKETS] + ["+Inf"]
    return list(zip(bounds, itertools.accumulate(counts), strict=True))


class Exposition:
    """A registry holding only the stats collector (no process or platform metrics: in
    a pre-fork server they would describe the master alone), rendered per scrape."""

    def __init__(self, stats: Callable[[], ServerStats]) -> None:
        self._client = require_prometheus_client()
        self._registry = self._client.CollectorRegistry(auto_describe=False)
        self._registry.register(StatsCollector(stats))
        self.content_type: str = self._client.CONTENT_TYPE_LATEST

    def render(self) -> bytes:
        text: bytes = self._client.generate_latest(self._registry)
        return text
