"""The spool's table of segments on disk: numbers, durable sizes, total, head.

Shared by the writer (which grows it), the reader, retention and the
reactor (sizes for ``/health`` and backlogs), so every change happens under
its lock. Sizes are *durable* sizes: a reader never goes past them.
"""

import bisect
import threading

from .fileformat import HEADER_SIZE, Position


class SegmentTable:
    """Sorted segment numbers with their durable sizes, and the head (the next append's place)."""

    def __init__(self, sizes, head):
        self._lock = threading.Lock()
        self._segs = sorted(sizes)
        self._sizes = dict(sizes)
        self.total = sum(self._sizes.values())   # read without the lock (an int)
        self.head = head

    def __len__(self):
        return len(self._segs)

    def added(self, number):
        """A new segment, holding its header only, is the head now."""
        with self._lock:
            self._segs.append(number)
            self._sizes[number] = HEADER_SIZE
            self.total += HEADER_SIZE
            self.head = Position(number, HEADER_SIZE)

    def grown(self, number, end):
        """Segment ``number`` is durable up to ``end`` (a commit was written and fsynced)."""
        with self._lock:
            self.total += end - self._sizes[number]
            self._sizes[number] = end
            self.head = Position(number, end)

    def has(self, number):
        with self._lock:
            return number in self._sizes

    def snapshot(self):
        """``[(number, durable size)]``, oldest first."""
        with self._lock:
            return [(n, self._sizes[n]) for n in self._segs]

    def locate(self, pos):
        """Where reading from ``pos`` goes: ``(segment, offset, end, next segment, head)``,
        or None at the head or past every segment. ``segment`` is the first one at
        or after ``pos.segment`` (a deleted one is skipped)."""
        with self._lock:
            head, segs = self.head, self._segs
            if not segs or pos >= head:
                return None
            i = bisect.bisect_left(segs, pos.segment)
            if i == len(segs):
                return None
            seg = segs[i]
            off = max(pos.offset, HEADER_SIZE) if seg == pos.segment else HEADER_SIZE
            end = head.offset if seg == head.segment else self._sizes[seg]
            nxt = segs[i + 1] if i + 1 < len(segs) else None
            return seg, off, end, nxt, head

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

    def remove_below(self, low):
        """Forget the segments wholly below position ``low``, never the head's; returns their numbers."""
        with self._lock:
            active = self.head.segment
            victims = [s for s in self._segs if s != active and
                       (s < low.segment or (s == low.segment and low.offset >= self._sizes[s]))]
            for s in victims:
                self._segs.remove(s)
                self.total -= self._sizes.pop(s)
            return victims
