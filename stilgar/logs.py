"""Logging through twisted.logger: level, text or JSON lines, syslog (udp/tcp).

:func:`make_observer` builds one observer from the ``logging:`` section;
:class:`ProcessLog` holds it with the stream it writes to, and offers it as the
application's ``ILogObserver`` so that twistd uses it instead of its own.
"""

import datetime
import json
import os
import signal
import socket
import sys

import attr
from twisted.internet import protocol
from twisted.logger import (FilteringLogObserver, ILogObserver, LogLevel, LogLevelFilterPredicate,
                            formatEvent)
from twisted.logger import Logger
from twisted.python.logfile import LogFile
from zope.interface import implementer

__all__ = ["make_observer", "LEVELS", "RotatingLogFile", "open_log_file", "handle_sigusr1", "ProcessLog"]

log = Logger(namespace="stilgar.logs")

LEVELS = {
    "trace": LogLevel.debug, "debug": LogLevel.debug, "info": LogLevel.info,
    "warn": LogLevel.warn, "error": LogLevel.error, "off": None,
}
_LEVEL_NAMES = {LogLevel.debug: "DEBUG", LogLevel.info: "INFO", LogLevel.warn: "WARN",
                LogLevel.error: "ERROR", LogLevel.critical: "CRITICAL"}
_SYSLOG_SEVERITY = {LogLevel.debug: 7, LogLevel.info: 6, LogLevel.warn: 4,
                    LogLevel.error: 3, LogLevel.critical: 2}


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_text(text):
    """``text`` with each non-printable character (controls, ESC, newlines, C1
    controls, line separators) written as a Python-style escape, so that what
    a client sent (a request id, a path) cannot forge log lines or drive a
    terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _ESCAPES.get(c) or _escape_code(ord(c)) for c in text)


def _escape_code(code):
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _escaped_fields(event):
    # the event's own text fields (log_* keys are Twisted's); the format string is ours
    return {key: escape_text(value) if isinstance(value, str) and not key.startswith("log_") else value
            for key, value in event.items()}


def _message(event):
    text = formatEvent(_escaped_fields(event))
    failure = event.get("log_failure")
    if failure is not None:
        text = f"{text}\n{failure.getTraceback()}"
    return text


def _timestamp(event):
    t = event.get("log_time")
    dt = datetime.datetime.fromtimestamp(t, datetime.timezone.utc) if t else datetime.datetime.now(
        datetime.timezone.utc)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_text(event):
    """``<time> <LEVEL> [namespace] message``, as the original's lines."""
    level = _LEVEL_NAMES.get(event.get("log_level"), "INFO")
    return f"{_timestamp(event)} {level} [{event.get('log_namespace', '-')}] {_message(event)}\n"


