"""Assembling one collector: configuration in, a service tree out.

:func:`make_service` is the one assembly; the twistd plugin, ``stilgar.tac`` and
every worker of ``server.workers`` call it (through ``stilgar.launch``), each
with its own endpoint. The tree starts in order and stops in reverse
(``stilgar/lifecycle.py``, doc/operations.md "Stopping")::

    spool -> forwarder -> regulations, retention -> enrich -> live-peers -> web

so the listener closes first, the forwarder then flushes and saves its cursors,
and the spool is closed last.
"""

import functools
import gc
import os
import signal
import threading

import attr
from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from . import metrics
from .destinations import destination_type
from .enrichment import Enrichment, GeoDatabaseError, open_mmdb
from .forwarder import Forwarder
from .lifecycle import ProcessService, SpoolService
from .live import LIVE_DIR_ENV, LiveHub, PeerService
from .logs import ProcessLog
from .stats import Stats
from .systemd import tell_systemd
from .units import ConfigError
from .web.app import StilgarApp

__all__ = ["StilgarService", "AnnouncingEndpoint", "EnrichService", "make_service", "check_enrich_files"]

log = Logger(namespace="stilgar")


def describe_address(address):
    """``host:port`` for IP, ``unix:/path`` for a unix socket, else the address' repr."""
    if hasattr(address, "port") and hasattr(address, "host"):
        host = address.host
        return f"[{host}]:{address.port}" if ":" in host else f"{host}:{address.port}"
    name = getattr(address, "name", None)
    if name is not None:
        return "unix:" + (name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name))
    return repr(address)


def announce_ready(reactor, port):
    """Log where the collector listens; tell systemd it is ready once the reactor runs
    (every service has started by then: the spool's writer, the forwarder)."""
    address = describe_address(port.getHost())
    log.info("listening on {address}", address=address)
    reactor.callWhenRunning(tell_systemd, f"READY=1\nSTATUS=listening on {address}\nMAINPID={os.getpid()}")


@implementer(IStreamServerEndpoint)
@attr.s(eq=False)
class AnnouncingEndpoint:
    """Listens through ``endpoint``, then calls ``announce(port)``.

    If listening fails, the failure is logged once (``cannot listen on
    <description>``) and the process stops cleanly, then exits with code 1 so
    that supervisors see it; the Deferred then fires with None (no port), which
    ``StreamServerEndpointService`` stops without, instead of logging the
    failure a second time.
    """

    endpoint = attr.ib()
    description = attr.ib()
    reactor = attr.ib()
    announce = attr.ib()

    def listen(self, factory):
        d = self.endpoint.listen(factory)
        d.addCallbacks(self._listening, self._failed)
        return d

    def _listening(self, port):
        self.announce(port)
        return port

    def _failed(self, failure):
        # once, through the log (stdout under -n, else the log file): no second copy on stderr
        log.critical("cannot listen on {description}: {error}", description=self.description,
                     error=failure.getErrorMessage())
        self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        self.reactor.callWhenRunning(self.reactor.stop)
        return None


def configured_endpoint(config, reactor):
    """The endpoint of ``server.listen`` (or ``server.ip``/``port``), announcing readiness."""
    description = config.server.endpoint_description()
    return AnnouncingEndpoint(serverFromString(reactor, description), description, reactor,
                              functools.partial(announce_ready, reactor))


class EnrichService(service.Service):
    """Checks the GeoIP databases for replacement while running; SIGHUP reopens them now."""

    name = "enrich"

    def __init__(self, enrichment, reactor):
        self.enrichment = enrichment
        self.reactor = reactor
        self._previous_handler = None

    def privilegedStartService(self):
        # before any service listens: a SIGHUP once "listening on" is logged must not end the process
        super().privilegedStartService()
        self._install()

    def startService(self):
        super().startService()
        self._install()
        self.enrichment.start()

    def _install(self):
        if self._previous_handler is None and self.enrichment.databases \
                and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGHUP, self._sighup)

    def _sighup(self, signum, frame):
        log.info("SIGHUP: reopening the GeoIP databases")
        self.reactor.callFromThread(self.enrichment.reload)

    def stopService(self):
        super().stopService()
        if self._previous_handler is not None:
            signal.signal(signal.SIGHUP, self._previous_handler)
            self._previous_handler = None
        self.enrichment.stop()


class StilgarService(ProcessService):
    """One whole collector; :func:`make_service` adds its children in start order."""

    def __init__(self, config, process_log, reactor, forwarder):
        super().__init__(process_log, reactor)
        self.config = config
        self.forwarder = forwarder
        self.spool = None       # the Spool (None when spool.enabled is false)
        self.web = None
        self.live = None
        self._gc_thresholds = None     # the thresholds before ours, put back on stop

    def startService(self):
        for warning in self.config.warnings:
            log.warn("configuration: {warning}", warning=warning)
        # Everything built so far (Twisted, Klein, the app) lives for the whole run: move it
        # out of the collector's sight, so that full collections stop pausing the reactor for
        # tens of milliseconds (they walked every module object on each pass).
        if hasattr(gc, "freeze"):   # CPython 3.7+; PyPy's collector has no such need
            gc.collect()
            gc.freeze()
            self._gc_thresholds = gc.get_threshold()
            gc.set_threshold(*GC_THRESHOLDS)
        super().startService()

    def stopService(self):
        # new requests on open connections get 503 from here on (the listener closes next)
        self.forwarder.stopping = True
        if self._gc_thresholds is not None:
            gc.set_threshold(*self._gc_thresholds)
            self._gc_thresholds = None
        d = super().stopService()
        d.addCallback(lambda _: log.info("stopped cleanly"))
        return d


