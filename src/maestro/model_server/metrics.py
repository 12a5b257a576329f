"""Prometheus metrics of the model server, in a registry of its own (so a process that
also hosts the platform app never mixes the two).

Base units, counters ending in ``_total``, labels with few values: the route template
(never the raw path), the method and status, the model's name, version and
``organization`` (the namespace its name lives in, empty for the server's own models).
Latency buckets run from 0.5 ms, since the default ones (from 5 ms) cannot resolve a 2 ms
prediction.

An operator key scrapes everything. Anyone else sees only the per-model series of the
models they may see: no other organisation's names, versions or traffic, and none of the
server-wide figures (requests, memory, loaded models, jobs) that add everyone's up.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from maestro.api.request_metrics import LATENCY_BUCKETS


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes and friends
        PlatformCollector(registry=self.registry)
        self.requests = Counter(
            "maestro_model_server_requests_total",
            "HTTP requests answered, by route template, method and status.",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "maestro_model_server_request_duration_seconds",
            "Time from receiving a request to its last response byte.",
            ("route", "method"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "maestro_model_server_predictions_total",
            "Rows predicted, by model, version and outcome.",
            ("organization", "model", "version", "status"),
            registry=self.registry,
        )
        self.prediction_seconds = Histogram(
            "maestro_model_server_prediction_duration_seconds",
            "Time a model call took, by model and version.",
            ("organization", "model", "version"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prediction_requests = Counter(
            "maestro_model_server_prediction_requests_total",
            "Prediction requests answered, by model, version and protocol.",
            ("organization", "model", "version", "protocol"),
            registry=self.registry,
        )
        self.models_loaded = Gauge(
            "maestro_model_server_models_loaded",
            "Models this server currently serves.",
            registry=self.registry,
        )
        self.model_memory = Gauge(
            "maestro_model_server_model_memory_bytes",
            "Estimated memory of the loaded models.",
            registry=self.registry,
        )
        self.load_seconds = Histogram(
            "maestro_model_server_model_load_duration_seconds",
            "Time a model load took (reading, converting and warming it).",
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
            registry=self.registry,
        )
        self.loads = Counter(
            "maestro_model_server_model_loads_total",
            "Model loads, by source and outcome.",
            ("source", "status"),
            registry=self.registry,
        )
        self.async_jobs = Gauge(
            "maestro_model_server_async_jobs",
            "Asynchronous prediction jobs by status.",
            ("status",),
            registry=self.registry,
        )
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        children = self._request_children.get((route, method, status))
        if children is None:
            children = (
                self.requests.labels(route, method, str(status)),
                self.request_seconds.labels(route, method),
            )
            self._request_children[(route, method, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self, visible: Collection[tuple[str, str]] | None = None) -> bytes:
        """The exposition: everything, or (``visible``: (organization, model) pairs) only
        those models' series."""
        if visible is None:
            return generate_latest(self.registry)
        return generate_latest(_Only(self.registry, frozenset(visible)))


MODEL_FAMILIES = frozenset(
    {
        "maestro_model_server_predictions",
        "maestro_model_server_prediction_duration_seconds",
        "maestro_model_server_prediction_requests",
    }
)


class _Only(Collector):
    """The per-model families of a registry, cut to the series of some models."""

    def __init__(self, registry: CollectorRegistry, visible: frozenset[tuple[str, str]]) -> None:
        self.registry = registry
        self.visible = visible

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            if family.name not in MODEL_FAMILIES:
                continue
            kept = Metric(family.name, family.documentation, family.type, family.unit)
            kept.samples = [
                sample
                for sample in family.samples
                if (sample.labels.get("organization", ""), sample.labels.get("model", "")) in self.visible
            ]
            yield kept
