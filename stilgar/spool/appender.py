"""The segments' one appender: frames, writes, fsyncs and rolls; blocking, with no reactor and no thread.

It runs wherever the spool's writer puts its disk work (doc/durability.md, "How it
works"): in the writer process (:mod:`.writerproc`, the default) or on the writer's
I/O thread (``spool.writer: thread``). :meth:`Appender.commit` writes one batch and
says what happened as a Committed tuple of plain values (below: it crosses a pipe),
which the reactor's side (:mod:`.writer`) applies: the segment table, each record's
Deferred, the logs.
"""

import errno
import os

from .fileformat import HEADER_SIZE, LEN, REC_OVERHEAD, frame_header
from .fileio import create_segment, write_parts

# What one commit did, in plain values:
#   runs:    [(segment, offset of its first record, number of records)], in batch order;
#   error:   None, or (errno or None, reason, detail) for every record after the runs: ``reason``
#            for the 503's error, ``detail`` (with the errno's name) for ``/status``;
#   changes: [("added", segment) | ("grown", segment, durable end)], for the segment table, in order;
#   notes:   [(level, message)] to log on the reactor.
# Committed = (runs, error, changes, notes)

_MAX_SKIPPED = 1000                       # existing segment numbers a roll steps over


def frames(payloads):
    """The records of ``payloads``, framed, as one ``bytes``: what :meth:`Appender.commit` writes."""
    parts = []
    for payload in payloads:
        parts.append(frame_header(payload))
        parts.append(payload)
    return b"".join(parts)


class Appender:
    """Appends batches of records to the spool directory's segments.

    ``fd`` is the open segment ``segment`` to go on with (recovery creates it),
    or None: the first commit creates segment ``segment + 1``. ``fsync`` is a
    callable or None (``spool.fsync: false``); ``write`` replaces :func:`os.write`.
    """

    def __init__(self, directory, segment, fd, *, segment_size, fsync, write=os.write):
        self._directory, self._segment_size = directory, segment_size
        self._fsync, self._write = fsync, write
        self._fd, self._seg, self._off = fd, segment, HEADER_SIZE
        self._need_roll = fd is None

    def commit(self, body, count, roll=False):
        """Write ``body``, ``count`` framed records (:func:`frames`), fsync once per segment
        touched; a Committed tuple (above).

        ``roll`` first starts a new segment (a reader found a damaged tail in this one).
        A failure cuts the segment back to its last good size and leaves the
        records not yet written failed; the next commit goes to a new segment.
        """
        runs, changes, notes = [], [], []
        if roll:
            self._need_roll = True
        try:
            if self._need_roll:
                self._roll(changes)
            if count and self._off + len(body) <= self._segment_size:
                start = self._off              # the usual case: all of it in this segment, one write
                self._flush([body], self._off + len(body), changes)
                runs.append((self._seg, start, count))
            elif count:
                self._commit_rolling(memoryview(body), runs, changes)
        except OSError as e:
            detail = "%s (%s)" % (e.strerror or e, errno.errorcode.get(e.errno, e.errno))
            self._failed(detail, notes)
            return runs, (e.errno, "spool write failed: %s" % (e.strerror or e,), detail), changes, notes
        return runs, None, changes, notes

    def _commit_rolling(self, body, runs, changes):
        """Write ``body`` record by record, rolling to a new segment before one that does not fit
        (a record alone in a segment may be larger than ``segment_size``)."""
        parts, first, count, off, at = [], self._off, 0, self._off, 0
        while at < len(body):
            size = REC_OVERHEAD + LEN.unpack_from(body, at)[0]
            if off > HEADER_SIZE and off + size > self._segment_size:
                if count:
                    self._flush(parts, off, changes)
                    runs.append((self._seg, first, count))
                    parts, count = [], 0
                self._roll(changes)
                first = off = self._off
            parts.append(body[at:at + size])
            count += 1
            off += size
            at += size
        if count:
            self._flush(parts, off, changes)
            runs.append((self._seg, first, count))

    def close(self):
        """Close the open segment (the writer is stopping)."""
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def _flush(self, parts, end, changes):
        """Write and fsync the records of ``parts``, ending at ``end``; then they are durable."""
        write_parts(self._write, self._fd, parts)
        if self._fsync is not None:
            self._fsync(self._fd)
        self._off = end
        changes.append(("grown", self._seg, end))

    def _failed(self, detail, notes):
        """Undo a failed commit: cut the file back to its last good size, then use a new segment."""
        try:
            if self._fd is not None:
                os.ftruncate(self._fd, self._off)
        except OSError as e2:
            notes.append(("error", "cannot truncate segment %d back to %d: %s" % (self._seg, self._off, e2)))
        # After a failed fsync the kernel may have dropped the dirty pages: do not
        # trust this file for new writes (its acknowledged records were fsynced).
        self._need_roll = True
        notes.append(("error", "spool write failed in segment %d: %s; answering 503, retrying on the next "
                               "append" % (self._seg, detail)))

    def _roll(self, changes):
        """Seal the current segment and start the next one."""
        new = self._seg + 1
        for _ in range(_MAX_SKIPPED):
            try:
                fd = create_segment(self._directory, new, self._fsync, self._write)
                break
            except FileExistsError:
                # made by a writer process that died before saying so: never write into it
                new += 1
        else:
            raise OSError(errno.EEXIST, "segments %d to %d all exist" % (self._seg + 1, new))
        old = self._fd
        changes.append(("added", new))
        self._fd, self._seg, self._off = fd, new, HEADER_SIZE
        self._need_roll = False
        if old is not None:
            try:
                os.close(old)
            except OSError:
                pass