# Events are trees of dicts freed by reference counting; what the cycle collector
# finds in them is nothing. CPython's default (a young collection every 700
# allocations, the middle generation every 10 of those) walked every event in flight
# several times on its way, and the middle generation, which holds them all, paused the
# reactor: end to end (bench/run e2e-batch100-w2-fsync, runs interleaved) 55-61 µs of
# collector CPU per event by default, 40-46 with (50 000, 20, 100), and with these
# 34 600-39 100 events/s instead of 30 000-32 900, p99 260-300 ms instead of 390-430
# (doc/performance.md). Cyclic garbage that outlives a young collection waits seconds.
GC_THRESHOLDS = (50_000, 500, 1000)


def make_service(config, reactor=None, endpoint=None, worker=0, process_log=None):
    """The collector's service tree for a loaded configuration.

    ``endpoint``: where the web listens (default :func:`configured_endpoint`; a
    worker passes its inherited socket's); ``worker``: the index of this
    worker process (its spool is ``spool.path/worker-<i>``); ``process_log``:
    a :class:`stilgar.logs.ProcessLog` (default: the ``logging:`` section, stdout).
    """
    if reactor is None:
        from twisted.internet import reactor
    if endpoint is None:
        endpoint = configured_endpoint(config, reactor)
    if process_log is None:
        process_log = ProcessLog.from_config(config.logging, reactor)
    stats = Stats(up_since=reactor.seconds())
    destinations, previews = build_destinations(config, reactor)
    spooling = open_spool(config, worker, reactor)
    from .regulations.wiring import build_privacy
    privacy = build_privacy(config, destinations, reactor, worker)
    forwarder = build_forwarder(config, destinations, spooling, stats, privacy, reactor)
    try:
        enrichment = Enrichment.from_config(config.enrich_by_write_key(), reactor, on_bot=metrics.count_bot)
    except GeoDatabaseError as e:
        raise ConfigError("enrich.geoip.database", str(e)) from None
    live = make_live_hub(config, forwarder, stats, destinations, previews, reactor, worker)
    if privacy.delivery_filter is not None:
        live.hide = privacy.delivery_filter.suppressed   # the live view shows nothing that is not stored
    app = StilgarApp(config, forwarder, stats, reactor, regulations=privacy.regulations, live=live,
                     enrichment=enrichment)
    top = StilgarService(config, process_log, reactor, forwarder)
    top.live = live
    top.web = StreamServerEndpointService(endpoint, app.site())
    top.web.setName("web")
    if spooling is not None:
        top.spool = spooling.spool
        spooling.setServiceParent(top)
    children = [forwarder, *privacy.services]
    if enrichment.databases:
        children.append(EnrichService(enrichment, reactor))
    if live.peer_dir is not None and config.debug.enabled:
        children.append(PeerService(live, reactor))
    for child in children + [top.web]:
        child.setServiceParent(top)
    return top


def build_destinations(config, reactor):
    """The destinations, and the row previews of the kinds that have one (the live view)."""
    destinations, previews = [], {}
    for dest in config.destinations:
        kind = destination_type(dest.type)
        destinations.append(kind.build(dest.name, dest.write_keys, dest.settings, reactor))
        if hasattr(kind, "preview"):
            previews[dest.name] = functools.partial(kind.preview, dest.settings)
    return destinations, previews


def open_spool(config, worker, reactor):
    """The :class:`SpoolService` of this worker's spool directory, opened; None without a spool."""
    metrics.SPOOL_MAX_BYTES.set(config.spool.max_size if config.spool.enabled else 0)
    if not config.spool.enabled:
        return None
    from .spool import Spool
    spool = Spool(os.path.join(config.spool.path, f"worker-{worker}"), fsync=config.spool.fsync,
                  max_size=config.spool.max_size, segment_size=config.spool.segment_size,
                  commit_window=config.spool.commit_window, writer=config.spool.writer, reactor=reactor)
    return SpoolService.opened(spool)


def build_forwarder(config, destinations, spooling, stats, privacy, reactor):
    """The forwarder, with the newest spooled messageIds learnt (the spool is open)."""
    forwarder = Forwarder(destinations, spool=spooling.spool if spooling is not None else None,
                          stats=stats, reactor=reactor,
                          max_queue_size=config.forwarder.max_queue_size,
                          max_queue_bytes=config.forwarder.max_queue_bytes,
                          shutdown_timeout=config.forwarder.shutdown_timeout,
                          delivery_filter=privacy.delivery_filter)
    forwarder.load_recent()
    return forwarder


def check_enrich_files(config):
    """Open (and close) every GeoIP database the configuration names: a
    missing or unreadable one is a configuration error at start."""
    for path in sorted(config.geoip_databases()):
        try:
            _, reader = open_mmdb(path)
        except GeoDatabaseError as e:
            raise ConfigError("enrich.geoip.database", str(e)) from None
        reader.close()


def make_live_hub(config, forwarder, stats, destinations, previews, reactor, worker=0):
    """The live view's hub, fed by the app, the destinations' discards and /status."""
    routes = {}
    for dest in config.destinations:
        for key in dest.write_keys:
            routes.setdefault(key, []).append(dest.name)
    live = LiveHub.from_config(
        config.debug, reactor, worker=worker, previews=previews, routes=routes,
        peer_dir=os.environ.get(LIVE_DIR_ENV) or None, health_source=forwarder.health,
        status_source=lambda: {"events": stats.events_json(forwarder.queue_capacity()), **forwarder.status(True)})
    for destination in destinations:
        if hasattr(destination, "on_discards"):
            destination.on_discards = live.discards
    return live
