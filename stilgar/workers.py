"""``server.workers: N``: N processes serving one port (doc/operations.md, "Workers").

The process twistd starts becomes the *parent*: it binds the listening
sockets itself, then runs N *workers*, each a ``twistd -n stilgar --worker i
--worker-fd FD`` child that inherits a listening socket and serves it
(:class:`AdoptedSocketEndpoint`). The parent accepts nothing itself. Each
worker gets a socket of its own on the same port (``SO_REUSEPORT``: the kernel
balances connections evenly; measured, a single shared socket left one worker
holding most keep-alive connections), or one shared socket where the option
is missing.

- Each worker is a whole collector with its own spool directory
  (``spool.path/worker-<i>``, locked by the spool); a restarted worker gets the
  same index, so it adopts the directory (and the backlog) of the one that died.
- A worker that dies is restarted after a delay (the one backoff,
  ``stilgar/backoff.py``: 0.5 s doubling to 30 s, no jitter; back to 0.5 s once
  a worker has lived a minute). When every worker has died within 10 s of its
  start 5 times in a row, the parent gives up and stops.
- SIGTERM/SIGINT to the parent is passed to every worker, which closes its
  listener and flushes as usual; the parent waits for them
  (``forwarder.shutdown_timeout`` plus a margin, then SIGKILL) and exits.
- A worker watches its standard input, a pipe from the parent: if the parent
  dies (even by SIGKILL) the worker stops cleanly instead of lingering
  (:class:`ParentWatchService`).
- Metrics: the parent gives its workers ``PROMETHEUS_MULTIPROC_DIR`` (a fresh
  directory, removed at exit); every worker's ``/metrics`` renders all of them
  through prometheus-client's ``MultiProcessCollector``.

This module knows processes and sockets only: the collector a worker runs is
built by ``stilgar.service.make_service`` (composed in ``stilgar.launch``).
"""

import os
import shutil
import signal
import socket
import sys
import tempfile
import threading

import attr
from twisted.application import service
from twisted.internet import abstract, defer, error, fdesc, protocol
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from .backoff import Backoff
from .lifecycle import ProcessService
from .live import LIVE_DIR_ENV
from .systemd import tell_systemd

__all__ = ["make_parent_service", "ParentService", "AdoptedSocketEndpoint", "ParentWatchService",
           "listen_socket", "worker_command", "tcp_address"]

log = Logger(namespace="stilgar.workers")

# twistd, finding first the directories in %r (the parent's own plugin: see plugin_dirs)
TWISTD_RUN = ("import sys, twisted.plugins; p = twisted.plugins.__path__; p[:0] = [d for d in %r if d not in p]; "
              "from twisted.scripts.twistd import run; sys.exit(run())")
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"


# -- the parent -----------------------------------------------------------------

def split_description(description):
    """The fields of a Twisted endpoint string: ``:`` separates them, ``\\`` escapes one character."""
    fields, current, chars = [], [], iter(description)
    for char in chars:
        if char == "\\":
            current.append(next(chars, ""))
        elif char == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    return fields


def tcp_address(config, reactor):
    """(family, host, port, backlog) of the configured TCP listener (at least 1024 queued)."""
    backlog = 1024
    if config.server.listen:
        endpoint = serverFromString(reactor, config.server.listen)      # a bad string raises here
        kind, *fields = split_description(config.server.listen)
        if not isinstance(endpoint, (TCP4ServerEndpoint, TCP6ServerEndpoint)) or kind not in ("tcp", "tcp6"):
            raise ValueError(f"server.workers > 1 needs a tcp listener, not {config.server.listen!r}")
        named = dict(field.partition("=")[::2] for field in fields if "=" in field)
        positional = [field for field in fields if "=" not in field]
        args = {**dict(zip(("port", "interface", "backlog"), positional)), **named}
        host = args.get("interface") or ("::" if kind == "tcp6" else "0.0.0.0")
        port, backlog = int(args["port"]), max(int(args.get("backlog", 50)), backlog)
    else:
        host, port = config.server.ip, config.server.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return family, host, port, backlog


