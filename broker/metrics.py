"""Prometheus metrics of one broker process (served at `/metrics` by broker/ops.py).

Each app gets its own CollectorRegistry, so several apps in one process (tests) never share or
collide on metrics. Two kinds of metrics:

- counters incremented where things happen, through the `count_*` functions below (called with
  the request, since the metrics live on the app);
- values read at scrape time from state the broker keeps anyway (subscribers, the hub's
  `delivered`/`slow_consumers`/`relayed` counters, the engine's `stats()`), so the hot
  fan-out path pays nothing for them.

Engine latency is reported by the engine itself to the observer given to `Engine.observe()`
(its operations, and on Redis each command); engine state comes from `Engine.stats()`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from broker.context import BrokerContext
from broker.vocabulary import (
    CHANNEL_STATES,
    TERMINAL_EVENT_TYPES,
    TRANSPORT_OF_ENDPOINT,
    TRANSPORTS,
)

# Last path segment of a reader route -> transport name used in metrics and logs.
READER_SEGMENTS = TRANSPORT_OF_ENDPOINT
# Engine calls are sub-millisecond in memory and around a millisecond on a nearby Redis.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


class Metrics:
    def __init__(self, ctx: BrokerContext) -> None:
        self.ctx = ctx
        self.registry = CollectorRegistry()
        r = self.registry
        self.channels_opened = Counter(
            "unbroken_channels_opened", "Channels opened through this broker's API.", registry=r
        )
        self.messages_written = Counter(
            "unbroken_messages_written",
            "Events appended through this broker's HTTP write API (duplicates excluded), by type.",
            ["type"],
            registry=r,
        )
        self.write_duplicates = Counter(
            "unbroken_write_duplicates",
            "Write requests recognised as retries (writer/seq or Idempotency-Key) and not stored.",
            registry=r,
        )
        self.reader_requests = Counter(
            "unbroken_reader_requests",
            "Read requests accepted, by transport.",
            ["transport"],
            registry=r,
        )
        self.resumes = Counter(
            "unbroken_resumes",
            "Read requests that sent a last event id (reconnects and resumes; for long-poll, "
            "every poll after the first), by transport.",
            ["transport"],
            registry=r,
        )
        self.http_errors = Counter(
            "unbroken_http_errors",
            "Error responses, by HTTP status and the error code of the JSON body.",
            ["status", "code"],
            registry=r,
        )
        self.engine_seconds = Histogram(
            "unbroken_engine_operation_seconds",
            "Latency of storage engine operations, by engine and operation.",
            ["engine", "operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.redis_seconds = Histogram(
            "unbroken_redis_command_seconds",
            "Latency of Redis commands sent by the engine (not its live feed), by command.",
            ["command"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Series that exist from the start, so rate() and dashboards see 0 rather than nothing.
        # (Kept per label value: labels() hashes and locks on every call, a per-request cost.)
        self.readers_by_transport = {t: self.reader_requests.labels(t) for t in TRANSPORTS}
        self.resumes_by_transport = {t: self.resumes.labels(t) for t in TRANSPORTS}
        event_types = ("message", *TERMINAL_EVENT_TYPES)
        self.written_by_type = {t: self.messages_written.labels(t) for t in event_types}
        r.register(_StateCollector(ctx))
        ProcessCollector(registry=r)  # CPU, memory, open files of this process

    def totals(self) -> dict[str, float]:
        """Every counter and gauge summed over its labels, keyed by sample name (for the
        dashboard's JSON stats, which wants broker-wide rates, not breakdowns)."""
        sums: dict[str, float] = {}
        for family in self.registry.collect():
            if family.type not in ("counter", "gauge") or family.name.startswith("process_"):
                continue
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
        return sums


class _StateCollector(Collector):
    """Values the broker already tracks, read when Prometheus scrapes."""

    def __init__(self, ctx: BrokerContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        hub, engine = self.ctx.hub, self.ctx.engine
        subscribers = GaugeMetricFamily(
            "unbroken_subscribers",
            "Connected readers of this process, by transport.",
            labels=["transport"],
        )
        counts = hub.counts()
        for transport in TRANSPORTS:
            subscribers.add_metric([transport], counts.get(transport, 0))
        yield subscribers
        yield GaugeMetricFamily(
            "unbroken_watched_channels",
            "Channels with at least one reader on this process.",
            value=hub.channel_count,
        )
        yield CounterMetricFamily(
            "unbroken_messages_delivered",
            "Events handed to readers (one per event per reader).",
            value=hub.delivered,
        )
        relayed = CounterMetricFamily(
            "unbroken_events_relayed",
            "Events the engine delivered for channels with readers here, counted once whoever "
            "wrote them (HTTP API or a worker writing to Redis), by type; end + error + cancelled "
            "= channels seen ending.",
            labels=["type"],
        )
        relayed_counts = getattr(hub, "relayed", {})
        for event_type in ("message", "end", "error", "cancelled"):
            relayed.add_metric([event_type], relayed_counts.get(event_type, 0))
        yield relayed
        yield CounterMetricFamily(
            "unbroken_slow_consumers",
            "Readers disconnected because they did not keep up (they resume from their last id).",
            value=hub.slow_consumers,
        )
        yield GaugeMetricFamily(
            "unbroken_draining",
            "1 while the broker is shutting down.",
            value=int(self.ctx.draining),
        )
        yield GaugeMetricFamily(
            "unbroken_start_time_seconds",
            "When this broker process started (Unix time).",
            value=self.ctx.started_at,
        )
        stats = engine.stats()
        # Only an engine that can count its channels for free (the memory engine: a dict in
        # this process) reports them; on Redis that would be a scan per scrape, so there the
        # opened/relayed counters and redis-cli serve.
        states = {k[len("channels_") :]: v for k, v in stats.items() if k.startswith("channels_")}
        if states:
            family = GaugeMetricFamily(
                "unbroken_channels",
                "Channels stored (memory engine only), by state.",
                labels=["state"],
            )
            for state in dict.fromkeys([*CHANNEL_STATES, *states]):
                family.add_metric([state], states.get(state, 0))
            yield family
        if "feed_reconnects" in stats:
            yield CounterMetricFamily(
                "unbroken_redis_reconnects",
                "Reconnections of the Redis live feed.",
                value=stats["feed_reconnects"],
            )
        if "feed_connections" in stats:
            yield GaugeMetricFamily(
                "unbroken_redis_feed_connections",
                "Open live-feed connections to Redis (one per shard with watched channels).",
                value=stats["feed_connections"],
            )


METRICS: web.AppKey[Metrics] = web.AppKey("unbroken_metrics", Metrics)


def install(app: web.Application, ctx: BrokerContext) -> Metrics:
    metrics = app[METRICS] = Metrics(ctx)
    ctx.engine.observe(_EngineLatency(metrics))
    # Outermost, so it sees the final response of every route, including unknown paths.
    app.middlewares.insert(0, _error_counter)
    return metrics


class _EngineLatency:
    """The engine's observer: operation and command latencies into the histograms."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def operation(self, engine: str, name: str, seconds: float) -> None:
        self.metrics.engine_seconds.labels(engine, name).observe(seconds)

    def command(self, name: str, seconds: float) -> None:
        self.metrics.redis_seconds.labels(name).observe(seconds)


def _metrics(request: web.Request) -> Metrics | None:
    # None for apps built without ops.setup (e.g. a test of the bare core).
    return request.app.get(METRICS)


def count_opened(request: web.Request) -> None:
    if metrics := _metrics(request):
        metrics.channels_opened.inc()


def count_written(request: web.Request, event_type: str, count: int, duplicate: bool) -> None:
    if metrics := _metrics(request):
        if duplicate:
            metrics.write_duplicates.inc()
        else:
            child = metrics.written_by_type.get(event_type)
            if child is None:
                child = metrics.written_by_type[event_type] = metrics.messages_written.labels(
                    event_type
                )
            child.inc(count)


def count_reader(request: web.Request, last_event_id: str | None) -> None:
    if metrics := _metrics(request):
        transport = READER_SEGMENTS.get(request.path.rsplit("/", 1)[-1])
        if transport is None:
            metrics.reader_requests.labels("other").inc()
            if last_event_id is not None:
                metrics.resumes.labels("other").inc()
            return
        metrics.readers_by_transport[transport].inc()
        if last_event_id is not None:
            metrics.resumes_by_transport[transport].inc()


def count_error(request: web.Request, status: int, code: str) -> None:
    if metrics := _metrics(request):
        metrics.http_errors.labels(str(status), code).inc()


@web.middleware
async def _error_counter(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    response = await handler(request)
    if response.status >= 400:
        count_error(request, response.status, _error_code(response))
    return response


def _error_code(response: web.StreamResponse) -> str:
    # Errors are rare, so reading the code back out of the JSON body costs nothing that matters
    # and keeps error_middleware untouched.
    body = getattr(response, "body", None)
    if isinstance(body, bytes | bytearray):
        try:
            code = json.loads(body)["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = None
        if isinstance(code, str):
            return code
    return f"http_{response.status}"
