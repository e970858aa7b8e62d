"""Assembling the collector: configuration in, a ``MultiService`` out.

Used by the twistd plugin (``twistd stilgar --config ...``) and by
``stilgar.tac`` (``twistd -y stilgar.tac``).
"""

import functools
import gc
import os
import signal
import sys
import threading

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import ILogObserver, Logger

from . import metrics
from .config import format_problems, load_config
from .destinations import destination_type
from .enrichment import Enrichment, GeoDatabaseError, open_mmdb
from .forwarder import Forwarder
from .live import LIVE_DIR_ENV, LiveHub, PeerService
from .logs import handle_sigusr1, make_observer, open_log_file
from .stats import Stats
from .systemd import notify
from .units import ConfigError
from .web.app import StilgarApp

__all__ = ["StilgarService", "WebService", "make_service", "make_application", "load_or_exit"]

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


def tell_systemd(state):
    """sd_notify ``state`` when under systemd (Type=notify); a failure is logged, never raised."""
    try:
        notify(state)
    except OSError as e:
        log.warn("cannot notify systemd ({state}): {error}", state=state.split("\n", 1)[0], error=e)


class WebService(service.Service):
    """Listens on the configured endpoint; stopping closes the listener first."""

    name = "web"

    def __init__(self, description, site, intake, reactor):
        self.description = description
        self.site = site
        self.intake = intake
        self.reactor = reactor
        self.port = None

    def startService(self):
        super().startService()
        endpoint = serverFromString(self.reactor, self.description)
        d = endpoint.listen(self.site)
        d.addCallback(self._listening)
        d.addErrback(self._failed)
        return d

    def _listening(self, port):
        self.port = port
        address = describe_address(port.getHost())
        log.info("listening on {address}", address=address)
        # the spool was opened and started before the listener (StilgarService.startService)
        tell_systemd(f"READY=1\nSTATUS=listening on {address}\nMAINPID={os.getpid()}")

    def _failed(self, failure):
        # once, through the log (stdout under -n, else the log file): no second copy on stderr
        log.critical("cannot listen on {description}: {error}", description=self.description,
                     error=failure.getErrorMessage())
        # stop cleanly (the spool is closed), then exit non-zero so supervisors see it
        self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        self.reactor.callWhenRunning(self.reactor.stop)

    def stopService(self):
        super().stopService()
        # new requests on open connections get 503 from here on
        self.intake.stopping = True
        if self.port is not None:
            port, self.port = self.port, None
            return defer.maybeDeferred(port.stopListening)
        return defer.succeed(None)


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


class StilgarService(service.MultiService):
    """The whole collector: destinations, forwarder (with its spool) and web."""

    def __init__(self, config, forwarder, web, spool, observer, stream=None, reactor=None):
        super().__init__()
        self.config = config
        self.stream = stream      # where the observer writes (a RotatingLogFile for --logfile)
        self.reactor = reactor
        self.forwarder = forwarder
        self.web = web
        self.spool = spool
        self.observer = observer
        forwarder.setServiceParent(self)
        web.setServiceParent(self)

    def setServiceParent(self, parent):
        # twistd starts its log observer after building the application: offer ours
        if observer_holder := getattr(parent, "setComponent", None):
            if parent.getComponent(ILogObserver, None) is None:
                observer_holder(ILogObserver, self.observer)
        return super().setServiceParent(parent)

    def startService(self):
        for warning in self.config.warnings:
            log.warn("configuration: {warning}", warning=warning)
        # Everything built so far (Twisted, Klein, the app) lives for the whole run: move it
        # out of the collector's sight, so that full collections stop pausing the reactor for
        # tens of milliseconds (they walked every module object on each pass).
        if hasattr(gc, "freeze"):   # CPython 3.7+; PyPy's collector has no such need
            gc.collect()
            gc.freeze()
        if self.reactor is not None and hasattr(self.reactor, "callFromThread"):
            handle_sigusr1(self.reactor, self.stream)
        if self.spool is not None:
            self.spool.start()
        super().startService()

    @defer.inlineCallbacks
    def stopService(self):
        # strictly in order: close the listener, then flush and close the spool
        tell_systemd("STOPPING=1")
        service.Service.stopService(self)
        yield self.web.stopService()
        # regulations and retention first: a running deletion stops before its destinations
        for child in list(self):
            if child not in (self.web, self.forwarder):
                yield defer.maybeDeferred(child.stopService)
        yield self.forwarder.stopService()
        for child in list(self):
            if child is not self.web and child is not self.forwarder and child.running:
                yield child.stopService()
        log.info("stopped cleanly")


