"""The live view's hub: what the collector does, as it does it, for whoever watches (doc/debugging.md).

Items are JSON objects with a ``kind``: ``event`` (an accepted event as it is stored),
``rejected`` (a refused request), ``discard`` (a value the ClickHouse destination wrote to
rudder_discards), ``destination`` (a destination's state), ``status`` (the /status totals) and
``skipped`` (how many items sampling left out).

Cost: the web layer calls the hub only behind ``if hub.subscribers:`` (a list, empty when nobody
watches), so without a subscriber nothing is copied or encoded. With subscribers, each one takes
at most ``max_rate`` items a second (the rest are counted as skipped) and holds at most
``buffer_bytes`` not yet taken by its connection: a slow client is cut off, never waited for.
The ring replays the last ``ring_size`` items to a new subscriber (it fills while someone watches).

Workers (``server.workers: N``): every worker listens on ``<peer_dir>/worker-<i>.sock``. A
subscriber of one worker also subscribes, with the same filters, to every other worker through
these sockets (:class:`PeerService`), so every worker's items reach it.
"""

import collections
import functools
import glob
import json
import os

import attr
from twisted.application import service
from twisted.internet import defer, error, protocol, task
from twisted.internet.endpoints import UNIXClientEndpoint, UNIXServerEndpoint
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

__all__ = ["LiveHub", "Filters", "Subscriber", "PeerService", "mask_key", "KINDS", "LIVE_DIR_ENV"]

log = Logger(namespace="stilgar.live")

KINDS = ("event", "rejected", "discard", "destination", "status", "skipped")
LIVE_DIR_ENV = "STILGAR_LIVE_DIR"      # set by the parent of workers: where their peer sockets are
VALUE_LIMIT = 200                       # characters of a discarded value or a user agent shown
STATUS_INTERVAL = 2.0                   # seconds between destination / status items
_UNSAMPLED = frozenset(("destination", "status", "skipped"))   # periodic and bounded: never sampled


def mask_key(key):
    """A write key as the live view shows it: enough to tell keys apart, not to use one."""
    if not key:
        return ""
    key = str(key)
    if len(key) <= 8:
        return key[:1] + "…"
    return key[:4] + "…" + key[-2:]


def _shielded(method):
    """The request path calls the hub: a fault of the live view is logged, never raised there."""
    @functools.wraps(method)
    def run(self, *args):
        try:
            method(self, *args)
        except Exception:
            log.failure("live view: {name} failed", name=method.__name__)
    return run


def _clip(value, limit=VALUE_LIMIT):
    if value is None:
        return None
    if not isinstance(value, str):
        value = json.dumps(value, ensure_ascii=False, default=str)
    return value if len(value) <= limit else value[:limit] + "…"


@attr.s(frozen=True, slots=True)
class Filters:
    """What a subscriber asked for (``/debug/events?write_key=&kind=&type=``); empty matches all."""

    write_key = attr.ib(default=None)
    kinds = attr.ib(default=frozenset(), converter=frozenset)
    types = attr.ib(default=frozenset(), converter=frozenset)

    def matches(self, kind, write_key, event_type):
        if self.kinds and kind not in self.kinds:
            return False
        if self.write_key and kind in ("event", "rejected") and \
                self.write_key not in (write_key, mask_key(write_key)):
            return False
        if self.types and kind == "event" and event_type not in self.types:
            return False
        return True

    def to_json(self):
        return {"write_key": self.write_key, "kinds": sorted(self.kinds), "types": sorted(self.types)}

    @classmethod
    def from_json(cls, doc):
        return cls(write_key=doc.get("write_key") or None, kinds=doc.get("kinds") or (),
                   types=doc.get("types") or ())


