"""Prometheus metrics, one registry per process (doc/operations.md).

Every layer records into the objects below; ``/metrics`` renders the registry and
``/status`` reads its counts (:class:`stilgar.stats.Stats`): the registry is the one
source of counts. Labels are bounded on purpose (browser write keys are public, so an
unbounded label would be a denial of service): a destination supplies the ``table`` label of
its rows (the ClickHouse destination's ``naming.table_label``: its fixed tables by name,
every per-event table as ``table="event"``).
"""

import os
import platform
import re
import sys

import prometheus_client
from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector,
                               ProcessCollector, generate_latest)

from . import __version__

# A counter's _created series doubles the output for a value nobody graphs (and
# Prometheus 2 ignores it); the process start time is in process_start_time_seconds.
prometheus_client.disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)
# process_* (CPU, RSS, open fds, start time) and python_info, as every exporter has
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

REQUESTS = Counter(
    "stilgar_http_requests", "HTTP requests answered, by route and status.",
    ["route", "status"], registry=REGISTRY)
REQUESTS_RECEIVED = Counter(
    "stilgar_requests_received", "Event and pixel requests read whole and handed to the intake"
    " (/status events.received).", registry=REGISTRY)
EVENTS_RECEIVED = Counter(
    "stilgar_events_received", "Events received in requests that were read.", registry=REGISTRY)
EVENTS_ACCEPTED = Counter(
    "stilgar_events_accepted", "Events acknowledged with 200.", registry=REGISTRY)
EVENTS_DISCARDED = Counter(
    "stilgar_events_discarded", "Batch elements acknowledged with 200 but not storable (spooled as"
    " discard records for rudder_discards), by reason.", ["reason"], registry=REGISTRY)
EVENTS_BOTS = Counter(
    "stilgar_events_bots", "Events whose user agent is a crawler or automated client (enrich.bots),"
    " by the configured action (drop: not stored).", ["action"], registry=REGISTRY)
REQUESTS_REJECTED = Counter(
    "stilgar_requests_rejected", "Requests refused, by reason (snake_case; the text is in the log).",
    ["reason"], registry=REGISTRY)
REQUEST_DURATION = Histogram(
    "stilgar_http_request_duration_seconds",
    "From the request's headers to its answer (for events: the spool's fsync included), by route.",
    ["route"], registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
BUILD_INFO = Gauge(
    "stilgar_build_info", "Always 1; the labels name the versions running.",
    ["version", "python", "implementation", "twisted"], registry=REGISTRY, multiprocess_mode="max")
SPOOL_BYTES = Gauge(
    "stilgar_spool_bytes", "Bytes held in the local spool.", registry=REGISTRY,
    multiprocess_mode="livesum")
SPOOL_SKIPPED_BYTES = Gauge(
    "stilgar_spool_skipped_bytes", "Bytes of damaged spool records skipped or cut off since the start.",
    registry=REGISTRY, multiprocess_mode="livesum")
SPOOL_MAX_BYTES = Gauge(
    "stilgar_spool_max_bytes", "The spool's capacity (spool.max_size; one per worker, summed).",
    registry=REGISTRY, multiprocess_mode="livesum")
DESTINATION_BACKLOG = Gauge(
    "stilgar_destination_backlog", "Events accepted and not yet confirmed by the destination.",
    ["destination"], registry=REGISTRY, multiprocess_mode="livesum")
DESTINATION_UP = Gauge(
    "stilgar_destination_up", "1 when the destination is reachable.", ["destination"], registry=REGISTRY,
    multiprocess_mode="livemin")
ROWS_INSERTED = Counter(
    "stilgar_rows_inserted", "Rows confirmed by a destination, by base table ('event' for per-event tables).",
    ["destination", "table"], registry=REGISTRY)
ROWS_DISCARDED = Counter(
    "stilgar_rows_discarded", "Rows or values recorded in rudder_discards, by base table.",
    ["destination", "table"], registry=REGISTRY)
EVENTS_FORWARDED = Counter(
    "stilgar_events_forwarded", "Events confirmed by a destination, by event type (once per destination;"
    " /status events.forwarded).", ["type"], registry=REGISTRY)
INSERT_LATENCY = Histogram(
    "stilgar_insert_seconds", "Duration of one INSERT (or write) to a destination.",
    ["destination"], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

EVENTS_SUPPRESSED = Counter(
    "stilgar_events_suppressed", "Events of a suppressed subject answered 200 and not stored, by stage"
    " ('door': before the spool; 'delivery': spooled earlier, dropped before a destination, once per"
    " destination).",
    ["stage"], registry=REGISTRY)
EVENTS_CONSENT_REFUSED = Counter(
    "stilgar_events_consent_refused", "Events not delivered to a destination because their consent does"
    " not allow it, by destination, configured provider and reason.",
    ["destination", "provider", "reason"], registry=REGISTRY)
RETENTION_PARTITIONS_DROPPED = Counter(
    "stilgar_retention_partitions_dropped", "Day partitions dropped because all their rows are older than"
    " the destination's retention.", ["destination"], registry=REGISTRY)

def _set_build_info():
    import twisted
    BUILD_INFO.labels(version=__version__, python=platform.python_version(),
                      implementation=sys.implementation.name, twisted=twisted.__version__).set(1)


_set_build_info()

_NOT_A_WORD = re.compile(r"[^a-z0-9]+")


def reason_label(reason):
    """The bounded, snake_case ``reason`` label of a refusal's text
    (``invalid json`` -> ``invalid_json``; text after a ``:`` may be the client's: dropped)."""
    head = str(reason).split(":", 1)[0].lower()
    return _NOT_A_WORD.sub("_", head).strip("_") or "other"


def count_bot(action):
    """One event from a bot, handled by ``enrich.bots.action``."""
    EVENTS_BOTS.labels(action=action).inc()


def counts(counter):
    """{label values (a tuple, ``()`` when unlabelled): int} of a counter, as this process
    counted them (with ``server.workers > 1`` too: each worker has its own values)."""
    found = {}
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                found[tuple(sample.labels.values())] = int(sample.value)
    return found


def render():
    """The registry in Prometheus text exposition format; with ``server.workers > 1``
    (``PROMETHEUS_MULTIPROC_DIR`` set by the parent) every worker's values, aggregated."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        PlatformCollector(registry=registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)
