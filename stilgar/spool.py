"""The local append-only spool (contract section 6): a 200 means the events are on disk.

One directory holds one spool::

    lock                          flock'ed by the live process (pid inside, informative)
    00000000000000000001.seg      segments: a 24-byte header, then records
    00000000000000000002.seg
    <quoted name>.cursor          one durable cursor per destination (JSON)

A segment starts with ``b"STILGSPL"``, u32 format version, u64 segment number and
a u32 CRC32 of those 20 bytes. A record is ``[u32 length][u32 crc][payload]``
(little-endian), the CRC32 covering the 4 length bytes and then the payload.
A :class:`Position` is ``(segment number, byte offset in the file)``.

Threads: :meth:`Spool.open` is synchronous (start-up, before serving). After
that the reactor never touches the disk: one dedicated *writer* thread does
every append (group commit: everything queued since its last write goes out in
one write and one fsync), a *reader* thread serves :meth:`Spool.read`, and a
*maintenance* thread writes cursors and deletes consumed segments. Results go
back to the reactor with ``callFromThread``. All three are daemon threads.

See doc/durability.md for the guarantees and the failure cases.
"""

import bisect
import errno
import fcntl
import hashlib
import json
import os
import queue
import re
import struct
import threading
import time
import urllib.parse
import zlib

import attr
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.logger import Logger

log = Logger(namespace="stilgar.spool")

MAGIC = b"STILGSPL"
VERSION = 1
_SEG_HEADER = struct.Struct("<8sIQ")      # magic, version, segment number; then u32 crc
HEADER_SIZE = _SEG_HEADER.size + 4        # 24
_REC = struct.Struct("<II")               # length, crc32(length bytes + payload)
_LEN = struct.Struct("<I")
REC_OVERHEAD = _REC.size                  # 8
MAX_PAYLOAD = (1 << 32) - 1
_SEG_SUFFIX = ".seg"
_CURSOR_SUFFIX = ".cursor"
_WRITE_CHUNK = 8 << 20                    # bytes per os.write within one commit
_EARLY_COMMIT = 8 << 20                   # queued bytes that end the commit window early
_SCAN_BLOCK = 1 << 20


@attr.s(frozen=True, order=True, slots=True, repr=False)
class Position:
    """A place in the spool: ``segment`` number and byte ``offset`` in that file.

    Ordered. ``Position(0, 0)`` means "the beginning" (the first existing
    record); a record's ``next_pos`` (its end) is where the next one starts, or
    the end of its segment, which readers treat as the start of the next one.
    """
    segment = attr.ib()
    offset = attr.ib()

    def __repr__(self):
        return "Position(%d, %d)" % (self.segment, self.offset)


BEGINNING = Position(0, 0)


class SpoolFull(Exception):
    """``spool.max_size`` is reached: the web answers 503 until destinations catch up."""


class SpoolWriteError(Exception):
    """A write or fsync failed (EIO, ENOSPC...), or the spool is closed: the web answers 503.

    ``errno`` is the OS error number when there is one. The spool recovers by
    itself: the next append is attempted again, in a fresh segment.
    """

    def __init__(self, message, errno=None):
        super().__init__(message)
        self.errno = errno


class SpoolLocked(Exception):
    """Another live process holds the spool directory's lock."""


class SpoolFormatError(Exception):
    """A segment was written by another format version: refuse to start rather than lose it."""


def segment_name(number):
    return "%020d%s" % (number, _SEG_SUFFIX)


def segment_header(number):
    head = _SEG_HEADER.pack(MAGIC, VERSION, number)
    return head + _LEN.pack(zlib.crc32(head))


def frame(payload):
    """The bytes of one record holding ``payload``."""
    n = _LEN.pack(len(payload))
    return _REC.pack(len(payload), zlib.crc32(payload, zlib.crc32(n))) + payload


@attr.s(frozen=True, slots=True)
class Damage:
    """Bytes of a segment that hold no good record, from ``offset`` up to ``resume``:
    the next frame whose length and CRC check out, or None when nothing good
    follows (a torn or corrupt tail)."""
    reason = attr.ib()
    offset = attr.ib()
    resume = attr.ib()

    def size(self, end):
        return (end if self.resume is None else self.resume) - self.offset


def _damaged(fd, off, end, reason):
    return Damage(reason, off, find_frame(fd, off + 1, end))


