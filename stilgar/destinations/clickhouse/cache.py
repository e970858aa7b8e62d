"""The row buffer: rows grouped by (table, sorted column list), and the flush
rules (contract section 4, "Batching"). No reactor here: the destination
passes the time in and owns the timer."""

__all__ = ["Group", "Buffer", "Job"]


class Group:
    __slots__ = ("table", "plan", "lines", "rows", "bytes")

    def __init__(self, table, plan):
        self.table = table
        self.plan = plan
        self.lines = []
        self.rows = []
        self.bytes = 0


class Buffer:
    """Encoded rows waiting for their INSERT."""

    def __init__(self):
        self.groups = {}
        self.rows = 0
        self.bytes = 0
        self.oldest = None        # when the oldest buffered row arrived

    def add(self, table, plan, line, row, now):
        key = (table, plan.columns)
        g = self.groups.get(key)
        if g is None:
            g = self.groups[key] = Group(table, plan)
        g.lines.append(line)
        g.rows.append(row)
        n = len(line)
        g.bytes += n
        self.rows += 1
        self.bytes += n
        if self.oldest is None:
            self.oldest = now

    def full(self, threshold, max_bytes):
        """True when the buffered rows reach ``threshold`` or their bytes ``max_bytes``."""
        return self.rows >= threshold or self.bytes >= max_bytes

    def idle_due(self, now, idle_timeout):
        return self.oldest is not None and now - self.oldest >= idle_timeout

    def take(self):
        """Every group, as jobs; the buffer is empty afterwards."""
        jobs = [Job(g.table, g.plan, g.lines, g.rows, g.bytes) for g in self.groups.values()]
        self.groups = {}
        self.rows = 0
        self.bytes = 0
        self.oldest = None
        return jobs

    def __len__(self):
        return self.rows


class Job:
    """One INSERT: rows of one table and one column list."""

    __slots__ = ("table", "plan", "lines", "rows", "bytes", "attempts", "refreshed")

    def __init__(self, table, plan, lines, rows, nbytes, refreshed=False):
        self.table = table
        self.plan = plan
        self.lines = lines
        self.rows = rows
        self.bytes = nbytes
        self.attempts = 0
        self.refreshed = refreshed

    def halves(self):
        mid = len(self.rows) // 2
        a = Job(self.table, self.plan, self.lines[:mid], self.rows[:mid],
                sum(map(len, self.lines[:mid])), refreshed=True)
        b = Job(self.table, self.plan, self.lines[mid:], self.rows[mid:],
                sum(map(len, self.lines[mid:])), refreshed=True)
        return a, b

    def __repr__(self):
        return f"<Job {self.table} rows={len(self.rows)} attempts={self.attempts}>"
