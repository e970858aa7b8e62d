"""Deleting consumed segments: those wholly below every consumer's cursor (doc/durability.md).

Only the cursors of the destinations in use count (``Spool.set_consumers``);
with no consumers nothing is deleted, and the segment being written never is.
Cursors are durable before any deletion, so a crash in between only leaves a
segment that the next pass deletes.
"""

import os

from .fileformat import BEGINNING, segment_name
from .fileio import fsync_dir


def low_water(cursors, consumers):
    """The lowest cursor among ``consumers`` (a missing cursor is the beginning), or None."""
    if not consumers:
        return None
    return min(cursors.get(n, BEGINNING) for n in consumers)


def delete_consumed(directory, table, low, fsync, log):
    """Delete the segments of ``table`` wholly below ``low``; returns how many.

    ``fsync`` is a callable or None; ``log(level, fmt, **kw)`` reports failures
    (the deletion runs on an I/O thread).
    """
    if low is None:
        return 0
    victims = table.remove_below(low)
    for s in victims:
        try:
            os.unlink(os.path.join(directory, segment_name(s)))
        except FileNotFoundError:
            pass
        except OSError as e:
            log("error", "spool: cannot delete segment {seg}: {e}", seg=s, e=e)
    if victims and fsync is not None:
        try:
            fsync_dir(directory, fsync)
        except OSError as e:
            log("error", "spool: fsync of {path} failed: {e}", path=directory, e=e)
    return len(victims)