def iter_records(fd, off, end, budget=None, at_least_one=True, block=_SCAN_BLOCK):
    """Read the records of an open segment from ``off`` up to ``end``.

    Yields ``(offset, payload, None)`` for each good record, and
    ``(offset, None, damage)`` for bad bytes (torn or corrupt, a
    :class:`Damage`): reading goes on at ``damage.resume``, the next good frame
    (resynchronised), or stops when there is none. With ``budget``, stops
    before a record that would take the total (framing included) past it, but
    yields at least one record if ``at_least_one``.
    """
    buf = b""
    base = off      # file offset of buf[0]
    used = 0
    first = at_least_one
    while off < end:
        damage = None
        rel = off - base
        if rel + REC_OVERHEAD > len(buf):
            want = min(end - off, max(block, REC_OVERHEAD) if budget is None
                       else max(budget - used, REC_OVERHEAD))
            buf = os.pread(fd, want, off)
            base, rel = off, 0
            if len(buf) < REC_OVERHEAD:
                yield off, None, Damage("torn record header", off, None)
                return
        length, crc = _REC.unpack_from(buf, rel)
        size = REC_OVERHEAD + length
        if off + size > end:
            damage = _damaged(fd, off, end, "record length %d runs past the end of the segment" % length)
        else:
            if budget is not None and not first and used + size > budget:
                return
            if rel + size > len(buf):
                want = min(end - off, max(block, size) if budget is None
                           else max(budget - used, size))
                buf = os.pread(fd, want, off)
                base, rel = off, 0
                if len(buf) < size:
                    yield off, None, Damage("torn record", off, None)
                    return
            payload = buf[rel + REC_OVERHEAD:rel + size]
            if zlib.crc32(payload, zlib.crc32(buf[rel:rel + 4])) != crc:
                damage = _damaged(fd, off, end, "checksum mismatch")
        if damage is not None:
            yield off, None, damage
            if damage.resume is None:
                return
            off, buf, base = damage.resume, b"", damage.resume
            continue
        yield off, payload, None
        first = False
        used += size
        off += size


_ZERO_HEADER = bytes(REC_OVERHEAD)
_NONZERO = re.compile(b"[^\\x00]")


def find_frame(fd, start, end, block=_SCAN_BLOCK):
    """The offset of the first frame in ``[start, end)`` that checks out, or None.

    A frame checks out when its length fits before ``end``, what follows it is
    the end or a header whose length fits too, and its CRC matches. Used to
    resynchronise after a damaged record. Cheap on spool data: a candidate
    needs the high byte of its length under the segment size's, which JSON
    text (bytes >= 0x20) never has, and runs of zeros are skipped at once.
    """
    if end - start < REC_OVERHEAD:
        return None
    high = min(0xFF, (end - start) >> 24)
    candidate = re.compile(b"[\\x00-\\x%02x]" % high)
    pos = start
    while pos + REC_OVERHEAD <= end:
        buf = os.pread(fd, min(block, end - pos), pos)
        last = len(buf) - REC_OVERHEAD      # candidates whose header lies in buf
        if last < 0:
            return None
        i = 0
        while i <= last:
            m = candidate.search(buf, i + 3, last + 4)
            if m is None:
                break
            i = m.start() - 3
            if buf[i:i + REC_OVERHEAD] == _ZERO_HEADER:
                # no header is eight zero bytes: the next one holds the next non-zero byte
                nz = _NONZERO.search(buf, i)
                if nz is None:
                    break
                i = max(i + 1, nz.start() - REC_OVERHEAD + 1)
                continue
            if _frame_checks_out(fd, pos + i, end, buf, i):
                return pos + i
            i += 1
        pos += last + 1
    return None


def _frame_checks_out(fd, off, end, buf, rel):
    length, crc = _REC.unpack_from(buf, rel)
    nxt = off + REC_OVERHEAD + length
    if nxt > end:
        return False
    if nxt + REC_OVERHEAD <= end:
        following = os.pread(fd, 4, nxt)
        if len(following) < 4 or _LEN.unpack(following)[0] > end - nxt - REC_OVERHEAD:
            return False
    payload = os.pread(fd, length, off + REC_OVERHEAD)
    return len(payload) == length and zlib.crc32(payload, zlib.crc32(buf[rel:rel + 4])) == crc


