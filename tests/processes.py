"""Running twistd (Stilgar) as a real child process from trial tests, asynchronously."""

import os
import socket
import sys

import treq
from twisted.internet import defer, protocol, reactor
from twisted.internet.task import deferLater

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# twistd with this tree's plugin first (the installed copy of stilgar_plugin.py may be older)
TWISTD = [sys.executable, "-c", "import sys, twisted.plugins; twisted.plugins.__path__.insert(0, %r); "
          "from twisted.scripts.twistd import run; sys.exit(run())" % os.path.join(ROOT, "twisted_plugins")]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Watcher(protocol.ProcessProtocol):
    def __init__(self, marker):
        self.output = []
        self.marker = marker
        self.ready = defer.Deferred()
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.output.append(data)
        if self.marker in b"".join(self.output) and not self.ready.called:
            self.ready.callback(None)

    errReceived = outReceived

    def processEnded(self, reason):
        if not self.ready.called:
            self.ready.errback(RuntimeError("exited before ready:\n" + self.text()))
        # twistd re-raises the signal that stopped it, so a clean SIGTERM stop
        # reports "killed by 15"; both count as clean exits (exit code 0)
        value = reason.value
        clean = value.exitCode == 0 or (value.exitCode is None and value.signal == 15)
        self.ended.callback(0 if clean else (value.exitCode if value.exitCode is not None
                                              else -value.signal))

    def text(self):
        return b"".join(self.output).decode("utf-8", "replace")


class StilgarProcess:
    """``twistd -n ...`` in a child process, its output kept for assertions."""

    def __init__(self, args, cwd, env=None, marker=b"listening on", ping_url=None):
        self.args = args
        self.cwd = cwd
        self.env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                        **(env or {}))
        self.marker = marker
        self.ping_url = ping_url
        self.watcher = None
        self.transport = None

    def start(self, timeout=30):
        """Spawn; fires once the log shows ``marker`` or, with ``ping_url``, once /ping answers."""
        self.watcher = _Watcher(self.marker if self.ping_url is None else b"\0never\0")
        self.transport = reactor.spawnProcess(self.watcher, sys.executable, TWISTD + self.args,
                                              env=self.env, path=self.cwd)
        if self.ping_url is None:
            return _within(self.watcher.ready, timeout)
        self.watcher.ready.addErrback(lambda f: None)

        def pinged():
            if self.watcher.ended.called:
                raise RuntimeError("exited before ready:\n" + self.output())
            d = fetch("GET", self.ping_url)
            d.addCallbacks(lambda r: r[0] == 200, lambda f: False)
            return d
        return wait_for(pinged, timeout)

    def signal(self, name):
        if self.watcher is not None and not self.watcher.ended.called:
            self.transport.signalProcess(name)

    def stop(self, timeout=30):
        """SIGTERM, then the exit code (a Deferred)."""
        self.signal("TERM")
        return _within(self.watcher.ended, timeout)

    def kill(self):
        self.signal("KILL")
        return self.watcher.ended

    def output(self):
        return self.watcher.text() if self.watcher else ""


def _within(d, timeout):
    call = reactor.callLater(timeout, lambda: d.called or d.cancel())
    d.addBoth(lambda r: (call.active() and call.cancel(), r)[1])
    return d


@defer.inlineCallbacks
def wait_for(predicate, timeout=30, interval=0.05):
    """Poll ``predicate`` (may return a Deferred) on the reactor until true."""
    waited = 0.0
    while True:
        value = yield defer.maybeDeferred(predicate)
        if value:
            return value
        if waited >= timeout:
            raise AssertionError("condition not met in %ss" % timeout)
        yield deferLater(reactor, interval, lambda: None)
        waited += interval


@defer.inlineCallbacks
def fetch(method, url, **kw):
    response = yield treq.request(method, url, persistent=False, **kw)
    body = yield response.content()
    return response.code, body, response.headers
