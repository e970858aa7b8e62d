"""Appends with group commit, on the spool's writer I/O thread (doc/durability.md, "How it works").

:meth:`Writer.append` (reactor) only queues the payload. A commit job on the
writer's one-thread pool waits up to ``commit_window`` after the oldest queued
record (less once ``EARLY_COMMIT`` bytes are queued), frames everything queued,
writes it and fsyncs once; records queued meanwhile go in the next commit of
the same job, which ends when the queue is empty. The Deferreds of a commit
fire together on the reactor with each record's :class:`Position`.
"""

import errno
import os
import threading
import time

from twisted.internet.defer import Deferred, fail
from twisted.internet.threads import deferToThreadPool

from .errors import SpoolFull, SpoolWriteError
from .fileformat import HEADER_SIZE, MAX_PAYLOAD, REC_OVERHEAD, Position, frame_header
from .fileio import create_segment, write_parts
from .problems import log_from_thread

EARLY_COMMIT = 8 << 20                    # queued bytes that end the commit window early


class Writer:
    """The one writer of a spool directory; ``recovered`` says where it goes on.

    ``fsync`` is a callable or None (``spool.fsync: false``); ``write`` replaces
    :func:`os.write` (tests inject failures).
    """

    def __init__(self, directory, recovered, *, pool, reactor, max_size, segment_size,
                 commit_window, fsync, write):
        self.table = recovered.table
        self._directory, self._pool, self._reactor = directory, pool, reactor
        self._max_size, self._segment_size, self._window = max_size, segment_size, commit_window
        self._fsync, self._write = fsync, write
        self._cond = threading.Condition()
        # under _cond: the queue, and the hand-over to the commit job
        self._queue = []            # [(payload, deferred)]
        self._queued_bytes = 0
        self._first_queued = 0.0    # monotonic time of the oldest queued record
        self.reserved = 0           # bytes accepted and not yet durable (or failed)
        self._state = "idle"        # idle | scheduled (a commit job runs or will) | stopping | closed
        self._started = False
        self._roll_requested = False
        # the commit job only
        self._fd, self._seg, self._off = recovered.fd, recovered.segment, HEADER_SIZE
        self._need_roll = recovered.fd is None
        self.write_errors = 0
        self.last_write_error = None

    # -- the reactor's side ----------------------------------------------------------

    def append(self, payload):
        """Queue one record; fires with its :class:`Position` once durable."""
        n = REC_OVERHEAD + len(payload)
        if len(payload) > MAX_PAYLOAD:
            return fail(SpoolWriteError("record too large (%d bytes)" % len(payload)))
        d = Deferred()
        with self._cond:
            if self.table.total + self.reserved + n > self._max_size:
                return fail(SpoolFull("spool full: %d of %d bytes" % (self.table.total + self.reserved,
                                                                       self._max_size)))
            self.reserved += n
            self._queue.append((payload, d))
            self._queued_bytes += n
            if len(self._queue) == 1:
                self._first_queued = time.monotonic()
            elif self._queued_bytes >= EARLY_COMMIT:
                self._cond.notify()
            kick = self._schedule()
        if kick:
            self._pool.callInThread(self._run)
        return d

    def start(self):
        """Start committing (appends queued before are written now)."""
        with self._cond:
            self._started = True
            kick = (self._queue or self._roll_requested) and self._schedule()
        if kick:
            self._pool.callInThread(self._run)

    def stop(self):
        """Commit what is queued, close the segment; fires once all is done."""
        with self._cond:
            self._started = True
            self._state = "stopping"
            self._cond.notify()
        return deferToThreadPool(self._reactor, self._pool, self._close_segment)

    def request_roll(self):
        """From a reader: the segment being written has a damaged tail, start a new one."""
        with self._cond:
            self._roll_requested = True
            self._cond.notify()
        self._reactor.callFromThread(self._kick)

    def _kick(self):
        with self._cond:
            kick = self._schedule()
        if kick:
            self._pool.callInThread(self._run)

    def _schedule(self):
        """Under _cond: True when a commit job must be started (none runs or is queued)."""
        if self._started and self._state == "idle":
            self._state = "scheduled"
            return True
        return False

    # -- the writer's I/O thread ----------------------------------------------------

    def _run(self):
        """The commit job: commit batches until the queue is empty."""
        while True:
            try:
                batch = self._next_batch()
            except BaseException:  # noqa: B902 - a bug: let the next append start a new job
                with self._cond:
                    if self._state == "scheduled":
                        self._state = "idle"
                raise
            if batch is None:
                return
            try:
                results = self._commit(batch)
            except BaseException as e:  # noqa: B902 - a bug must not stop the commits
                err = SpoolWriteError("spool writer failed: %r" % (e,))
                results = [(d, False, err) for _, d in batch]
                log_from_thread(self._reactor, "critical", "spool writer failed: {e!r}", e=e)
            if results:
                self._reactor.callFromThread(_deliver, results)

    def _next_batch(self):
        """Wait out the commit window; the queued records, or None when there is nothing to do."""
        cond = self._cond
        with cond:
            if self._state == "closed" or (not self._queue and not self._roll_requested):
                if self._state == "scheduled":
                    self._state = "idle"
                return None
            if self._queue and self._window > 0:
                deadline = self._first_queued + self._window
                while self._state != "stopping" and self._queued_bytes < EARLY_COMMIT:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    cond.wait(remaining)
            batch, self._queue = self._queue, []
            self._queued_bytes = 0
            if self._roll_requested:
                self._roll_requested = False
                self._need_roll = True
            return batch

    def _close_segment(self):
        self._run()
        with self._cond:
            self._state = "closed"
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def _commit(self, batch):
        """Write one batch; returns [(deferred, ok, position or error)]."""
        batch_bytes = sum(REC_OVERHEAD + len(p) for p, _ in batch)
        try:
            return self._commit_batch(batch)
        finally:
            with self._cond:
                self.reserved -= batch_bytes

    def _commit_batch(self, batch):
        results, parts, recs = [], [], []
        header = frame_header
        try:
            if self._need_roll:
                self._roll()
            off = self._off
            for payload, d in batch:
                size = REC_OVERHEAD + len(payload)
                if off > HEADER_SIZE and off + size > self._segment_size:
                    if recs:
                        self._flush(parts, off)
                        results.extend((rd, True, pos) for rd, pos in recs)
                        parts, recs = [], []
                    self._roll()
                    off = self._off
                parts.append(header(payload))
                parts.append(payload)
                recs.append((d, Position(self._seg, off)))
                off += size
            if recs:
                self._flush(parts, off)
                results.extend((rd, True, pos) for rd, pos in recs)
        except OSError as e:
            self._write_failed(e)
            done = {id(rd) for rd, _, _ in results}
            err = SpoolWriteError("spool write failed: %s" % (e.strerror or e,), e.errno)
            results.extend((d, False, err) for _, d in batch if id(d) not in done)
        return results

    def _flush(self, parts, end):
        """Write and fsync the records of ``parts``, ending at ``end``; then they are durable."""
        write_parts(self._write, self._fd, parts)
        if self._fsync is not None:
            self._fsync(self._fd)
        self.table.grown(self._seg, end)
        self._off = end

    def _write_failed(self, e):
        """Undo a failed commit: cut the file back to its last good size, then use a new segment."""
        self.write_errors += 1
        self.last_write_error = "%s (%s)" % (e.strerror or e, errno.errorcode.get(e.errno, e.errno))
        try:
            if self._fd is not None:
                os.ftruncate(self._fd, self._off)
        except OSError as e2:
            log_from_thread(self._reactor, "error", "spool: cannot truncate segment {seg} back to {off}: {e}",
                            seg=self._seg, off=self._off, e=e2)
        # After a failed fsync the kernel may have dropped the dirty pages: do not
        # trust this file for new writes (its acknowledged records were fsynced).
        self._need_roll = True
        log_from_thread(self._reactor, "error", "spool write failed in segment {seg}: {e}; answering 503, "
                        "retrying on the next append", seg=self._seg, e=self.last_write_error)

    def _roll(self):
        """Seal the current segment and start the next one."""
        new = self._seg + 1
        fd = create_segment(self._directory, new, self._fsync, self._write)
        old = self._fd
        self.table.added(new)
        self._fd, self._seg, self._off = fd, new, HEADER_SIZE
        self._need_roll = False
        if old is not None:
            try:
                os.close(old)
            except OSError:
                pass


def _deliver(results):
    for d, ok, value in results:
        if ok:
            d.callback(value)
        else:
            d.errback(value)

