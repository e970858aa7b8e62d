"""Rows waiting for their INSERT, grouped by (table, column list), the flush
thresholds, and how one INSERT (a :class:`Batch`) is cut from them
(doc/clickhouse.md, "Batching"). No reactor here: the insert pipeline
(:mod:`.pipeline`) owns the timers."""

__all__ = ["RowGroup", "PendingRows", "Batch"]


class RowGroup:
    __slots__ = ("table", "plan", "lines", "rows", "bytes")

    def __init__(self, table, plan):
        self.table = table
        self.plan = plan
        self.lines = []
        self.rows = []
        self.bytes = 0


class PendingRows:
    """Encoded rows waiting for their INSERT, grouped by (table, column list);
    groups are kept oldest first (dict order).

    Two states: *accumulating* (the thresholds decide when a flush starts)
    and *flushing* (``flushing`` True: INSERTs are cut with :meth:`take_one`
    as slots free up). A flush takes the groups that were waiting when it
    started (:meth:`start_flush`), with the rows that join them before they
    leave; a group that forms after its table's rows left waits for the next
    start. A flush ends when its groups are gone."""

    def __init__(self):
        self.groups = {}
        self.rows = 0
        self.bytes = 0
        self.flushing = False
        self._flush_keys = set()    # the groups the flush under way still has to take

    def start_flush(self):
        """Every group waiting now is taken by the flush (started, or extended)."""
        if self.rows:
            self.flushing = True
            self._flush_keys.update(self.groups)

    def add(self, table, plan, line, row):
        self.add_many(table, plan, (line,), (row,))

    def add_many(self, table, plan, lines, rows):
        """Rows of one plan (``lines`` their encoded lines, same order)."""
        if not rows:
            return
        key = (table, plan.columns)
        g = self.groups.get(key)
        if g is None:
            g = self.groups[key] = RowGroup(table, plan)
        g.lines.extend(lines)
        g.rows.extend(rows)
        n = sum(map(len, lines))
        g.bytes += n
        self.rows += len(rows)
        self.bytes += n

    def full(self, threshold, max_bytes):
        """True when the buffered rows reach ``threshold`` or their bytes ``max_bytes``."""
        return self.rows >= threshold or self.bytes >= max_bytes

    def take_one(self, max_rows, max_bytes):
        """One INSERT's worth: everything waiting in the flush's oldest group,
        up to ``max_rows`` rows and about ``max_bytes`` bytes (at least one
        row). None when the flush has nothing left."""
        keys = self._flush_keys
        key = next((k for k in self.groups if k in keys), None)
        if key is None:
            keys.clear()
            self.flushing = False
            return None
        g = self.groups[key]
        if len(g.rows) <= max_rows and g.bytes <= max_bytes:
            del self.groups[key]
            keys.discard(key)
            job = Batch(g.table, g.plan, g.lines, g.rows, g.bytes)
        else:
            n, size = _prefix(g.lines, max_rows, max_bytes)
            job = Batch(g.table, g.plan, g.lines[:n], g.rows[:n], size)
            del g.lines[:n]
            del g.rows[:n]
            g.bytes -= size
        self.rows -= len(job.rows)
        self.bytes -= job.bytes
        if not keys or not self.rows:
            keys.clear()
            self.flushing = False
        return job

    def __len__(self):
        return self.rows


def _prefix(lines, max_rows, max_bytes):
    """(count, bytes) of the longest prefix of ``lines`` within both caps (at least one line)."""
    size = 0
    n = 0
    for line in lines:
        if n >= max_rows or (n and size + len(line) > max_bytes):
            break
        size += len(line)
        n += 1
    return n, size


class Batch:
    """One INSERT: rows of one table and one column list, their encoded
    lines, and how often it was sent."""

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
        a = Batch(self.table, self.plan, self.lines[:mid], self.rows[:mid],
                sum(map(len, self.lines[:mid])), refreshed=True)
        b = Batch(self.table, self.plan, self.lines[mid:], self.rows[mid:],
                sum(map(len, self.lines[mid:])), refreshed=True)
        return a, b

    def __repr__(self):
        return f"<Batch {self.table} rows={len(self.rows)} attempts={self.attempts}>"
