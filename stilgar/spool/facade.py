"""The :class:`Spool` facade: one directory's parts wired together, behind :class:`ISpool`.

:meth:`Spool.open` is synchronous (start-up, before serving). After it the
reactor never touches the disk: appends are committed by the writer process
(:mod:`.writerproc`; or on the writer's I/O thread with ``writer="thread"``),
:meth:`Spool.read` runs on the reader's thread, cursor saves and segment
deletions on the maintenance one; each thread is a one-thread Twisted
ThreadPool (:mod:`.threads`), started by :meth:`open` and stopped by :meth:`close`.
"""

import os

from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.threads import deferToThreadPool
from zope.interface import implementer

from .appender import Appender
from .cursors import CursorStore
from .errors import SpoolWriteError
from .fileformat import REC_OVERHEAD, Position
from .interface import ISpool
from .problems import ProblemLog, log, log_from_thread
from .reader import Reader, scan_recent
from .recovery import Recovery, lock_directory
from .retention import delete_consumed, low_water
from .segments import SegmentTable
from .threads import ThreadIO, io_pool
from .writer import Writer
from .writerproc import WriterProcess


def _nothing():
    """A job marking the end of an I/O thread's queue."""


@implementer(ISpool)
class Spool:
    """An append-only, checksummed, segmented spool with per-consumer durable cursors.

    ``writer`` is where appends' disk work runs: ``"process"`` (a child
    process, :mod:`.writerproc`) or ``"thread"``. ``_fsync`` and ``_write``
    replace :func:`os.fsync` and :func:`os.write` (tests inject failures and
    count fsyncs); a child process cannot call them, so they need ``"thread"``.
    """

    def __init__(self, path, *, fsync=True, max_size=1 << 30, segment_size=64 << 20,
                 commit_window=0.002, writer="process", reactor=None, _fsync=os.fsync, _write=os.write):
        if writer == "process" and (_fsync is not os.fsync or _write is not os.write):
            raise ValueError("injected _fsync/_write need writer='thread'")
        if reactor is None:
            from twisted.internet import reactor
        self.path = os.path.abspath(path)
        self.fsync = bool(fsync)
        self.max_size = int(max_size)
        # The active segment is never deleted, so keep it a small part of the whole.
        self.segment_size = max(256, min(int(segment_size), self.max_size // 4))
        self.commit_window = max(0.0, float(commit_window))
        self._reactor = reactor
        self._sync = _fsync if self.fsync else None
        self._write_fn = _write
        self._writer_kind = writer
        self._problems = ProblemLog(self.path, reactor)
        self._cursors = CursorStore(self.path, self._sync)
        self._table = SegmentTable({}, None)
        self._consumers = None
        self._writer = self._reader = None
        self._pools = {job: io_pool("stilgar-spool-" + job) for job in ("writer", "reader", "maintenance")}
        self._lock_fd = None
        self._state = "new"         # new | open | started | closing | closed
        self._close_waiters = []

    # -- start-up and shutdown ---------------------------------------------------------

    def open(self):
        """Lock the directory, check the segments, load the cursors; synchronous."""
        if self._state != "new":
            raise RuntimeError("spool already opened")
        self._lock_fd = lock_directory(self.path)
        try:
            names = sorted(os.listdir(self.path))
            for filename, e in self._cursors.load(names):
                self._problems.record(None, None, 0, "unreadable cursor %s (%s): its destination "
                                      "replays from the beginning" % (filename, e))
            recovered = Recovery(self.path, self._problems, self._sync, self._write_fn).run(
                names, self._cursors.positions.values())
        except BaseException:
            self._release_lock()
            raise
        self._table = recovered.table
        self._writer = Writer(self.path, recovered.table, self._writer_io(recovered), reactor=self._reactor,
                              max_size=self.max_size, commit_window=self.commit_window)
        self._reader = Reader(self.path, self._table, self._problems, self._writer.request_roll)
        for pool in self._pools.values():
            pool.start()        # no thread yet: each starts on its first job (see threads.py)
        self._state = "open"

    def _writer_io(self, recovered):
        if self._writer_kind == "process":
            return WriterProcess(self._reactor, self.path, segment=recovered.segment, fd=recovered.fd,
                                 lock_fd=self._lock_fd, segment_size=self.segment_size, fsync=self.fsync,
                                 head=lambda: self._table.head)
        appender = Appender(self.path, recovered.segment, recovered.fd, segment_size=self.segment_size,
                            fsync=self._sync, write=self._write_fn)
        return ThreadIO(self._reactor, self._pools["writer"], appender)

    def start(self):
        """Start committing appends (those made before are written then)."""
        if self._state == "new":
            raise RuntimeError("spool not opened")
        if self._state != "open":
            return
        self._state = "started"
        self._writer.start()
        self._maintain(self._delete_consumed)

    def close(self):
        """Refuse new appends, write the queued ones, stop the I/O threads, release the lock.

        Idempotent; every call's Deferred fires (on the reactor) once all is done.
        """
        if self._state in ("new", "closed"):
            return succeed(None)
        d = Deferred()
        self._close_waiters.append(d)
        if self._state == "closing":
            return d
        self._state = "closing"
        # cursor saves queued before close() still happen, after the last commit
        maintained = self._writer.stop().addCallback(lambda _: self._on_pool("maintenance", _nothing))
        read = self._on_pool("reader", _nothing)
        gatherResults([maintained, read], consumeErrors=True).addBoth(self._closed)
        return d

    def _closed(self, result):
        if not isinstance(result, list):
            log.failure("spool {path}: closing failed", result, path=self.path)
        for pool in self._pools.values():
            pool.stop()         # idle by now: their last jobs have run
        self._release_lock()
        self._state = "closed"
        log.info("spool {path} closed", path=self.path)
        waiters, self._close_waiters = self._close_waiters, []
        for w in waiters:
            w.callback(None)

    def _release_lock(self):
        if self._lock_fd is not None:
            os.close(self._lock_fd)     # releases the flock
            self._lock_fd = None

    def _refused(self):
        """The failure of a call made while the spool is not open, or None."""
        if self._state in ("open", "started"):
            return None
        return fail(SpoolWriteError("spool not opened" if self._state == "new" else "spool is closed"))

    # -- appending and reading -----------------------------------------------------------

    def append(self, payload):
        """Queue one record; fires with its :class:`Position` once durable."""
        refused = self._refused()
        if refused is not None:
            return refused
        if not isinstance(payload, bytes):
            payload = bytes(payload)
        return self._writer.append(payload)

    @property
    def head(self):
        """The position just after the last durable record (where the next append goes)."""
        return self._table.head

    def read(self, start, max_bytes=1 << 20, max_records=None):
        """Durable records from ``start``: a list of ``(pos, next_pos, payload)``, [] at the head."""
        refused = self._refused()
        if refused is not None:
            return refused
        return self._on_pool("reader", self._reader.read, start, max_bytes, max_records)

    def scan_recent(self, max_bytes):
        """Payloads of the newest records, about ``max_bytes`` of them, oldest first.

        Synchronous: for start-up only (after :meth:`open`, before serving),
        like :meth:`open` itself.
        """
        return scan_recent(self.path, self._table, max_bytes)

    def bytes_between(self, start, end):
        """Bytes of records from ``start`` up to ``end`` (a consumer's backlog on disk)."""
        return self._table.bytes_between(start, end)

    @staticmethod
    def record_end(pos, payload_size):
        """The position just after a record of ``payload_size`` bytes written at ``pos``
        (a segment end is a valid place to resume reading from)."""
        return Position(pos.segment, pos.offset + REC_OVERHEAD + payload_size)

    # -- cursors and retention -------------------------------------------------------------

    def cursor(self, name):
        """The saved cursor of destination ``name`` (the beginning if none)."""
        return self._cursors.get(name)

    def save_cursor(self, name, pos):
        """Write the cursor durably (temp, fsync, rename, fsync dir), then delete consumed segments."""
        refused = self._refused()
        if refused is not None:
            return refused
        return self._on_pool("maintenance", self._save_cursor, name, pos)

    def _save_cursor(self, name, pos):
        self._cursors.save(name, pos)
        self._delete_consumed()

    def set_consumers(self, names):
        """The destinations in use; only their cursors decide which segments are deleted."""
        self._consumers = frozenset(names)
        ignored = sorted(set(self._cursors.positions) - self._consumers)
        if ignored:
            log.warn("spool {path}: cursors of unknown destinations ignored: {names}",
                     path=self.path, names=", ".join(ignored))
        if self._state == "started":
            self._maintain(self._delete_consumed)

    def _delete_consumed(self):
        """Delete the segments wholly below every consumer's cursor (maintenance thread)."""
        low = low_water(self._cursors.positions, self._consumers)
        return delete_consumed(self.path, self._table, low, self._sync, self._log_threaded)

    def _maintain(self, fn):
        self._on_pool("maintenance", fn).addErrback(
            lambda f: log.failure("spool {path}: maintenance failed", f, path=self.path))

    def _on_pool(self, job, fn, *args):
        return deferToThreadPool(self._reactor, self._pools[job], fn, *args)

    def _log_threaded(self, level, fmt, **kw):
        log_from_thread(self._reactor, level, fmt, **kw)

    # -- state -------------------------------------------------------------------------------

    @property
    def problems(self):
        """The last problems found (dicts: segment, offset, bytes_dropped, reason)."""
        return self._problems.problems

    @property
    def skipped_bytes(self):
        return self._problems.skipped_bytes

    @property
    def skipped_regions(self):
        return self._problems.skipped_regions

    @property
    def size(self):
        """Bytes of all segments on disk."""
        return self._table.total

    def _reserved(self):
        return self._writer.reserved if self._writer is not None else 0

    def full(self):
        """True when appends fail with :class:`SpoolFull`."""
        return self._table.total + self._reserved() >= self.max_size

    def health(self):
        """Counts and states only: ``/health`` needs no authentication, so no error texts."""
        writer = self._writer
        return {
            "bytes": self._table.total,
            "max_bytes": self.max_size,
            "full": self.full(),
            "segments": len(self._table),
            "problems": self._problems.count,
            "skipped_bytes": self._problems.skipped_bytes,
            "skipped_regions": self._problems.skipped_regions,
            "pending_bytes": self._reserved(),
            "write_errors": writer.write_errors if writer is not None else 0,
        }

    def status(self):
        """:meth:`health` and the details an operator needs (``/status``, authenticated)."""
        head = self._table.head
        document = self.health()
        document.update({
            "head": [head.segment, head.offset] if head is not None else None,
            "last_write_error": self._writer.last_write_error if self._writer is not None else None,
            "recent_problems": self._problems.recent(10),
        })
        return document
