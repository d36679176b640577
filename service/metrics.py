"""Prometheus metrics: one registry per app, so several apps (tests) never collide."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """The service's counters, histograms and gauges."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "genserve_requests",
            "HTTP requests by model, version, endpoint and status code.",
            ["model", "version", "endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "genserve_request_latency_seconds",
            "End-to-end request latency.",
            ["model", "version", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage = Histogram(
            "genserve_stage_seconds",
            "Time per request stage: parse (body, validation), compute (engine work, batcher "
            "queue included), serialize (the response body). A request that fails part-way "
            "records only the stages it finished.",
            ["model", "version", "endpoint", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.graph = Histogram(
            "genserve_graph_seconds",
            "Time per graph call in the batcher: queue (waiting for its batch) and compute (the "
            "batch's runtime call). A request makes one or many graph calls.",
            ["model", "version", "graph", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batches = Counter(
            "genserve_batches",
            "Runtime calls the batcher made, per graph: graph calls merged into one count once "
            "(genserve_graph_seconds_count / this = calls per batch).",
            ["model", "version", "graph"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "genserve_queue_depth",
            "Graph calls waiting in the batcher, per model version (503 overloaded at max_queue).",
            ["model", "version"],
            registry=self.registry,
        )
        self.samples = Counter("genserve_samples", "Samples produced.", ["model"], registry=self.registry)
        self.rows_scored = Counter(
            "genserve_rows_scored",
            "Input rows scored or reconstructed.",
            ["model", "endpoint"],
            registry=self.registry,
        )
        self.model_info = Gauge(
            "genserve_model_info",
            "Loaded models (value 1) with their version, family, backend and device.",
            ["model", "version", "family", "backend", "device"],
            registry=self.registry,
        )
        self.model_loads = Counter(
            "genserve_model_loads",
            "Live model management: versions loaded, refused (failed verification, loading or "
            "warm-up; the old version kept serving) and unloaded.",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.ready = Gauge(
            "genserve_ready", "1 when every model is loaded and warmed up.", registry=self.registry
        )
        # Per-replica concurrency: it rises as soon as requests queue, before latency or
        # CPU show it, so it is the autoscaler's signal (deploy/k8s/hpa.yaml).
        self.inflight = Gauge(
            "genserve_inflight_requests",
            "Requests in progress (health and metrics excluded).",
            registry=self.registry,
        )


class StageTimer:
    """Times one request's consecutive stages (parse, compute, serialize) into
    `genserve_stage_seconds`, each stage from the end of the previous one."""

    def __init__(self, metrics: Metrics, endpoint: str) -> None:
        self._metrics = metrics
        self._endpoint = endpoint
        self._last = time.perf_counter()

    def done(self, model: str, version: int, stage: str) -> None:
        """Close `stage` now and start the next one."""
        now = time.perf_counter()
        self._metrics.stage.labels(model, str(version), self._endpoint, stage).observe(now - self._last)
        self._last = now