def listen_socket(family, host, port, backlog=1024, reuseport=False):
    """A bound, listening, non-blocking, inheritable TCP socket."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


def plugin_dirs():
    """The directory of the stilgar twistd plugin this process runs, if loaded.

    A worker runs the same plugin as its parent: a source tree's
    ``twisted_plugins/`` (the tests') comes before an installed, maybe older, copy.
    """
    module = sys.modules.get("twisted.plugins.stilgar_plugin")
    path = getattr(module, "__file__", None)
    return [os.path.dirname(os.path.abspath(path))] if path else []


def worker_command(config_path, index, fd, executable=None, logfile=None):
    """argv of worker ``index`` (a ``twistd -n stilgar`` that adopts ``fd``)."""
    log_args = [f"--logfile={os.path.abspath(logfile)}"] if logfile not in (None, "-") else []
    return [executable or sys.executable, "-c", TWISTD_RUN % (plugin_dirs(),), "-n", "--pidfile=", *log_args,
            "stilgar", "--config", config_path, "--worker", str(index), "--worker-fd", str(fd)]


class _ChildProtocol(protocol.ProcessProtocol):
    """The parent's end of one worker process."""

    def __init__(self, parent, index):
        self.parent = parent
        self.index = index
        self.ended = defer.Deferred()
        self.pid = None
        self.started_at = None

    def connectionMade(self):
        self.pid = self.transport.pid

    def processEnded(self, reason):
        self.parent._ended(self, reason.value)
        self.ended.callback(None)


class ParentService(service.Service):
    """Binds the sockets, runs and supervises the workers.

    ``spawn_process`` (default ``reactor.spawnProcess``) and ``bind`` (``(family,
    host, port, backlog)`` to listening sockets; default :meth:`_listen`) are
    injected by the unit tests, which run the supervisor on a ``Clock``.
    """

    name = "workers"
    restart_initial = 0.5
    restart_max = 30.0
    healthy_after = 60.0
    quick_death = 10.0      # a worker that dies this soon after its start failed to start
    give_up_after = 5       # consecutive failed starts of every worker: stop the parent
    stop_margin = 5.0
    reuseport = True        # one listening socket per worker (see _listen)

    def __init__(self, config, config_path, reactor, executable=None, logfile=None,
                 spawn_process=None, bind=None):
        self.logfile = logfile
        self.config = config
        self.config_path = os.path.abspath(config_path)
        self.reactor = reactor
        self.executable = executable or sys.executable
        self.spawn_process = spawn_process
        self.bind = bind or self._listen
        self.count = config.server.workers
        self.sockets = []
        self.workers = {}               # index -> _ChildProtocol (alive)
        self.backoffs = {}              # index -> Backoff of its restarts
        self.pending = {}               # index -> IDelayedCall of a restart
        self.restarts = 0
        self.failed_starts = {}         # index -> consecutive quick deaths
        self.metrics_dir = None
        self.live_dir = None            # the workers' live-view peer sockets (stilgar/live.py)
        self.stopping = False

    def startService(self):
        super().startService()
        try:
            family, host, port, backlog = tcp_address(self.config, self.reactor)
            self.sockets = self.bind(family, host, port, backlog)
        except (OSError, ValueError) as e:
            log.critical("cannot listen on {host}:{port}: {error}", host=self.config.server.ip,
                         port=self.config.server.port, error=e)
            self.reactor.callWhenRunning(self.reactor.stop)
            return
        self.metrics_dir = tempfile.mkdtemp(prefix="stilgar-metrics-")
        self.live_dir = tempfile.mkdtemp(prefix="stilgar-live-")
        address = self.sockets[0].getsockname()
        log.info("listening on {host}:{port} with {n} workers", host=address[0], port=address[1],
                 n=self.count)
        tell_systemd(f"READY=1\nSTATUS=listening on {address[0]}:{address[1]} with {self.count} workers")
        for index in range(self.count):
            self.backoffs[index] = Backoff(initial=self.restart_initial, maximum=self.restart_max, jitter=0.0)
            self._spawn(index)
        if self.config.geoip_databases() and threading.current_thread() is threading.main_thread():
            # SIGHUP reopens the GeoIP databases (doc/enrichment.md): pass it on to every
            # worker, instead of the default action, which would end the parent
            signal.signal(signal.SIGHUP, lambda signum, frame: self.reactor.callFromThread(self._hup))

    def _hup(self):
        for worker in list(self.workers.values()):
            self._signal(worker, "HUP")

    def _listen(self, family, host, port, backlog):
        """One socket per worker (SO_REUSEPORT), or one shared by all where that is missing.

        With one socket each, the kernel spreads new connections evenly over the
        workers; on a shared socket, the worker that wakes first tends to take a
        whole burst of keep-alive connections. The parent keeps every socket
        open, so connections that arrive while a worker restarts wait in its
        socket's queue for the new worker instead of being refused.
        """
        if not self.reuseport or not hasattr(socket, "SO_REUSEPORT"):
            return [listen_socket(family, host, port, backlog)]
        sockets = [listen_socket(family, host, port, backlog, reuseport=True)]
        port = sockets[0].getsockname()[1]          # the same port for all, even when asked for 0
        try:
            for _ in range(self.count - 1):
                sockets.append(listen_socket(family, host, port, backlog, reuseport=True))
        except OSError:
            for sock in sockets:
                sock.close()
            raise
        return sockets

    def _spawn(self, index):
        self.pending.pop(index, None)
        if self.stopping:
            return
        fd = self.sockets[index % len(self.sockets)].fileno()
        worker = _ChildProtocol(self, index)
        env = dict(os.environ)
        env[METRICS_ENV] = self.metrics_dir
        env[LIVE_DIR_ENV] = self.live_dir
        env.pop("LISTEN_FDS", None)
        argv = worker_command(self.config_path, index, fd, self.executable, self.logfile)
        spawn = self.spawn_process or self.reactor.spawnProcess
        spawn(worker, self.executable, argv, env=env, childFDs={0: "w", 1: 1, 2: 2, fd: fd})
        worker.started_at = self.reactor.seconds()
        self.workers[index] = worker
        log.info("worker {index} started (pid {pid})", index=index, pid=worker.pid)

    def _ended(self, worker, reason):
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        self._metrics_dead(worker.pid)
        code = getattr(reason, "exitCode", None)
        sig = getattr(reason, "signal", None)
        how = f"signal {sig}" if sig else f"exit code {code}"
        if self.stopping:
            log.info("worker {index} (pid {pid}) stopped: {how}", index=worker.index, pid=worker.pid, how=how)
            return
        lived = self.reactor.seconds() - (worker.started_at or 0)
        if lived >= self.healthy_after:
            self.backoffs[worker.index].reset()
        quick = lived < self.quick_death
        self.failed_starts[worker.index] = self.failed_starts.get(worker.index, 0) + 1 if quick else 0
        if all(self.failed_starts.get(i, 0) >= self.give_up_after for i in range(self.count)):
            log.critical("every worker failed to start {n} times in a row ({how}): stopping",
                         n=self.give_up_after, how=how)
            self.stopping = True
            self.reactor.callLater(0, self._stop_reactor)
            return
        delay = self.backoffs[worker.index].next_delay()
        self.restarts += 1
        log.error("worker {index} (pid {pid}) died ({how}) after {lived:.1f}s; restarting in {delay}s",
                  index=worker.index, pid=worker.pid, how=how, lived=lived, delay=delay)
        self.pending[worker.index] = self.reactor.callLater(delay, self._spawn, worker.index)

    def _stop_reactor(self):
        try:
            self.reactor.stop()
        except error.ReactorNotRunning:
            pass

    def _metrics_dead(self, pid):
        if self.metrics_dir is None or pid is None:
            return
        try:
            from prometheus_client import multiprocess
            multiprocess.mark_process_dead(pid, self.metrics_dir)
        except Exception:  # pragma: no cover - best effort
            pass

    def pids(self):
        return {index: w.pid for index, w in self.workers.items()}

    @defer.inlineCallbacks
    def stopService(self):
        super().stopService()
        self.stopping = True
        for call in self.pending.values():
            if call.active():
                call.cancel()
        self.pending.clear()
        workers = list(self.workers.values())
        for worker in workers:
            self._signal(worker, "TERM")
        if workers:
            timeout = self.config.forwarder.shutdown_timeout + self.stop_margin
            done = defer.DeferredList([w.ended for w in workers])
            timer = self.reactor.callLater(timeout, self._kill_all, workers)
            yield done
            if timer.active():
                timer.cancel()
        self._remove_shared()
        log.info("stopped cleanly")

    def _remove_shared(self):
        """Close the sockets, remove the metrics and live-view directories."""
        for sock in self.sockets:
            sock.close()
        self.sockets = []
        for attribute in ("metrics_dir", "live_dir"):
            if getattr(self, attribute) is not None:
                shutil.rmtree(getattr(self, attribute), ignore_errors=True)
                setattr(self, attribute, None)

    def _kill_all(self, workers):
        for worker in workers:
            if not worker.ended.called:
                log.error("worker {index} (pid {pid}) did not stop in time: killed",
                          index=worker.index, pid=worker.pid)
                self._signal(worker, "KILL")

    @staticmethod
    def _signal(worker, name):
        try:
            worker.transport.signalProcess(name)
        except (error.ProcessExitedAlready, OSError):
            pass


def make_parent_service(config, config_path, reactor, process_log, logfile=None):
    """The tree of the parent process when ``server.workers > 1``.

    ``logfile``: the file twistd was told to log to (``-`` or None: stdout); the
    workers are told to log there too.
    """
    top = ProcessService(process_log, reactor)
    ParentService(config, config_path, reactor, logfile=logfile).setServiceParent(top)
    return top


# -- a worker ---------------------------------------------------------------------

@implementer(IStreamServerEndpoint)
@attr.s(eq=False)
class AdoptedSocketEndpoint:
    """Listens on ``fd``, a listening TCP socket inherited from the parent (``reactor.adoptStreamPort``).

    The reactor works on a duplicate; ``fd`` itself is closed once adopted, so
    the endpoint listens once. Twisted's port accepts a burst of pending
    connections per wake-up: harmless now that each worker has a socket of its
    own (``SO_REUSEPORT``); ``_FairPort``, which accepted one at a time so that
    workers on one shared socket took turns, is gone with the shared socket.
    """

    reactor = attr.ib()
    fd = attr.ib()

    def listen(self, factory):
        try:
            with socket.socket(fileno=os.dup(self.fd)) as probe:
                family = probe.family
            port = self.reactor.adoptStreamPort(self.fd, family, factory)
        except Exception:
            return defer.fail()
        os.close(self.fd)
        return defer.succeed(port)


class _ParentWatch(abstract.FileDescriptor):
    """Reads the worker's stdin (a pipe from the parent): EOF means the parent is gone."""

    def __init__(self, reactor, fd, on_lost):
        super().__init__(reactor)
        self.fd = fd
        self.on_lost = on_lost
        fdesc.setNonBlocking(fd)

    def fileno(self):
        return self.fd

    def doRead(self):
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            return error.ConnectionDone()
        return None

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.on_lost()


class ParentWatchService(service.Service):
    """Stops the worker when its parent process is gone (its stdin, a pipe, reaches EOF)."""

    name = "parent-watch"

    def __init__(self, reactor, fd=0):
        self.reactor = reactor
        self.fd = fd
        self.watch = None

    def startService(self):
        super().startService()
        try:
            os.fstat(self.fd)
        except OSError:
            return
        self.watch = _ParentWatch(self.reactor, self.fd, self._parent_gone)
        self.watch.startReading()
        # a stop that began otherwise (SIGTERM) needs no watching any more
        self.reactor.addSystemEventTrigger("before", "shutdown", self.stopService)

    def _parent_gone(self):
        if self.running:
            log.warn("the parent process is gone: stopping")
            self.reactor.callLater(0, self._stop)

    def _stop(self):
        try:
            self.reactor.stop()
        except error.ReactorNotRunning:
            pass

    def stopService(self):
        if self.running:
            super().stopService()
        if self.watch is not None:
            self.watch.stopReading()
            self.watch = None
