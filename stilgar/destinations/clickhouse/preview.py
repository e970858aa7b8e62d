"""What one event becomes in ClickHouse, for the live view (doc/debugging.md).

The same pure row building the destination runs (:func:`.rows.build_rows`), without the schema:
values are shown as built, before they are fitted to the columns' types (a value that does not
fit is then discarded too, which only the destination's discard items can show).
"""

from .router import iso_text
from .rows import build_rows

__all__ = ["preview_rows"]


def preview_rows(database, event, now):
    """``{"database", "rows": [{"table", "columns"}], "discards": [{"table", "columns"}]}`` for
    ``event`` arriving at unix time ``now``."""
    rows, discards = build_rows([event], iso_text(now))
    return {"database": database,
            "rows": [{"table": r.table, "columns": r.data} for r in rows],
            "discards": [{"table": r.table, "columns": r.data} for r in discards]}
