"""Start-up: lock the directory, check the segments, cut a torn tail (doc/durability.md, "Failure cases").

Synchronous: it runs in :meth:`Spool.open`, before the collector serves.
Every segment's header is checked; the last segment (the only one a crash can
tear, the others having been fsynced before their successor was created) has
every record checked. Damage inside it is recorded and kept (readers skip it
by resynchronising); a tail with no good frame after it is truncated.
"""

import errno
import fcntl
import os
import time

import attr

from .cursors import TMP_SUFFIX
from .errors import SpoolLocked
from .fileformat import HEADER_SIZE, Position, header_problem, iter_records, segment_name, segment_number
from .fileio import create_segment
from .problems import log
from .segments import SegmentTable

ORPHAN_WAIT = 10.0          # seconds a new collector waits for a dead one's writer process


def lock_directory(path, orphan_wait=ORPHAN_WAIT):
    """Create ``path`` if needed and take its ``lock`` file's flock; returns the fd holding it.

    The writer process shares its collector's lock. When the collector named in
    the lock file is dead (kill -9), the lock is its writer process's, which
    ends with its last commit: wait for it, up to ``orphan_wait`` seconds (at
    start-up, before serving).
    """
    os.makedirs(path, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(path, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + orphan_wait
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if _holder_alive(fd) or time.monotonic() >= deadline:
                    raise SpoolLocked("spool %s is locked by another process" % path) from None
                time.sleep(0.02)
    except BaseException:
        os.close(fd)
        raise
    try:
        os.fchmod(fd, 0o600)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, b"%d\n" % os.getpid(), 0)     # informative only
        except OSError:
            pass
    except BaseException:
        os.close(fd)
        raise
    return fd


def _holder_alive(fd):
    """True unless the lock file names a process that is gone (or names none)."""
    try:
        pid = int(os.pread(fd, 32, 0).split()[0])
        os.kill(pid, 0)
    except (ValueError, IndexError, OSError) as e:
        return not isinstance(e, ProcessLookupError)
    return True


@attr.s(slots=True)
class Recovered:
    """What :func:`recover` found: the segment table, and where the writer goes on.

    ``fd`` is None when the new segment could not be created (disk full): the
    writer creates segment ``segment + 1`` on the first commit then.
    """
    table = attr.ib()
    fd = attr.ib()
    segment = attr.ib()


class Recovery:
    """Checks one spool directory at start-up; ``fsync`` is a callable or None."""

    def __init__(self, path, problems, fsync, write):
        self.path = path
        self._problems = problems
        self._fsync = fsync
        self._write = write

    def run(self, names, cursors):
        """Remove ``.tmp`` files, check the segments among ``names``, open a new one.

        Every start writes into a new segment, numbered above every segment and
        every cursor in ``cursors``: anything a crash may have lost can never be
        confused with new data.
        """
        for name in names:
            if name.endswith(TMP_SUFFIX):
                os.unlink(os.path.join(self.path, name))
        numbers = sorted(n for n in map(segment_number, names) if n is not None)
        sizes = {}
        for i, number in enumerate(numbers):
            size = self.check_segment(number, last=(i == len(numbers) - 1))
            if size is not None:
                sizes[number] = size
        top = max([0] + numbers + [c.segment for c in cursors])
        fd = self._new_segment(top + 1)
        if fd is not None:
            sizes[top + 1] = HEADER_SIZE
        table = SegmentTable(sizes, Position(top + 1, HEADER_SIZE))
        log.info("spool {path}: {n} segment(s), {bytes} bytes, {cursors} cursor(s), writing to segment {seg}",
                 path=self.path, n=len(table), bytes=table.total, cursors=len(cursors), seg=top + 1)
        return Recovered(table, fd, top + 1 if fd is not None else top)

    def _new_segment(self, number):
        try:
            return create_segment(self.path, number, self._fsync, self._write)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # Disk full at start-up: serve anyway (appends answer 503) and
            # create the segment on the first append once there is room.
            log.error("spool {path}: cannot create segment {seg}: {e}; appends fail until "
                      "space returns", path=self.path, seg=number, e=e)
            return None

    def check_segment(self, number, last):
        """Validate one segment; returns its good size, or None if set aside."""
        path = os.path.join(self.path, segment_name(number))
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            reason = header_problem(os.pread(fd, HEADER_SIZE, 0), number, path)
            if reason is None:
                return self._check_records(fd, number, size) if last else size
        finally:
            os.close(fd)
        if last and size < HEADER_SIZE:
            os.unlink(path)    # crashed while being created: nothing in it
        else:
            os.rename(path, path + ".corrupt")    # kept for inspection
        self._problems.record(number, 0, size, reason)
        return None

    def _check_records(self, fd, number, size):
        """Read every record of the last segment; truncate a bad tail; returns the good size."""
        good, reason = size, None
        for off, _payload, damage in iter_records(fd, HEADER_SIZE, size):
            if damage is None:
                continue
            if damage.resume is None:           # a torn or corrupt tail: cut off
                good, reason = off, damage.reason
                break
            # damage inside (bit rot): readers skip it, the records after it are kept
            self._problems.first_sighting(number, off)
            self._problems.record(number, off, damage.size(size), damage.reason, resumed=True)
        if good < size:
            os.ftruncate(fd, good)
            if self._fsync is not None:
                self._fsync(fd)
            self._problems.record(number, good, size - good, reason)
        return good
