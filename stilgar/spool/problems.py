"""What the spool found wrong: damaged bytes, bad headers, unreadable cursors (doc/durability.md).

Every problem is logged once (error) and counted for ``/health``; the last
``max_problems`` are kept for ``/status``.
"""

import threading

from twisted.logger import Logger

log = Logger(namespace="stilgar.spool")

_CUT = ("spool {path}: {reason} in segment {segment} at offset {offset}; "
        "{dropped} bytes dropped, the records before are kept")
_SKIPPED = ("spool {path}: {reason} in segment {segment} at offset {offset}; "
            "{dropped} bytes skipped (at least one record lost), reading goes on after them")
_OTHER = "spool {path}: {reason}"


def log_from_thread(reactor, level, fmt, **kw):
    """Log on the reactor thread (the log observers are not thread-safe)."""
    reactor.callFromThread(getattr(log, level), fmt, **kw)


class ProblemLog:
    """The problems of one spool directory, recorded from any thread."""

    max_problems = 100

    def __init__(self, path, reactor):
        self.path = path
        self._reactor = reactor
        self._lock = threading.Lock()
        self.problems = []          # the last max_problems of them
        self.count = 0
        self.skipped_bytes = 0      # bytes of damaged records skipped or cut off
        self.skipped_regions = 0    # damaged stretches (each held at least one record)
        self._seen = set()          # (segment, offset) of damage already recorded

    def record(self, segment, offset, dropped, reason, threaded=False, resumed=False):
        """Count, keep and log one problem; ``resumed``: reading goes on after the bytes."""
        with self._lock:
            self.problems.append({"segment": segment, "offset": offset,
                                  "bytes_dropped": dropped, "reason": reason})
            del self.problems[:-self.max_problems]
            self.count += 1
            if dropped:
                self.skipped_bytes += dropped
                self.skipped_regions += 1
        fmt = _OTHER if segment is None else (_SKIPPED if resumed else _CUT)
        kw = dict(path=self.path, reason=reason, segment=segment, offset=offset, dropped=dropped)
        if threaded:
            log_from_thread(self._reactor, "error", fmt, **kw)
        else:
            log.error(fmt, **kw)

    def first_sighting(self, segment, offset):
        """True the first time damage at ``(segment, offset)`` is seen (it is recorded once)."""
        with self._lock:
            if (segment, offset) in self._seen:
                return False
            self._seen.add((segment, offset))
            return True

    def recent(self, n=10):
        with self._lock:
            return [dict(p) for p in self.problems[-n:]]