class _Worker:
    """A daemon thread running submitted calls in order, results as Deferreds on the reactor."""

    def __init__(self, reactor, name):
        self._reactor = reactor
        self._name = name
        self._queue = queue.SimpleQueue()
        self._thread = None

    def _ensure_thread(self):
        # started on first use, not at open(): twistd forks to daemonise after
        # building the service, and threads do not survive a fork
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def submit(self, fn, *args):
        d = Deferred()
        self._queue.put((d, fn, args))
        self._ensure_thread()
        return d

    def stop(self):
        """Finish what is queued, then exit; the Deferred fires when the thread is done."""
        d = Deferred()
        self._queue.put((d, None, ()))
        self._ensure_thread()
        return d

    def _run(self):
        while True:
            d, fn, args = self._queue.get()
            if fn is None:
                self._reactor.callFromThread(d.callback, None)
                return
            try:
                result = fn(*args)
            except BaseException as e:  # noqa: B902 - delivered as a failure
                self._reactor.callFromThread(d.errback, e)
            else:
                self._reactor.callFromThread(d.callback, result)


class Spool:
    """An append-only, checksummed, segmented spool with per-consumer durable cursors.

    ``_fsync`` and ``_write`` replace :func:`os.fsync` and :func:`os.write`
    (tests inject failures and count fsyncs).
    """

    max_problems = 100

    def __init__(self, path, *, fsync=True, max_size=1 << 30, segment_size=64 << 20,
                 commit_window=0.002, reactor=None, _fsync=os.fsync, _write=os.write):
        if reactor is None:
            from twisted.internet import reactor
        self.path = os.path.abspath(path)
        self.fsync = bool(fsync)
        self.max_size = int(max_size)
        # The active segment is never deleted, so keep it a small part of the whole.
        self.segment_size = max(256, min(int(segment_size), self.max_size // 4))
        self.commit_window = max(0.0, float(commit_window))
        self.problems = []          # the last max_problems of them
        self._problem_count = 0
        self.skipped_bytes = 0      # bytes of damaged records skipped or cut off
        self.skipped_regions = 0    # damaged stretches (each held at least one record)
        self._reactor = reactor
        self._fsync_fn = _fsync
        self._write_fn = _write

        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        # under _lock: the append queue and the writer's hand-over
        self._queue = []            # [(payload, deferred)]
        self._queued_bytes = 0
        self._first_queued = 0.0    # monotonic time of the oldest queued record
        self._reserved = 0          # bytes accepted and not yet durable (or failed)
        self._stopping = False
        self._roll_requested = False
        # under _lock: the segments
        self._segs = []             # sorted segment numbers on disk
        self._sizes = {}            # number -> durable size (bytes)
        self._total = 0
        self._head = None
        # writer thread only
        self._w_fd = None
        self._w_seg = 0
        self._w_off = 0
        self._need_roll = False

        self._cursors = {}          # name -> Position (durable)
        self._consumers = None
        self._seen_bad = set()
        self._write_errors = 0
        self._last_write_error = None
        self._lock_fd = None
        self._opened = False
        self._closing = False
        self._closed = False
        self._close_waiters = []
        self._writer = None
        self._writer_done = None
        self._reader = None
        self._maint = None
        self._trigger = None

    # -- start-up -----------------------------------------------------------------

    def open(self):
        """Lock the directory, check the segments, load the cursors; synchronous."""
        if self._opened:
            raise RuntimeError("spool already opened")
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        fd = os.open(self._file("lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolLocked("spool %s is locked by another process" % self.path) from None
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd
        try:
            os.fchmod(fd, 0o600)
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, b"%d\n" % os.getpid(), 0)     # informative only
            except OSError:
                pass
            self._recover()
        except BaseException:
            self._release_lock()
            raise
        self._reader = _Worker(self._reactor, "stilgar-spool-reader")
        self._maint = _Worker(self._reactor, "stilgar-spool-maintenance")
        self._opened = True

    def _recover(self):
        names = sorted(os.listdir(self.path))
        for name in names:
            if name.endswith(".tmp"):
                os.unlink(self._file(name))
        for name in names:
            if name.endswith(_CURSOR_SUFFIX):
                self._load_cursor(name)
        numbers = []
        for name in names:
            stem = name[:-len(_SEG_SUFFIX)]
            if name.endswith(_SEG_SUFFIX) and len(stem) == 20 and stem.isdigit():
                numbers.append(int(stem))
        numbers.sort()
        segs, sizes = [], {}
        for i, number in enumerate(numbers):
            size = self._check_segment(number, last=(i == len(numbers) - 1))
            if size is not None:
                segs.append(number)
                sizes[number] = size
        # Every start writes into a new segment, numbered above every segment and
        # cursor: anything a crash may have lost can never be confused with new data.
        top = max([0] + numbers + [c.segment for c in self._cursors.values()])
        new = top + 1
        try:
            fd = self._create_segment(new)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # Disk full at start-up: serve anyway (appends answer 503) and
            # create the segment on the first append once there is room.
            log.error("spool {path}: cannot create segment {seg}: {e}; appends fail until "
                      "space returns", path=self.path, seg=new, e=e)
            self._w_fd, self._w_seg, self._w_off = None, top, HEADER_SIZE
            self._need_roll = True
        else:
            segs.append(new)
            sizes[new] = HEADER_SIZE
            self._w_fd, self._w_seg, self._w_off = fd, new, HEADER_SIZE
        self._segs, self._sizes = segs, sizes
        self._total = sum(sizes.values())
        self._head = Position(new, HEADER_SIZE)
        log.info("spool {path}: {n} segment(s), {bytes} bytes, {cursors} cursor(s), writing to segment {seg}",
                 path=self.path, n=len(segs), bytes=self._total, cursors=len(self._cursors), seg=new)

    def _check_segment(self, number, last):
        """Validate one segment at start-up; returns its good size, or None if set aside.

        Every segment's header is checked; the last segment (the only one a
        crash can tear, the others having been fsynced before their successor
        was created) has every record checked, and a bad tail is truncated.
        """
        path = self._file(segment_name(number))
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            header = os.pread(fd, HEADER_SIZE, 0)
            reason = None
            if len(header) < HEADER_SIZE:
                reason = "torn segment header"
            else:
                magic, version, num = _SEG_HEADER.unpack_from(header)
                crc, = _LEN.unpack_from(header, _SEG_HEADER.size)
                if magic != MAGIC or zlib.crc32(header[:_SEG_HEADER.size]) != crc:
                    reason = "bad segment header"
                elif version != VERSION:
                    raise SpoolFormatError(
                        "%s: format version %d, this Stilgar reads version %d"
                        % (path, version, VERSION))
                elif num != number:
                    reason = "segment header names segment %d" % num
            if reason is not None:
                os.close(fd)
                fd = None
                if last and size < HEADER_SIZE:
                    os.unlink(path)    # crashed while being created: nothing in it
                else:
                    os.rename(path, path + ".corrupt")    # kept for inspection
                self._problem(number, 0, size, reason)
                return None
            if not last:
                return size
            good, reason = size, None
            for off, payload, damage in iter_records(fd, HEADER_SIZE, size):
                if damage is None:
                    continue
                if damage.resume is None:           # a torn or corrupt tail: cut off
                    good, reason = off, damage.reason
                    break
                # damage inside (bit rot): readers skip it, the records after it are kept
                self._seen_bad.add((number, off))
                self._problem(number, off, damage.size(size), damage.reason, resumed=True)
            if good < size:
                os.ftruncate(fd, good)
                if self.fsync:
                    self._fsync_fn(fd)
                self._problem(number, good, size - good, reason)
            return good
        finally:
            if fd is not None:
                os.close(fd)

    def _load_cursor(self, filename):
        try:
            with open(self._file(filename), "rb") as f:
                data = json.loads(f.read())
            name = data["name"]
            pos = Position(int(data["segment"]), int(data["offset"]))
            if not isinstance(name, str):
                raise ValueError("name is not a string")
        except (OSError, ValueError, KeyError, TypeError) as e:
            self._problem(None, None, 0, "unreadable cursor %s (%s): its destination replays "
                          "from the beginning" % (filename, e))
            return
        self._cursors[name] = pos

    # -- threads ------------------------------------------------------------------

    def start(self):
        """Start the writer thread (appends made before are written then)."""
        if not self._opened:
            raise RuntimeError("spool not opened")
        if self._writer is not None or self._closing:
            return
        self._start_writer()
        self._maint.submit(self._delete_consumed)

    def _start_writer(self):
        self._writer_done = Deferred()
        self._writer = threading.Thread(target=self._run_writer, name="stilgar-spool-writer",
                                        daemon=True)
        self._writer.start()

    def close(self):
        """Refuse new appends, write the queued ones, stop the threads, release the lock.

        Idempotent; every call's Deferred fires (on the reactor) once all is done.
        """
        if not self._opened or self._closed:
            return succeed(None)
        d = Deferred()
        self._close_waiters.append(d)
        if self._closing:
            return d
        self._closing = True
        if self._trigger is not None:
            try:
                self._reactor.removeSystemEventTrigger(self._trigger)
            except (ValueError, KeyError, TypeError):
                pass
            self._trigger = None
        if self._writer is None:
            self._start_writer()
        with self._cond:
            self._stopping = True
            self._cond.notify()

        def finished(_):
            self._release_lock()
            self._closed = True
            log.info("spool {path} closed", path=self.path)
            waiters, self._close_waiters = self._close_waiters, []
            for w in waiters:
                w.callback(None)

        # cursor saves queued before close() still happen, after the last commit
        stopped = self._writer_done.addCallback(lambda _: self._maint.stop())
        gatherResults([stopped, self._reader.stop()]).addBoth(finished)
        return d

    def _release_lock(self):
        if self._lock_fd is not None:
            os.close(self._lock_fd)     # releases the flock
            self._lock_fd = None

    # -- appending ----------------------------------------------------------------

    def append(self, payload):
        """Queue one record; fires with its :class:`Position` once durable."""
        if self._closing or not self._opened:
            return fail(SpoolWriteError("spool is closed" if self._closing else "spool not opened"))
        if not isinstance(payload, bytes):
            payload = bytes(payload)
        n = REC_OVERHEAD + len(payload)
        if len(payload) > MAX_PAYLOAD:
            return fail(SpoolWriteError("record too large (%d bytes)" % len(payload)))
        d = Deferred()
        with self._cond:
            if self._total + self._reserved + n > self.max_size:
                return fail(SpoolFull("spool full: %d of %d bytes" % (self._total + self._reserved,
                                                                       self.max_size)))
            self._reserved += n
            self._queue.append((payload, d))
            self._queued_bytes += n
            if len(self._queue) == 1:
                self._first_queued = time.monotonic()
                self._cond.notify()
            elif self._queued_bytes >= _EARLY_COMMIT:
                self._cond.notify()
        return d

    def _run_writer(self):
        cond = self._cond
        while True:
            with cond:
                while not self._queue and not self._stopping and not self._roll_requested:
                    cond.wait()
                if self._queue and self.commit_window > 0:
                    deadline = self._first_queued + self.commit_window
                    while not self._stopping and self._queued_bytes < _EARLY_COMMIT:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        cond.wait(remaining)
                batch, self._queue = self._queue, []
                self._queued_bytes = 0
                stopping = self._stopping
                if self._roll_requested:
                    self._roll_requested = False
                    self._need_roll = True
            try:
                results = self._commit(batch)
            except BaseException as e:  # noqa: B902 - a bug must not kill the writer
                err = SpoolWriteError("spool writer failed: %r" % (e,))
                results = [(d, False, err) for _, d in batch]
                self._log_threaded("critical", "spool writer failed: {e!r}", e=e)
            if results:
                self._reactor.callFromThread(self._deliver, results)
            if stopping:
                break
        if self._w_fd is not None:
            try:
                os.close(self._w_fd)
            except OSError:
                pass
            self._w_fd = None
        self._reactor.callFromThread(self._writer_done.callback, None)

    @staticmethod
    def _deliver(results):
        for d, ok, value in results:
            if ok:
                d.callback(value)
            else:
                d.errback(value)

    def _commit(self, batch):
        """Write one batch (writer thread); returns [(deferred, ok, position or error)]."""
        batch_bytes = sum(REC_OVERHEAD + len(p) for p, _ in batch)
        try:
            return self._commit_batch(batch)
        finally:
            with self._cond:
                self._reserved -= batch_bytes

    def _commit_batch(self, batch):
        results = []
        parts, recs = [], []
        crc32, pack_len, pack_rec = zlib.crc32, _LEN.pack, _REC.pack
        try:
            if self._need_roll:
                self._roll()
            off = self._w_off
            for payload, d in batch:
                size = REC_OVERHEAD + len(payload)
                if off > HEADER_SIZE and off + size > self.segment_size:
                    if recs:
                        self._flush(parts, off)
                        results.extend((rd, True, pos) for rd, pos in recs)
                        parts, recs = [], []
                    self._roll()
                    off = self._w_off
                length = len(payload)
                parts.append(pack_rec(length, crc32(payload, crc32(pack_len(length)))))
                parts.append(payload)
                recs.append((d, Position(self._w_seg, off)))
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

    def _write_all(self, parts):
        write, fd = self._write_fn, self._w_fd
        chunk, n = [], 0
        for p in parts:
            chunk.append(p)
            n += len(p)
            if n >= _WRITE_CHUNK:
                self._write_buf(write, fd, b"".join(chunk))
                chunk, n = [], 0
        if chunk:
            self._write_buf(write, fd, b"".join(chunk))

    @staticmethod
    def _write_buf(write, fd, data):
        view = memoryview(data)
        while view:
            written = write(fd, view)
            if written <= 0:
                raise OSError(errno.EIO, "short write")
            view = view[written:]

    def _flush(self, parts, end):
        """Write and fsync the records of ``parts``, ending at ``end``; then they are durable."""
        self._write_all(parts)
        if self.fsync:
            self._fsync_fn(self._w_fd)
        with self._lock:
            self._total += end - self._w_off
            self._sizes[self._w_seg] = end
            self._w_off = end
            self._head = Position(self._w_seg, end)

    def _write_failed(self, e):
        """Undo a failed commit: cut the file back to its last good size, then use a new segment."""
        self._write_errors += 1
        self._last_write_error = "%s (%s)" % (e.strerror or e, errno.errorcode.get(e.errno, e.errno))
        try:
            if self._w_fd is not None:
                os.ftruncate(self._w_fd, self._w_off)
        except OSError as e2:
            self._log_threaded("error", "spool: cannot truncate segment {seg} back to {off}: {e}",
                               seg=self._w_seg, off=self._w_off, e=e2)
        # After a failed fsync the kernel may have dropped the dirty pages: do not
        # trust this file for new writes (its acknowledged records were fsynced).
        self._need_roll = True
        self._log_threaded("error", "spool write failed in segment {seg}: {e}; answering 503, "
                           "retrying on the next append", seg=self._w_seg, e=self._last_write_error)

    def _roll(self):
        """Seal the current segment and start the next one (writer thread)."""
        new = self._w_seg + 1
        fd = self._create_segment(new)
        old = self._w_fd
        with self._lock:
            self._segs.append(new)
            self._sizes[new] = HEADER_SIZE
            self._total += HEADER_SIZE
            self._head = Position(new, HEADER_SIZE)
        self._w_fd, self._w_seg, self._w_off = fd, new, HEADER_SIZE
        self._need_roll = False
        if old is not None:
            try:
                os.close(old)
            except OSError:
                pass

    def _create_segment(self, number):
        path = self._file(segment_name(number))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            self._write_buf(self._write_fn, fd, segment_header(number))
            if self.fsync:
                self._fsync_fn(fd)
                self._fsync_dir()
        except BaseException:
            os.close(fd)
            try:
                os.unlink(path)
            except OSError:
                pass
            raise
        return fd

    def _fsync_dir(self):
        dfd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._fsync_fn(dfd)
        finally:
            os.close(dfd)

    # -- reading ------------------------------------------------------------------

    @property
    def head(self):
        """The position just after the last durable record (where the next append goes)."""
        return self._head

    def scan_recent(self, max_bytes):
        """Payloads of the newest records, about ``max_bytes`` of them, oldest first.

        Synchronous: for start-up only (after :meth:`open`, before serving),
        like :meth:`open` itself.
        """
        with self._lock:
            segments = [(n, self._sizes.get(n, HEADER_SIZE)) for n in self._segs]
        chosen, total = [], 0
        for number, size in reversed(segments):
            if total >= max_bytes:
                break
            chosen.append((number, size))
            total += size
        for number, size in reversed(chosen):
            try:
                fd = os.open(self._file(segment_name(number)), os.O_RDONLY)
            except OSError:
                continue
            try:
                for _, payload, damage in iter_records(fd, HEADER_SIZE, size):
                    if damage is None:
                        yield payload
            finally:
                os.close(fd)

    def bytes_between(self, start, end):
        """Bytes of records from ``start`` up to ``end`` (a consumer's backlog on disk)."""
        if start >= end:
            return 0
        with self._lock:
            total = 0
            for number in self._segs:
                if number < start.segment or number > end.segment:
                    continue
                lo = start.offset if number == start.segment else HEADER_SIZE
                hi = end.offset if number == end.segment else self._sizes.get(number, HEADER_SIZE)
                total += max(0, hi - max(lo, HEADER_SIZE))
            return total

    @staticmethod
    def record_end(pos, payload_size):
        """The position just after a record of ``payload_size`` bytes written at ``pos``
        (a segment end is a valid place to resume reading from)."""
        return Position(pos.segment, pos.offset + REC_OVERHEAD + payload_size)

    def read(self, start, max_bytes=1 << 20, max_records=None):
        """Durable records from ``start``: a list of ``(pos, next_pos, payload)``, [] at the head."""
        if self._closing or not self._opened:
            return fail(SpoolWriteError("spool is closed" if self._closing else "spool not opened"))
        return self._reader.submit(self._read, start, max_bytes, max_records)

    def _read(self, start, max_bytes, max_records):
        out = []
        used = 0
        pos = start
        while max_records is None or len(out) < max_records:
            with self._lock:
                head = self._head
                segs = self._segs
                if not segs or pos >= head:
                    break
                seg = pos.segment
                i = bisect.bisect_left(segs, seg)
                if i == len(segs):
                    break
                if segs[i] != seg:                     # gone or never was: the next one
                    seg, off = segs[i], HEADER_SIZE
                else:
                    off = max(pos.offset, HEADER_SIZE)
                end = head.offset if seg == head.segment else self._sizes[seg]
                nxt = segs[i + 1] if i + 1 < len(segs) else None
            if off >= end:
                if seg == head.segment or nxt is None:
                    break
                pos = Position(nxt, HEADER_SIZE)
                continue
            try:
                fd = os.open(self._file(segment_name(seg)), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                with self._lock:
                    gone = seg not in self._sizes
                if gone:
                    pos = Position(seg + 1, HEADER_SIZE)
                    continue
                raise
            try:
                bad = None
                for roff, payload, damage in iter_records(fd, off, end, max_bytes - used,
                                                          at_least_one=not out):
                    if damage is not None:
                        self._read_corruption(seg, damage, end, active=(seg == head.segment))
                        if damage.resume is None:
                            bad = damage
                            break
                        off = damage.resume
                        continue
                    size = REC_OVERHEAD + len(payload)
                    out.append((Position(seg, roff), Position(seg, roff + size), payload))
                    used += size
                    off = roff + size
                    if used >= max_bytes or (max_records is not None and len(out) >= max_records):
                        break
            finally:
                os.close(fd)
            if bad is not None:
                if seg == head.segment or nxt is None:
                    break
                pos = Position(nxt, HEADER_SIZE)
                continue
            if used >= max_bytes or off < end:
                break
            pos = Position(seg, off)
        return out

    def _read_corruption(self, seg, damage, end, active):
        """Damaged bytes in a segment, skipped up to the next good frame or the end
        (recorded once, logged once)."""
        if (seg, damage.offset) in self._seen_bad:
            return
        self._seen_bad.add((seg, damage.offset))
        self._problem(seg, damage.offset, damage.size(end), damage.reason, threaded=True,
                      resumed=damage.resume is not None)
        if active and damage.resume is None:
            with self._cond:               # readers continue in the next segment
                self._roll_requested = True
                self._cond.notify()

    # -- cursors ------------------------------------------------------------------

    def cursor(self, name):
        """The saved cursor of destination ``name`` (the beginning if none)."""
        return self._cursors.get(name, BEGINNING)

    def save_cursor(self, name, pos):
        """Write the cursor durably (temp, fsync, rename, fsync dir), then delete consumed segments."""
        if self._closing or not self._opened:
            return fail(SpoolWriteError("spool is closed" if self._closing else "spool not opened"))
        return self._maint.submit(self._save_cursor, name, pos)

    def _cursor_file(self, name):
        stem = urllib.parse.quote(name, safe="")
        if len(stem) > 200 or stem.startswith("."):
            stem = "~" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
        return self._file(stem + _CURSOR_SUFFIX)

    def _save_cursor(self, name, pos):
        path = self._cursor_file(name)
        tmp = path + ".tmp"
        data = json.dumps({"name": name, "segment": pos.segment, "offset": pos.offset}).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            self._write_buf(os.write, fd, data)
            if self.fsync:
                self._fsync_fn(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        if self.fsync:
            self._fsync_dir()
        self._cursors[name] = pos
        self._delete_consumed()

    def set_consumers(self, names):
        """The destinations in use; only their cursors decide which segments are deleted."""
        self._consumers = frozenset(names)
        ignored = sorted(set(self._cursors) - self._consumers)
        if ignored:
            log.warn("spool {path}: cursors of unknown destinations ignored: {names}",
                     path=self.path, names=", ".join(ignored))
        if self._opened and not self._closing and self._writer is not None:
            self._maint.submit(self._delete_consumed)

    def _delete_consumed(self):
        """Delete the segments wholly below every consumer's cursor (maintenance thread)."""
        consumers = self._consumers
        if not consumers:
            return 0
        low = min(self._cursors.get(n, BEGINNING) for n in consumers)
        with self._lock:
            active = self._head.segment
            victims = [s for s in self._segs if s != active and
                       (s < low.segment or (s == low.segment and low.offset >= self._sizes[s]))]
            for s in victims:
                self._segs.remove(s)
                self._total -= self._sizes.pop(s)
        for s in victims:
            try:
                os.unlink(self._file(segment_name(s)))
            except FileNotFoundError:
                pass
            except OSError as e:
                self._log_threaded("error", "spool: cannot delete segment {seg}: {e}", seg=s, e=e)
        if victims and self.fsync:
            try:
                self._fsync_dir()
            except OSError as e:
                self._log_threaded("error", "spool: fsync of {path} failed: {e}", path=self.path, e=e)
        return len(victims)

    # -- state --------------------------------------------------------------------

    @property
    def size(self):
        """Bytes of all segments on disk."""
        return self._total

    def full(self):
        """True when appends fail with :class:`SpoolFull`."""
        return self._total + self._reserved >= self.max_size

    def health(self):
        """Counts and states only: ``/health`` needs no authentication, so no error texts."""
        return {
            "bytes": self._total,
            "max_bytes": self.max_size,
            "full": self.full(),
            "segments": len(self._segs),
            "problems": self._problem_count,
            "skipped_bytes": self.skipped_bytes,
            "skipped_regions": self.skipped_regions,
            "pending_bytes": self._reserved,
            "write_errors": self._write_errors,
        }

    def status(self):
        """:meth:`health` and the details an operator needs (``/status``, authenticated)."""
        head = self._head
        document = self.health()
        document.update({
            "head": [head.segment, head.offset] if head is not None else None,
            "last_write_error": self._last_write_error,
            "recent_problems": [dict(p) for p in self.problems[-10:]],
        })
        return document

    # -- helpers ------------------------------------------------------------------

    def _file(self, name):
        return os.path.join(self.path, name)

    def _problem(self, segment, offset, dropped, reason, threaded=False, resumed=False):
        self.problems.append({"segment": segment, "offset": offset,
                              "bytes_dropped": dropped, "reason": reason})
        del self.problems[:-self.max_problems]
        self._problem_count += 1
        if dropped:
            self.skipped_bytes += dropped
            self.skipped_regions += 1
        fmt = ("spool {path}: {reason} in segment {segment} at offset {offset}; "
               "{dropped} bytes dropped, the records before are kept")
        if resumed:
            fmt = ("spool {path}: {reason} in segment {segment} at offset {offset}; "
                   "{dropped} bytes skipped (at least one record lost), reading goes on after them")
        if segment is None:
            fmt = "spool {path}: {reason}"
        kw = dict(path=self.path, reason=reason, segment=segment, offset=offset, dropped=dropped)
        if threaded:
            self._log_threaded("error", fmt, **kw)
        else:
            log.error(fmt, **kw)

    def _log_threaded(self, level, fmt, **kw):
        self._reactor.callFromThread(getattr(log, level), fmt, **kw)