@implementer(IPushProducer)
@attr.s(eq=False)
class Subscriber:
    """One watcher: filters, sampling and a bounded buffer in front of a connection.

    ``send(bytes)`` writes a framed item to the connection; ``frame(kind, data)`` frames one
    (SSE or a peer line); ``cut()`` drops the connection. The connection's transport pauses and
    resumes it as a push producer (:meth:`pauseProducing`, :meth:`resumeProducing`): while
    paused, frames wait here, up to ``buffer_bytes``; one more and the subscriber is cut off.
    """

    hub = attr.ib(repr=False)
    filters = attr.ib()
    send = attr.ib()
    frame = attr.ib()
    cut = attr.ib()
    max_rate = attr.ib()
    buffer_bytes = attr.ib()
    remote = attr.ib(default=False)
    state = attr.ib(init=False, default="streaming")   # streaming | paused | closed
    pending = attr.ib(init=False, factory=collections.deque)
    pending_bytes = attr.ib(init=False, default=0)
    window = attr.ib(init=False, default=None)
    taken = attr.ib(init=False, default=0)
    skipped = attr.ib(init=False, default=0)
    sent = attr.ib(init=False, default=0)
    peers = attr.ib(init=False, factory=dict)   # peer socket path -> its connection (local subscribers)

    # -- what the hub and the peers offer

    def wants(self, kind, write_key, event_type):
        """Filters, then sampling: may an item of this kind be delivered now?"""
        if self.state == "closed" or not self.filters.matches(kind, write_key, event_type):
            return False
        return self.admit(kind)

    def admit(self, kind):
        if kind in _UNSAMPLED:
            return True
        now = int(self.hub.clock.seconds())
        if now != self.window:
            if self.skipped:
                skipped, self.skipped = self.skipped, 0
                self.deliver("skipped", self.hub.encode({"kind": "skipped", "at": self.window,
                                                         "worker": self.hub.worker, "count": skipped}))
            self.window, self.taken = now, 0
        if self.taken >= self.max_rate:
            self.skipped += 1
            return False
        self.taken += 1
        return True

    def deliver(self, kind, data):
        """Frame and send (or hold) one encoded item; cut off when the buffer is full."""
        if self.state == "closed":
            return
        framed = self.frame(kind, data)
        if self.state == "paused":
            if self.pending_bytes + len(framed) > self.buffer_bytes:
                log.info("live view: a subscriber fell {n} bytes behind: cut off", n=self.pending_bytes)
                self.close()
                self.cut()
                return
            self.pending.append(framed)
            self.pending_bytes += len(framed)
            return
        self.sent += 1
        self.send(framed)

    # -- IPushProducer, for the connection's transport

    def pauseProducing(self):
        if self.state == "streaming":
            self.state = "paused"

    def resumeProducing(self):
        if self.state != "paused":
            return
        self.state = "streaming"
        while self.pending and self.state == "streaming":
            framed = self.pending.popleft()
            self.pending_bytes -= len(framed)
            self.sent += 1
            self.send(framed)

    def stopProducing(self):
        self.close()

    def close(self):
        if self.state == "closed":
            return
        self.state = "closed"
        self.pending.clear()
        self.pending_bytes = 0
        self.hub.unsubscribe(self)


