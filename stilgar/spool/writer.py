"""Appends with group commit, on the reactor (doc/durability.md, "How it works").

:meth:`Writer.append` queues the payload. A commit starts ``commit_window``
after the oldest queued record (at once when ``EARLY_COMMIT`` bytes are
queued, or when stopping) and takes everything queued, framed; the disk work
(write, one fsync, rolls) is the I/O's: the writer process
(:class:`~.writerproc.WriterProcess`) or a thread (:class:`~.threads.ThreadIO`),
both running an :class:`~.appender.Appender`. Up to ``IN_FLIGHT`` (two)
commits are handed to it at a time, in order: while one is written the next
waits there, and records queued meanwhile go in the one after. The Deferreds of a commit fire
together with each record's :class:`Position`, after the segment table is
grown, so a record is readable once its append has fired.
"""

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger

from .appender import frames
from .errors import SpoolFull, SpoolWriteError
from .fileformat import MAX_PAYLOAD, REC_OVERHEAD, Position

EARLY_COMMIT = 8 << 20                    # queued bytes that end the commit window early
# Commits handed to the I/O at once: the next is there when the one before ends, so the disk
# never waits for the reactor to hear of it; the one after waits, collecting what comes.
IN_FLIGHT = 2

log = Logger(namespace="stilgar.spool")


class Writer:
    """The one writer of a spool directory, on the reactor; ``io`` does its disk work."""

    def __init__(self, directory, table, io, *, reactor, max_size, commit_window):
        self.table = table
        self._directory, self._io, self._reactor = directory, io, reactor
        self._max_size, self._window = max_size, commit_window
        self._queue = []            # [(payload, deferred)]
        self._queued_bytes = 0
        self._first_queued = 0.0    # reactor time of the oldest queued record
        self.reserved = 0           # bytes accepted and not yet durable (or failed)
        self._life = "new"          # new | running | stopping | closed
        self._commit = "idle"       # idle | waiting (the window's timer is set)
        self._timer = None
        self._in_flight = 0         # commits handed to the I/O, not answered yet (at most IN_FLIGHT)
        self._roll_requested = False
        self._stopped = []          # Deferreds of stop()
        self.write_errors = 0
        self.last_write_error = None

    def append(self, payload):
        """Queue one record; fires with its :class:`Position` once durable."""
        n = REC_OVERHEAD + len(payload)
        if len(payload) > MAX_PAYLOAD:
            return fail(SpoolWriteError("record too large (%d bytes)" % len(payload)))
        if self._life == "closed":
            return fail(SpoolWriteError("spool is closed"))
        if self.table.total + self.reserved + n > self._max_size:
            return fail(SpoolFull("spool full: %d of %d bytes" % (self.table.total + self.reserved,
                                                                   self._max_size)))
        d = Deferred()
        self.reserved += n
        self._queue.append((payload, d))
        self._queued_bytes += n
        if len(self._queue) == 1:
            self._first_queued = self._reactor.seconds()
            self._next()
        elif self._queued_bytes >= EARLY_COMMIT and self._commit == "waiting":
            self._timer.cancel()
            self._write()
        return d

    def start(self):
        """Start committing (appends queued before are written now)."""
        if self._life == "new":
            self._life = "running"
            self._io.start()
            self._next()

    def stop(self):
        """Commit what is queued, close the segment; fires once all is done."""
        d = Deferred()
        if self._life == "closed":
            d.callback(None)
            return d
        self._stopped.append(d)
        if self._life != "stopping":
            if self._life == "new":
                self._io.start()
            self._life = "stopping"
            if self._commit == "waiting":
                self._timer.cancel()
                self._commit = "idle"
            self._next()
        return d

    def request_roll(self):
        """From a reader's thread: the segment being written has a damaged tail, start a new one."""
        self._reactor.callFromThread(self._roll)

    def _roll(self):
        self._roll_requested = True
        self._next()

    # -- committing ---------------------------------------------------------------------

    def _next(self):
        """Start the next commit, or set its window's timer, when one may start."""
        if self._commit != "idle" or self._life == "new" or self._in_flight >= IN_FLIGHT:
            return
        if not (self._queue or self._roll_requested):
            if self._life == "stopping" and not self._in_flight:
                self._life = "closed"
                self._io.close().addBoth(self._closed)
            return
        if self._life == "stopping" or self._queued_bytes >= EARLY_COMMIT:
            self._write()
            return
        # at the soonest after this reactor turn: what the rest of it appends goes too
        wait = self._first_queued + self._window - self._reactor.seconds() if self._queue else 0
        self._commit = "waiting"
        self._timer = self._reactor.callLater(max(0.0, wait), self._write)

    def _write(self):
        self._timer = None
        batch, self._queue = self._queue, []
        self._queued_bytes = 0
        roll, self._roll_requested = self._roll_requested, False
        self._commit = "idle"
        self._in_flight += 1
        d = self._io.commit(frames([p for p, _ in batch]), len(batch), roll)
        d.addCallbacks(self._written, self._lost, callbackArgs=(batch,), errbackArgs=(batch,))
        d.addErrback(lambda f: log.failure("spool {path}: delivering a commit failed", f, path=self._directory))

    def _written(self, committed, batch):
        runs, error, changes, notes = committed
        for change in changes:
            if change[0] == "added":
                self.table.added(change[1])
            else:
                self.table.grown(change[1], change[2])
        for level, message in notes:
            getattr(log, level)("spool {path}: {message}", path=self._directory, message=message)
        failure = None
        if error is not None:
            errno, reason, detail = error
            self.write_errors += 1
            self.last_write_error = detail
            failure = SpoolWriteError(reason, errno)
        self._done(batch, _positions(batch, runs), failure)

    def _lost(self, reason, batch):
        """The I/O failed as a whole (the writer process died, or a bug): every record of it fails."""
        log.critical("spool {path}: spool writer failed: {why}", path=self._directory, why=reason.value)
        self.write_errors += 1
        self.last_write_error = str(reason.value)
        self._done(batch, [], SpoolWriteError("spool writer failed: %s" % (reason.value,)))

    def _done(self, batch, positions, failure):
        self.reserved -= sum(REC_OVERHEAD + len(p) for p, _ in batch)
        self._in_flight -= 1
        for i, (_, d) in enumerate(batch):
            if i < len(positions):
                d.callback(positions[i])
            else:
                d.errback(failure)
        self._next()

    def _closed(self, result):
        if result is not None:
            log.failure("spool {path}: closing the writer failed", result, path=self._directory)
        stopped, self._stopped = self._stopped, []
        for d in stopped:
            d.callback(None)


def _positions(batch, runs):
    """The Position of each record of ``batch`` that ``runs`` wrote, in order."""
    positions, i = [], 0
    for segment, offset, count in runs:
        for payload, _ in batch[i:i + count]:
            positions.append(Position(segment, offset))
            offset += REC_OVERHEAD + len(payload)
        i += count
    return positions
