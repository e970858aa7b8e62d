"""Reading durable records back (doc/durability.md, "How it works"): never past the head.

:meth:`Reader.read` runs on the spool's reader I/O thread; every record's CRC
is checked, damaged bytes are skipped up to the next good frame (recorded and
logged once), and a segment deleted meanwhile is skipped.
"""

import os

from .fileformat import HEADER_SIZE, REC_OVERHEAD, Position, iter_records, segment_name


class Reader:
    """Reads the segments of ``table`` in ``directory``; ``request_roll`` asks the writer
    for a new segment when the one being written has a damaged tail."""

    def __init__(self, directory, table, problems, request_roll):
        self._directory = directory
        self._table = table
        self._problems = problems
        self._request_roll = request_roll

    def read(self, start, max_bytes, max_records):
        """Durable records from ``start``: a list of ``(pos, next_pos, payload)``, [] at the head."""
        out, used, pos = [], 0, start
        while max_records is None or len(out) < max_records:
            where = self._table.locate(pos)
            if where is None:
                break
            seg, off, end, nxt, head = where
            active = seg == head.segment
            if off < end:
                fd = self._open(seg)
                if fd is None:                      # consumed and deleted meanwhile
                    pos = Position(seg + 1, HEADER_SIZE)
                    continue
                try:
                    off, used, torn = self._read_segment(fd, seg, off, end, active, out, used,
                                                         max_bytes, max_records)
                finally:
                    os.close(fd)
                if not torn:
                    if used >= max_bytes or off < end:
                        break
                    pos = Position(seg, off)
                    continue
            if active or nxt is None:
                break
            pos = Position(nxt, HEADER_SIZE)
        return out

    def _open(self, seg):
        try:
            return os.open(os.path.join(self._directory, segment_name(seg)), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if self._table.has(seg):
                raise
            return None

    def _read_segment(self, fd, seg, off, end, active, out, used, max_bytes, max_records):
        """Append the records of one segment to ``out``; returns ``(offset reached, bytes used,
        True when a damaged tail ended the segment)``."""
        for roff, payload, damage in iter_records(fd, off, end, max_bytes - used, at_least_one=not out):
            if damage is not None:
                self._damaged(seg, damage, end, active)
                if damage.resume is None:
                    return off, used, True
                off = damage.resume
                continue
            size = REC_OVERHEAD + len(payload)
            off = roff + size
            out.append((Position(seg, roff), Position(seg, off), payload))
            used += size
            if used >= max_bytes or (max_records is not None and len(out) >= max_records):
                break
        return off, used, False

    def _damaged(self, seg, damage, end, active):
        """Damaged bytes, skipped up to the next good frame or the end (recorded once, logged once)."""
        if not self._problems.first_sighting(seg, damage.offset):
            return
        self._problems.record(seg, damage.offset, damage.size(end), damage.reason, threaded=True,
                              resumed=damage.resume is not None)
        if active and damage.resume is None:
            self._request_roll()            # readers continue in the next segment


def scan_recent(directory, table, max_bytes):
    """Payloads of the newest records, about ``max_bytes`` of them, oldest first (synchronous)."""
    chosen, total = [], 0
    for number, size in reversed(table.snapshot()):
        if total >= max_bytes:
            break
        chosen.append((number, size))
        total += size
    for number, size in reversed(chosen):
        try:
            fd = os.open(os.path.join(directory, segment_name(number)), os.O_RDONLY)
        except OSError:
            continue
        try:
            for _, payload, damage in iter_records(fd, HEADER_SIZE, size):
                if damage is None:
                    yield payload
        finally:
            os.close(fd)
