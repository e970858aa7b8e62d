"""The ``console`` destination: each event as one JSON line, to stdout or a file (dry runs).

Writes happen on a thread of their own, one at a time and in order, so a slow terminal or disk
never blocks the reactor; a write's Deferred fires once its lines were handed to the kernel. At
most ``max_buffer`` bytes wait for that thread: past it, :meth:`Console.write` fails with
:class:`TransientError` and the forwarder retries later (the spool holds the events meanwhile).
Standard output is the process's file descriptor 1 itself: twistd redirects ``sys.stdout`` into
its log.
"""

import os

import attr
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer, provider

from ..jsoncodec import dumps
from ..units import ConfigError, parse_size
from .base import IDestination, IDestinationType, TransientError

__all__ = ["ConsoleType", "ConsoleSettings", "Console"]

log = Logger(namespace="stilgar.destinations.console")

STDOUT = "-"


@attr.s(frozen=True)
class ConsoleSettings:
    path: str = attr.ib(default=STDOUT)        # '-': standard output; else a file, appended to
    max_buffer: int = attr.ib(default=16 << 20)


@provider(IDestinationType)
class ConsoleType:
    @staticmethod
    def parse_settings(settings, where, warn):
        fields = {}
        for key, value in settings.items():
            if key in ("type", "name", "write_keys"):
                continue
            if key == "path":
                if not isinstance(value, str) or not value.strip():
                    raise ConfigError(f"{where}.path", "expected a file path or '-' (standard output)")
                fields["path"] = value
            elif key == "max_buffer":
                fields["max_buffer"] = parse_size(value, f"{where}.max_buffer")
                if fields["max_buffer"] <= 0:
                    raise ConfigError(f"{where}.max_buffer", "must be more than 0 bytes")
            else:
                warn(f"{where}.{key}: unknown key, ignored")
        return ConsoleSettings(**fields)

    @staticmethod
    def default_name(settings):
        return "console" if settings.path == STDOUT else f"console:{settings.path}"

    @staticmethod
    def build(name, write_keys, settings, reactor):
        return Console(name=name, write_keys=frozenset(write_keys), settings=settings, reactor=reactor)


def lines(events):
    """The bytes written for ``events``: one compact JSON document and a newline each."""
    return b"".join(dumps(event) + b"\n" for event in events)


@implementer(IDestination)
@attr.s
class Console:
    name = attr.ib()
    write_keys = attr.ib(converter=frozenset)
    settings = attr.ib()
    reactor = attr.ib(repr=False)
    # runs a blocking callable off the reactor thread, in submission order; returns a Deferred
    run = attr.ib(default=None, repr=False)
    written = attr.ib(default=0, init=False)
    last_error = attr.ib(default=None, init=False)
    _fd = attr.ib(default=None, init=False)
    _pool = attr.ib(default=None, init=False, repr=False)
    _waiting_bytes = attr.ib(default=0, init=False)
    _waiting_events = attr.ib(default=0, init=False)
    _up = attr.ib(default=False, init=False)
    _since = attr.ib(default=None, init=False)

    def start(self):
        if self.run is None:
            self._pool = ThreadPool(1, 1, name=f"stilgar-{self.name}")
            self._pool.start()
            self.run = lambda f, *a: threads.deferToThreadPool(self.reactor, self._pool, f, *a)
        self._set_up(False)
        return self.run(self._open).addCallbacks(lambda _: self._set_up(True), self._failed)

    def _open(self):
        if self._fd is None:
            if self.settings.path == STDOUT:
                self._fd = os.dup(1)
            else:
                self._fd = os.open(self.settings.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _write_all(self, data):
        self._open()
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError:
            self._close()           # the next attempt opens the path again
            raise

    def write(self, events):
        if not events:
            return defer.succeed(None)
        data = lines(events)
        if self._waiting_bytes + len(data) > self.settings.max_buffer and self._waiting_bytes:
            return defer.fail(TransientError(f"console {self.name}: {self._waiting_bytes} bytes waiting"))
        self._waiting_bytes += len(data)
        self._waiting_events += len(events)

        def done(result, ok):
            self._waiting_bytes -= len(data)
            self._waiting_events -= len(events)
            if ok:
                self.written += len(events)
                self._set_up(True)
                return None
            self._failed(result)
            raise TransientError(f"console {self.name}: {result.getErrorMessage()}")
        return self.run(self._write_all, data).addCallbacks(done, done, callbackArgs=(True,),
                                                            errbackArgs=(False,))

    def _set_up(self, up):
        if up != self._up or self._since is None:
            self._up = up
            self._since = self.reactor.seconds()
        if up:
            self.last_error = None

    def _failed(self, failure):
        failure.trap(OSError)
        self.last_error = failure.getErrorMessage()
        log.error("console {name}: cannot write to {path}: {error}", name=self.name, path=self.settings.path,
                  error=self.last_error)
        self._set_up(False)

    def flush(self):
        # the single thread runs in order: this fires after every earlier write
        return self.run(lambda: None) if self.run is not None else defer.succeed(None)

    @defer.inlineCallbacks
    def stop(self):
        if self.run is None:
            return
        yield self.flush()
        yield self.run(self._close)
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.stop()

    def _close(self):
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass

    def buffered(self):
        return self._waiting_events

    def health(self):
        return {"up": self._up, "since": self._since}

    def status(self):
        return {"status": "OK" if self._up else "DOWN", "type": "console", "path": self.settings.path,
                "written": self.written, "buffered": self._waiting_events,
                "buffered_bytes": self._waiting_bytes, "discarded": 0, "last_error": self.last_error}
