"""A read-only look at a spool directory (``stilgar spool PATH``): no lock taken, nothing written.

Safe while the server runs: a record being appended at that moment may show
as a torn tail of the newest segment.
"""

import os

import attr

from .cursors import CURSOR_SUFFIX, UNREADABLE, read_cursor_file
from .fileformat import HEADER_SIZE, iter_records, segment_header, segment_name, segment_number


@attr.s(frozen=True, slots=True)
class Survey:
    """What the file names of a spool directory say, and its cursors.

    ``cursors``: ``[(name, Position)]``; ``cursor_errors``: ``[(file name, error)]``;
    ``set_aside``: the ``*.corrupt`` files; ``numbers``: the segments, oldest first.
    """
    path = attr.ib()
    numbers = attr.ib()
    cursors = attr.ib()
    cursor_errors = attr.ib()
    set_aside = attr.ib()
    locked_by = attr.ib()

    def segments(self):
        """``(number, size, records)`` per segment still there; ``records`` iterates
        ``(offset, payload, damage)`` (see :func:`iter_records`), or is None when
        the header is bad. Consume ``records`` before the next segment."""
        for number in self.numbers:
            try:
                fd = os.open(os.path.join(self.path, segment_name(number)), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:   # consumed and deleted meanwhile
                continue
            try:
                size = os.fstat(fd).st_size
                good = os.pread(fd, HEADER_SIZE, 0) == segment_header(number)
                yield number, size, (iter_records(fd, HEADER_SIZE, size) if good else None)
            finally:
                os.close(fd)


def survey(path):
    """Look at the directory ``path`` (raises OSError when it cannot be listed)."""
    names = sorted(os.listdir(path))
    cursors, errors = [], []
    for name in names:
        if name.endswith(CURSOR_SUFFIX):
            try:
                cursors.append(read_cursor_file(os.path.join(path, name)))
            except UNREADABLE as e:
                errors.append((name, e))
    locked_by = None
    try:
        with open(os.path.join(path, "lock")) as f:
            locked_by = f.read().strip() or None
    except OSError:
        pass
    numbers = sorted(n for n in map(segment_number, names) if n is not None)
    return Survey(path, numbers, cursors, errors, [n for n in names if n.endswith(".corrupt")], locked_by)