def make_service(config, reactor=None, stream=None, worker=0, logfile=None):
    """Build the :class:`StilgarService` for a loaded configuration.

    ``logfile``: the file twistd was told to log to (``-`` or None: stdout).
    """
    if reactor is None:
        from twisted.internet import reactor
    if stream is None and logfile not in (None, "-"):
        stream = open_log_file(logfile, config.logging)
    stats = Stats(up_since=reactor.seconds())
    destinations = []
    previews = {}
    for dest in config.destinations:
        kind = destination_type(dest.type)
        destinations.append(kind.build(dest.name, dest.write_keys, dest.settings, reactor))
        if hasattr(kind, "preview"):        # optional: the rows an event becomes (the live view)
            previews[dest.name] = functools.partial(kind.preview, dest.settings)
    spool = None
    if config.spool.enabled:
        from .spool import Spool
        spool = Spool(os.path.join(config.spool.path, f"worker-{worker}"), fsync=config.spool.fsync,
                      max_size=config.spool.max_size, segment_size=config.spool.segment_size,
                      commit_window=config.spool.commit_window, reactor=reactor)
        spool.open()
    from .regulations.wiring import build_privacy
    privacy = build_privacy(config, destinations, reactor, worker)
    metrics.SPOOL_MAX_BYTES.set(config.spool.max_size if spool is not None else 0)
    forwarder = Forwarder(destinations, spool=spool, stats=stats, reactor=reactor,
                          max_queue_size=config.forwarder.max_queue_size,
                          max_queue_bytes=config.forwarder.max_queue_bytes,
                          shutdown_timeout=config.forwarder.shutdown_timeout,
                          delivery_filter=privacy.delivery_filter)
    forwarder.load_recent()
    try:
        enrichment = Enrichment.from_config(config.enrich_by_write_key(), reactor, on_bot=metrics.count_bot)
    except GeoDatabaseError as e:
        raise ConfigError("enrich.geoip.database", str(e)) from None
    live = make_live_hub(config, forwarder, stats, destinations, previews, reactor, worker)
    if privacy.delivery_filter is not None:
        live.hide = privacy.delivery_filter.suppressed   # the live view shows nothing that is not stored
    app = StilgarApp(config, forwarder, stats, reactor, regulations=privacy.regulations, live=live,
                     enrichment=enrichment)
    web = WebService(config.server.endpoint_description(), app.site(), forwarder, reactor)
    top = StilgarService(config, forwarder, web, spool, make_observer(config.logging, stream, reactor),
                         stream=stream, reactor=reactor)
    for child in privacy.services:
        child.setServiceParent(top)
    if enrichment.databases:
        EnrichService(enrichment, reactor).setServiceParent(top)
    top.live = live
    if live.peer_dir is not None and config.debug.enabled:
        PeerService(live, reactor).setServiceParent(top)
    return top


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


EX_CONFIG = 78   # sysexits.h: a configuration error (the unit file does not restart on it)


def load_or_exit(path=None, listen=None, warnings=True, stderr=None):
    """Load the configuration, or print every problem (one line each, with its
    file and line) and exit with :data:`EX_CONFIG`. Runs before twistd
    daemonises, so stderr still reaches the operator; ``warnings`` are printed
    there too (and logged again at start)."""
    stderr = stderr or sys.stderr
    try:
        config = load_config(path, listen=listen)
        check_enrich_files(config)
    except ConfigError as e:
        for line in format_problems(e).splitlines():
            stderr.write(f"stilgar: configuration error: {line}\n")
        raise SystemExit(EX_CONFIG)
    if warnings:
        for warning in config.warnings:
            stderr.write(f"stilgar: configuration warning: {warning}\n")
    return config


def make_application(path=None, listen=None):
    """An ``Application`` for ``twistd -y stilgar.tac``."""
    config = load_or_exit(path, listen)
    try:
        if config.server.workers > 1:
            from .workers import make_parent_service
            top = make_parent_service(config, config.path)
        else:
            top = make_service(config)
    except Exception as e:
        sys.stderr.write(f"stilgar: cannot start: {e}\n")
        raise SystemExit(1)
    application = service.Application("stilgar")
    top.setServiceParent(application)
    return application
