"""Monitoring's bodies out: a deployment's performance over a window and per interval."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

Granularity = Literal["1m", "5m", "1h", "1d"]

ACCURACY = "Accuracy from ground truth (labels sent for served predictions); null until labels exist."
LATENCY = "Milliseconds, interpolated in the latency histogram bucket that holds it; null without requests."


class CurrentMetrics(BaseModel):
    accuracy: float | None = Field(description=ACCURACY)
    latency_p95: float | None = Field(description=LATENCY)
    throughput_rps: float = Field(description="Requests per second over the window.")
    error_rate: float | None = Field(description="Failed requests / requests (0..1); null without requests.")
    request_count: int
    error_count: int
    prediction_count: int = Field(description="Rows predicted by successful requests.")
    latency_p50: float | None = Field(description=LATENCY)
    latency_p99: float | None = Field(description=LATENCY)


class MetricsPoint(BaseModel):
    timestamp: datetime = Field(description="Start of the interval (UTC, aligned to the granularity).")
    accuracy: float | None = Field(description=ACCURACY)
    latency_p95: float | None = Field(description=LATENCY)
    throughput_rps: float = Field(
        description="Requests per second over the part of the interval in the window."
    )
    error_rate: float | None = Field(description="Failed requests / requests (0..1); null without requests.")
    request_count: int


class MonitoringMetrics(BaseModel):
    start: datetime
    end: datetime
    granularity: Granularity
    current_metrics: CurrentMetrics = Field(description="The whole window.")
    time_series: list[MetricsPoint] = Field(description="One point per interval, empty ones included.")
