"""How many schema changes (DDL statements) a destination may issue per minute.

Browser write keys are public: without a bound, one client could make the
collector issue ALTERs as fast as ClickHouse answers them. Pure: the caller
passes the time in (doc/clickhouse.md, "Growth limits").
"""

from collections import deque

__all__ = ["SchemaChangeBudget"]


class SchemaChangeBudget:
    """At most ``limit`` statements in any ``window`` seconds (a sliding
    window); ``limit`` 0 means no bound."""

    def __init__(self, limit, window=60.0):
        self.limit = limit
        self.window = window
        self._times = deque()       # when each statement of the window was issued

    def _expire(self, now):
        times = self._times
        while times and now - times[0] >= self.window:
            times.popleft()

    def take(self, now):
        """Spend one statement; False (nothing spent) when the window is full."""
        if not self.limit:
            return True
        self._expire(now)
        if len(self._times) >= self.limit:
            return False
        self._times.append(now)
        return True

    def wait(self, now):
        """Seconds until a statement may be issued (0: now)."""
        if not self.limit:
            return 0.0
        self._expire(now)
        if len(self._times) < self.limit:
            return 0.0
        return max(0.0, self._times[0] + self.window - now)