@attr.s
class LiveHub:
    """Fan-out of live items to subscribers, with a ring of recent ones.

    ``previews``: destination name -> ``preview(event, now)`` (the rows an event becomes there);
    ``routes``: write key -> destination names; ``status_source()``: the /status document
    (with destinations) and ``health_source()``: the /health document, read every
    ``STATUS_INTERVAL`` seconds while someone watches.
    """

    clock = attr.ib()
    ring_size = attr.ib(default=200)
    max_rate = attr.ib(default=50)
    buffer_bytes = attr.ib(default=1 << 20)
    max_subscribers = attr.ib(default=16)
    ring_bytes = attr.ib(default=4 << 20)
    worker = attr.ib(default=0)
    previews = attr.ib(factory=dict)
    routes = attr.ib(factory=dict)
    status_source = attr.ib(default=None)
    health_source = attr.ib(default=None)
    # The single hook for events the collector accepted but will not store (the privacy
    # feature's suppressed subjects when they are checked after normalisation): event -> bool.
    hide = attr.ib(default=None)
    peer_dir = attr.ib(default=None)
    linker = attr.ib(default=None)          # sub -> None: links a local subscriber to the other workers
    subscribers = attr.ib(factory=list, init=False)
    ring = attr.ib(factory=collections.deque, init=False)
    _ring_held = attr.ib(default=0, init=False)
    _status_loop = attr.ib(default=None, init=False)
    _last_state = attr.ib(factory=dict, init=False)

    @classmethod
    def from_config(cls, debug, clock, **kw):
        """A hub with the limits of the ``debug`` section (:class:`stilgar.config.DebugConfig`)."""
        return cls(clock=clock, ring_size=debug.ring_size, max_rate=debug.max_rate,
                   buffer_bytes=debug.buffer_size, max_subscribers=debug.max_subscribers, **kw)

    @staticmethod
    def encode(item):
        return json.dumps(item, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")

    # -- subscribing

    def full(self):
        return len(self.subscribers) >= self.max_subscribers

    def subscribe(self, filters, send, frame, cut, remote=False):
        """A new :class:`Subscriber`, given the recent past (the ring) and the current state."""
        sub = Subscriber(self, filters, send, frame, cut, self.max_rate, self.buffer_bytes, remote)
        self.subscribers.append(sub)
        for kind, key, etype, data in list(self.ring):
            if filters.matches(kind, key, etype):
                sub.deliver(kind, data)
        for kind, data in self._last_state.values():
            if filters.matches(kind, None, None):
                sub.deliver(kind, data)
        if self._status_loop is None and (self.status_source is not None or self.health_source is not None):
            self._status_loop = task.LoopingCall(self.publish_state)
            self._status_loop.clock = self.clock
            self._status_loop.start(STATUS_INTERVAL, now=not self._last_state)
        if self.linker is not None and not remote:
            self.linker(sub)
        return sub

    def unsubscribe(self, sub):
        if sub in self.subscribers:
            self.subscribers.remove(sub)
        for peer in list(sub.peers.values()):
            peer.drop()
        sub.peers.clear()
        if not self.subscribers:
            if self._status_loop is not None and self._status_loop.running:
                self._status_loop.stop()
            self._status_loop = None
            self._last_state.clear()

    def _remember(self, entry):
        # bounded by count and by bytes; kept when the last subscriber leaves (a reload sees it)
        self.ring.append(entry)
        self._ring_held += len(entry[3])
        while self.ring and (len(self.ring) > self.ring_size or self._ring_held > self.ring_bytes):
            self._ring_held -= len(self.ring.popleft()[3])

    # -- publishing (only called when there are subscribers)

    def _publish(self, kind, write_key, event_type, build):
        takers = [s for s in self.subscribers if s.wants(kind, write_key, event_type)]
        if not takers:
            return
        data = self.encode(build())
        if kind not in _UNSAMPLED:
            self._remember((kind, write_key, event_type, data))
        for sub in takers:
            sub.deliver(kind, data)

    @_shielded
    def accepted(self, write_key, origin, events):
        """Events just stored for ``write_key`` (as the destinations will get them)."""
        now = self.clock.seconds()
        destinations = sorted(self.routes.get(write_key, ()))
        origin = origin.decode("latin-1") if isinstance(origin, bytes) else origin
        for event in events:
            if self.hide is not None and self.hide(event):
                continue
            etype = event.get("type")
            self._publish("event", write_key, etype,
                          lambda event=event, etype=etype: self._event_item(now, write_key, origin, destinations,
                                                                            event, etype))

    def _event_item(self, now, write_key, origin, destinations, event, etype):
        ctx = event.get("context")
        library = ctx.get("library") if isinstance(ctx, dict) else None
        library = library if isinstance(library, dict) else {}
        return {"kind": "event", "at": now, "worker": self.worker, "write_key": mask_key(write_key),
                "type": etype, "event": event.get("event") if etype == "track" else event.get("name"),
                "user_id": event.get("userId"), "anonymous_id": event.get("anonymousId"),
                "message_id": event.get("messageId"),
                "library": {"name": library.get("name"), "version": library.get("version")},
                "origin": origin, "destinations": destinations, "payload": event}

    @_shielded
    def rejected(self, status, reason, write_key, origin, user_agent, method, path):
        """A refused request (or a pixel problem, answered 200 with the GIF)."""
        now = self.clock.seconds()
        self._publish("rejected", write_key, None, lambda: {
            "kind": "rejected", "at": now, "worker": self.worker, "status": status, "reason": reason,
            "write_key": mask_key(write_key), "origin": _clip(origin), "user_agent": _clip(user_agent),
            "method": method, "path": _clip(path)})

    @_shielded
    def discards(self, destination, rows):
        """rudder_discards rows (dicts of its columns) a destination has just written."""
        if not self.subscribers:
            return
        now = self.clock.seconds()
        for row in rows:
            self._publish("discard", None, None, lambda row=row: {
                "kind": "discard", "at": now, "worker": self.worker, "destination": destination,
                "table": row.get("table_name"), "column": row.get("column_name"),
                "reason": row.get("reason"), "row_id": row.get("row_id"),
                "value": _clip(row.get("column_value"))})

    def publish_state(self):
        """Destination states and /status totals (every ``STATUS_INTERVAL`` while watched)."""
        try:
            status = self.status_source() if self.status_source is not None else {}
            health = self.health_source() if self.health_source is not None else {}
        except Exception:
            log.failure("live view: reading the status failed")
            return
        now = self.clock.seconds()
        items = []
        for name, h in sorted((health.get("destinations") or {}).items()):
            detail = status.get(name) if isinstance(status.get(name), dict) else {}
            items.append(("destination", name, {
                "kind": "destination", "at": now, "worker": self.worker, "name": name,
                "up": h.get("status") == "UP", "since": h.get("since"), "backlog": h.get("backlog"),
                "last_error": detail.get("last_error"), "type": detail.get("type"),
                "inserted": detail.get("inserted"), "discarded": detail.get("discarded")}))
        totals = {k: v for k, v in status.items() if k in ("events", "spool", "unrouted")}
        items.append(("status", "", {"kind": "status", "at": now, "worker": self.worker,
                                     "health": health.get("status"), **totals}))
        for kind, name, item in items:
            data = self.encode(item)
            self._last_state[(kind, name)] = (kind, data)
            for sub in list(self.subscribers):
                if sub.wants(kind, None, None):
                    sub.deliver(kind, data)

    def preview(self, event, destinations):
        """{destination: what ``event`` becomes there} for the named destinations that can tell."""
        out = {}
        now = self.clock.seconds()
        for name in destinations:
            preview = self.previews.get(name)
            if preview is not None:
                out[name] = preview(event, now)
        return out

    # -- other workers

    def peer_paths(self):
        """The peer sockets of the other workers (none without workers)."""
        if self.peer_dir is None:
            return []
        own = self.peer_path(self.worker)
        return [p for p in sorted(glob.glob(os.path.join(self.peer_dir, "worker-*.sock"))) if p != own]

    def peer_path(self, index):
        return os.path.join(self.peer_dir, f"worker-{index}.sock")


# -- peers: other workers' items, over a local socket -------------------------------------------------

def peer_frame(kind, data):
    return kind.encode("ascii") + b" " + data + b"\n"


class _PeerServerProtocol(LineOnlyReceiver):
    """A worker's side of a peer link: the first line is the filters; then it streams items."""

    delimiter = b"\n"
    MAX_LENGTH = 64 * 1024
    sub = None

    def lineReceived(self, line):
        if self.sub is not None:
            return
        try:
            filters = Filters.from_json(json.loads(line))
        except (ValueError, AttributeError, TypeError):
            self.transport.loseConnection()
            return
        hub = self.factory.hub
        if hub.full():
            self.transport.loseConnection()
            return
        self.sub = hub.subscribe(filters, self.transport.write, peer_frame,
                                 self.transport.abortConnection, remote=True)
        self.transport.registerProducer(self.sub, True)

    def connectionLost(self, reason):
        if self.sub is not None:
            self.sub.close()


class _PeerClientProtocol(LineOnlyReceiver):
    """A subscriber's link to another worker: its lines go to the local subscriber."""

    delimiter = b"\n"
    MAX_LENGTH = 16 * 1024 * 1024

    def __init__(self, sub, path):
        self.sub = sub
        self.path = path

    def connectionMade(self):
        if self.sub.state == "closed":
            self.transport.loseConnection()
            return
        self.sub.peers[self.path] = self
        self.transport.write(json.dumps(self.sub.filters.to_json()).encode() + b"\n")

    def lineReceived(self, line):
        kind, _, data = line.partition(b" ")
        kind = kind.decode("ascii", "replace")
        if self.sub.admit(kind):
            self.sub.deliver(kind, data)

    def lineLengthExceeded(self, line):
        self.drop()

    def drop(self):
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionLost(self, reason):
        if self.sub.peers.get(self.path) is self:
            del self.sub.peers[self.path]


@attr.s
class PeerService(service.Service):
    """Serves this worker's items to the other workers, and links local subscribers to theirs."""

    hub = attr.ib(repr=False)
    reactor = attr.ib()
    rescan = attr.ib(default=STATUS_INTERVAL)
    port = attr.ib(default=None, init=False)
    _loop = attr.ib(default=None, init=False)
    _connecting = attr.ib(factory=set, init=False)

    name = "live-peers"

    def startService(self):
        super().startService()
        path = self.hub.peer_path(self.hub.worker)
        try:
            os.unlink(path)             # the socket of this worker's previous life
        except FileNotFoundError:
            pass
        factory = protocol.Factory()
        factory.protocol = _PeerServerProtocol
        factory.hub = self.hub
        self.hub.linker = self.link
        d = UNIXServerEndpoint(self.reactor, path, mode=0o600).listen(factory)
        d.addCallback(lambda port: setattr(self, "port", port))
        d.addErrback(lambda f: log.error("live view: cannot listen on {path}: {error}", path=path,
                                         error=f.getErrorMessage()))
        self._loop = task.LoopingCall(self.link_all)
        self._loop.clock = self.reactor
        self._loop.start(self.rescan, now=False)
        return d

    def link(self, sub):
        """Subscribe ``sub`` to every other worker it is not linked to yet."""
        if sub.remote or sub.state == "closed":
            return
        for path in self.hub.peer_paths():
            key = (id(sub), path)
            if path in sub.peers or key in self._connecting:
                continue
            self._connecting.add(key)
            d = UNIXClientEndpoint(self.reactor, path, timeout=2).connect(
                protocol.Factory.forProtocol(lambda sub=sub, path=path: _PeerClientProtocol(sub, path)))
            d.addErrback(lambda f: f.trap(error.ConnectError, error.ConnectionRefusedError, OSError))
            d.addBoth(lambda _, key=key: self._connecting.discard(key))

    def link_all(self):
        for sub in list(self.hub.subscribers):
            self.link(sub)

    def stopService(self):
        if not self.running:
            return None
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for sub in list(self.hub.subscribers):
            for peer in list(sub.peers.values()):
                peer.drop()
        if self.port is not None:
            port, self.port = self.port, None
            return defer.maybeDeferred(port.stopListening)
        return None

