"""Prometheus metrics of the platform API, in a registry of each app's own.

Conventions: base units (``_seconds``, ``_bytes``), counters ending in ``_total``, and
labels with few values: the route template (never the raw path), method and status;
deployments by name and model version by its label, never by id. Latency buckets start
at 0.5 ms: the default ones (from 5 ms) cannot resolve a 2 ms prediction.

Each process answers for itself: with several uvicorn workers, a scrape reaches one of
them, so run one worker per container (or scrape each) when the numbers must add up.

Deployment names and versions belong to their organisations: ``GET /metrics`` shows them
only to a scraper holding ``MAESTRO_METRICS_TOKEN``. Without the token configured it serves
the same families summed over deployments (``render(tenants=False)``), which say how busy
and how fast the platform is and nothing about whose deployments make it so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from maestro.api.request_metrics import LATENCY_BUCKETS

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TENANT_LABELS = frozenset({"deployment", "version"})  # whose deployment a series is about


class ServedMetrics(NamedTuple):
    """One deployment version's series, as ``PlatformMetrics.served`` keeps them."""

    predictions: Any  # the success counter
    rows: Any
    seconds: Any


class _CacheCollector(Collector):
    """Loaded models and their estimated memory, read at scrape time."""

    def __init__(self, stats: Callable[[], tuple[int, int]]) -> None:
        self._stats = stats

    def collect(self) -> Any:
        count, size = self._stats()
        yield GaugeMetricFamily("maestro_models_loaded", "Models loaded in this process.", value=count)
        yield GaugeMetricFamily(
            "maestro_model_cache_bytes", "Estimated memory of the loaded models.", value=size
        )


class PlatformMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes and friends
        self.requests = Counter(
            "maestro_http_requests_total",
            "HTTP requests answered, by route template, method and status.",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "maestro_http_request_duration_seconds",
            "Time from receiving a request to sending its response headers.",
            ("method", "route", "status"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "maestro_predictions_total",
            "Inference requests answered, by deployment name, model version and outcome.",
            ("deployment", "version", "outcome"),
            registry=self.registry,
        )
        self.predicted_rows = Counter(
            "maestro_predicted_rows_total",
            "Rows predicted, by deployment name and model version.",
            ("deployment", "version"),
            registry=self.registry,
        )
        self.prediction_seconds = Histogram(
            "maestro_prediction_duration_seconds",
            "Time to answer an inference request, parsing and predicting included.",
            ("deployment", "version"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model_loads = Counter(
            "maestro_model_loads_total",
            "Model loads in this process, by outcome.",
            ("outcome",),
            registry=self.registry,
        )
        self.prediction_logs_dropped = Counter(
            "maestro_prediction_logs_dropped_total",
            "Prediction logs dropped because the buffer was full or could not be written.",
            registry=self.registry,
        )
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._served_children: dict[tuple[str, str], ServedMetrics] = {}
        self.prediction_logs_pending = Gauge(
            "maestro_prediction_logs_pending",
            "Prediction logs waiting in memory to be written.",
            registry=self.registry,
        )

    def observe_request(self, template: str, method: str, status: int, seconds: float) -> None:
        key = (method, template, status)
        children = self._request_children.get(key)
        if children is None:
            labels = (method if method in METHODS else "other", template, str(status))
            children = self._request_children[key] = (
                self.requests.labels(*labels),
                self.request_seconds.labels(*labels),
            )
        children[0].inc()
        children[1].observe(seconds)

    def served(self, deployment: str, version: str) -> ServedMetrics:
        """One deployment version's success counter, row counter and latency histogram,
        looked up once: a labelled child costs more to find than to count."""
        key = (deployment, version)
        children = self._served_children.get(key)
        if children is None:
            children = self._served_children[key] = ServedMetrics(
                self.predictions.labels(deployment, version, "success"),
                self.predicted_rows.labels(deployment, version),
                self.prediction_seconds.labels(deployment, version),
            )
        return children

    def watch_cache(self, stats: Callable[[], tuple[int, int]]) -> None:
        self.registry.register(_CacheCollector(stats))

    def render(self, *, tenants: bool = True) -> bytes:
        """The exposition; without ``tenants``, series are summed over deployments."""
        if tenants:
            return generate_latest(self.registry)
        return generate_latest(_WithoutTenants(self.registry))


class _WithoutTenants(Collector):
    """A registry's families with the deployment and version labels summed away.
    Counters and histogram buckets add up; creation times do not, and are left out."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            if not any(TENANT_LABELS & sample.labels.keys() for sample in family.samples):
                yield family
                continue
            sums: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in TENANT_LABELS))
                sums[(sample.name, labels)] = sums.get((sample.name, labels), 0.0) + sample.value
            merged = Metric(family.name, family.documentation, family.type, family.unit)
            for (name, labels), value in sums.items():
                merged.add_sample(name, dict(labels), value)
            yield merged