def format_json(event):
    """One JSON object per line, with the event's own structured fields."""
    document = {
        "time": _timestamp(event),
        "level": _LEVEL_NAMES.get(event.get("log_level"), "INFO").lower(),
        "namespace": event.get("log_namespace", "-"),
        "message": _message(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in document or key in ("format", "message", "isError", "system"):
            continue
        if isinstance(value, str):
            document[key] = escape_text(value)
        elif isinstance(value, (int, float, bool)) or value is None:
            document[key] = value
    return json.dumps(document, ensure_ascii=False) + "\n"


@implementer(ILogObserver)
class StreamObserver:
    """Writes formatted events to a stream (stdout by default)."""

    def __init__(self, formatter, stream=None):
        self.formatter = formatter
        self.stream = stream if stream is not None else sys.stdout

    def __call__(self, event):
        try:
            self.stream.write(self.formatter(event))
            self.stream.flush()
        except Exception:  # a broken stdout must not take the collector down
            pass


class _TCPSyslogClient(protocol.Protocol):
    def connectionMade(self):
        self.factory.connected(self)

    def connectionLost(self, reason):
        self.factory.disconnected(self)


class _TCPSyslogFactory(protocol.ReconnectingClientFactory):
    protocol = _TCPSyslogClient
    maxDelay = 30
    max_buffered = 10000

    def __init__(self):
        self.client = None
        self.pending = []

    def connected(self, client):
        self.resetDelay()
        self.client = client
        for line in self.pending:
            client.transport.write(line)
        self.pending = []

    def disconnected(self, client):
        self.client = None

    def send(self, line):
        if self.client is not None:
            self.client.transport.write(line)
        elif len(self.pending) < self.max_buffered:
            self.pending.append(line)


@implementer(ILogObserver)
class SyslogObserver:
    """RFC 3164 lines to a syslog server over UDP or TCP (non-blocking)."""

    def __init__(self, config, formatter, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.facility = config.facility_code   # stilgar.config.SYSLOG_FACILITIES, the one table
        self.tag = f"{config.process}[{os.getpid()}]"
        self.hostname = socket.gethostname()
        self.formatter = formatter
        self.address = (config.host, config.port)
        self.protocol = config.protocol
        self._udp = None
        self._tcp = None
        if config.protocol == "tcp":
            self._tcp = _TCPSyslogFactory()
            reactor.connectTCP(config.host, config.port, self._tcp)

    def __call__(self, event):
        severity = _SYSLOG_SEVERITY.get(event.get("log_level"), 6)
        stamp = datetime.datetime.now().strftime("%b %d %H:%M:%S")
        body = self.formatter(event).rstrip("\n")
        line = f"<{self.facility * 8 + severity}>{stamp} {self.hostname} {self.tag}: {body}".encode(
            "utf-8", "replace")
        try:
            if self._tcp is not None:
                self._tcp.send(line + b"\n")
            else:
                if self._udp is None:
                    self._udp = self.reactor.listenUDP(0, protocol.DatagramProtocol())
                self._udp.write(line[:8192], self.address)
        except Exception:
            pass


def make_observer(logging_config, stream=None, reactor=None):
    """The observer for the ``logging:`` section (level-filtered)."""
    formatter = format_json if logging_config.format == "json" else format_text
    level = LEVELS.get(logging_config.level, LogLevel.info)
    if logging_config.syslog is not None:
        sink = SyslogObserver(logging_config.syslog, formatter if logging_config.format == "json"
                              else lambda e: f"[{e.get('log_namespace', '-')}] {_message(e)}", reactor)
    else:
        sink = StreamObserver(formatter, stream)
    if level is None:
        return FilteringLogObserver(sink, [lambda event: _reject()])
    return FilteringLogObserver(sink, [LogLevelFilterPredicate(defaultLogLevel=level)])


def _reject():
    from twisted.logger import PredicateResult
    return PredicateResult.no


# --------------------------------------------------------------------------
# The --logfile: size rotation, SIGUSR1 (doc/operations.md, "Logs")
# --------------------------------------------------------------------------

class RotatingLogFile(LogFile):
    """twistd's ``--logfile``, rotated past ``max_size`` bytes keeping ``keep`` old
    files (``name.1`` newest ... ``name.<keep>``); ``max_size`` 0: never by size
    (logrotate owns the file)."""

    def __init__(self, path, max_size, keep):
        directory, name = os.path.split(os.path.abspath(path))
        super().__init__(name, directory, rotateLength=max_size or None, maxRotatedFiles=keep)

    def moved_away(self):
        """True when the file at our path is not the one we write (logrotate renamed it)."""
        try:
            return os.stat(self.path).st_ino != os.fstat(self._file.fileno()).st_ino
        except OSError:
            return True

    def signalled(self):
        """SIGUSR1: reopen after an outside rotation; else rotate now (twistd's meaning),
        unless rotation is left to logrotate, when the file is only reopened."""
        if self.moved_away() or not self.rotateLength:
            self.reopen()
            return "reopened"
        self.rotate()
        return "rotated"


def open_log_file(path, logging_config):
    """The stream for twistd's ``--logfile``, with ``logging.rotate_size`` / ``rotate_keep``."""
    return RotatingLogFile(path, logging_config.rotate_size, logging_config.rotate_keep)


def handle_sigusr1(reactor, stream):
    """Install the SIGUSR1 handler: rotate or reopen ``stream`` when it is a log file.

    twistd installs its own only for its own log observer, which Stilgar replaces:
    without this one, SIGUSR1 (sent by logrotate, or an operator used to twistd)
    killed the process. Returns the previous handler."""
    def rotate():
        if isinstance(stream, RotatingLogFile):
            try:
                done = stream.signalled()
            except OSError as e:
                log.error("SIGUSR1: cannot rotate {path}: {error}", path=stream.path, error=e)
            else:
                log.info("SIGUSR1: log file {path} {done}", path=stream.path, done=done)
        else:
            log.info("SIGUSR1: no log file to rotate (logging to a stream)")

    def handler(signum, frame):
        reactor.callFromThread(rotate)   # a signal handler must not write to the file itself
    return signal.signal(signal.SIGUSR1, handler)


@attr.s(eq=False)
class ProcessLog:
    """One process's log: the observer of the ``logging:`` section and the stream it writes to.

    ``stream`` is twistd's ``--logfile`` (a :class:`RotatingLogFile`), the log
    file object ``twist`` opened, or None (stdout).
    """

    observer = attr.ib()
    stream = attr.ib(default=None)

    @classmethod
    def from_config(cls, logging_config, reactor, logfile=None, stream=None):
        """``logfile``: the file twistd was told to log to (``-`` or None: stdout)."""
        if stream is None and logfile not in (None, "-"):
            stream = open_log_file(logfile, logging_config)
        return cls(make_observer(logging_config, stream, reactor), stream)

    def offer(self, parent):
        """Make the observer the application's ``ILogObserver`` (twistd's), unless one is set."""
        set_component = getattr(parent, "setComponent", None)
        if set_component is not None and parent.getComponent(ILogObserver, None) is None:
            set_component(ILogObserver, self.observer)

    def handle_sigusr1(self, reactor):
        """SIGUSR1 rotates or reopens the log file (:func:`handle_sigusr1`)."""
        return handle_sigusr1(reactor, self.stream)
