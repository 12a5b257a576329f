"""Prometheus metrics of the model server, in a registry of its own (so a process that
also hosts the platform app never mixes the two).

Base units, counters ending in ``_total``, labels with few values: the route template
(never the raw path), the method and status, the model name and version. Latency
buckets run from 0.5 ms, since the default ones (from 5 ms) cannot resolve a 2 ms
prediction.
"""

from __future__ import annotations

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

from maestro.serving.metrics import LATENCY_BUCKETS


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
            ("model", "version", "status"),
            registry=self.registry,
        )
        self.prediction_seconds = Histogram(
            "maestro_model_server_prediction_duration_seconds",
            "Time a model call took, by model and version.",
            ("model", "version"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prediction_requests = Counter(
            "maestro_model_server_prediction_requests_total",
            "Prediction requests answered, by model, version and protocol.",
            ("model", "version", "protocol"),
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
