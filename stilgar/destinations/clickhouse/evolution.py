"""Schema evolution decisions (pure): which table to create, which columns to
add or widen for a set of rows, and which rows the growth limits refuse."""

import attr

from .coltypes import Column, infer_kind, join_kinds, new_column_type, widen_type
from .schema import add_columns_sql, create_table_sql, modify_column_sql, standard_columns, table_kind

__all__ = ["Changes", "plan_changes", "changes_sql", "is_context_extra"]


@attr.s(slots=True)
class Changes:
    table = attr.ib()
    create = attr.ib(default=False)
    add = attr.ib(factory=dict)         # column -> type (ordered), new columns
    modify = attr.ib(factory=dict)      # column -> new type
    rejected = attr.ib(factory=list)    # (row, reason)

    def empty(self):
        return not (self.create or self.add or self.modify)


def plan_changes(schema, table, rows, caps, max_expansion=0, max_width=0):
    """Plan the DDL that lets ``rows`` (rows.Row) be written into ``table``.

    ``schema``: the cached TableSchema, or None when the table does not exist.
    Standard columns never count against the limits. ``max_expansion`` bounds
    the new property/trait columns one row may add and, separately, its new
    ``context_<section>_*`` columns (so a refusal names the property count the
    original names); ``max_width`` bounds every non-standard column of the
    table, both kinds together."""
    kind = table_kind(table)
    std = standard_columns(kind, caps)
    aggregating = schema.aggregating if schema is not None else (kind == "users" and caps.simple_aggregate)
    existing = schema.columns if schema is not None else {}
    extra_now = schema.extra if schema is not None else 0
    ch = Changes(table=table, create=schema is None)
    new_kinds = {}                       # planned non-standard new column -> kind
    view = {}                            # widened columns: name -> Column with the planned type
    for row in rows:
        row_new, row_std, row_mod = _row_needs(row, existing, view, std, new_kinds, ch, caps,
                                               schema is not None)
        reason = _refusal(row_new, new_kinds, extra_now, max_expansion, max_width)
        if reason is not None:
            ch.rejected.append((row, reason))
            continue
        new_kinds.update(row_new)
        for col, t in row_std.items():
            ch.add[col] = t
        for col, nt in row_mod.items():
            ch.modify[col] = nt
            view[col] = Column.from_system(col, nt, "stilgar")
    for col, k in new_kinds.items():
        ch.add[col] = new_column_type(k, caps, aggregating)
    return ch


def _row_needs(row, existing, view, std, new_kinds, ch, caps, exists):
    """What one row needs: (new non-standard columns -> kind, missing standard
    columns -> type, columns to widen -> new type)."""
    row_new = {}
    row_std = {}
    row_mod = {}
    for col, v in row.data.items():
        c = view.get(col) or existing.get(col)
        if c is not None:
            if c.encode(v) is None:
                nt = widen_type(c, v, caps, col in std)
                if nt is not None:
                    row_mod[col] = nt
            continue
        if col in std:
            if exists and col not in ch.add:
                row_std[col] = std[col]
            continue
        k = infer_kind(v)
        if k is None:
            continue
        if col in new_kinds:
            row_new[col] = join_kinds(new_kinds[col], k)
        else:
            row_new[col] = k
    return row_new, row_std, row_mod


def _refusal(row_new, new_kinds, extra_now, max_expansion, max_width):
    """Why the growth limits refuse a row bringing ``row_new``, or None."""
    fresh = [c for c in row_new if c not in new_kinds]
    if max_expansion:
        n_context = sum(1 for c in row_new if is_context_extra(c))
        n_props = len(row_new) - n_context
        if n_props > max_expansion:
            return f"max_table_expansion exceeded: {n_props} new columns, limit {max_expansion}"
        if n_context > max_expansion:
            return f"max_table_expansion exceeded: {n_context} new context columns, limit {max_expansion}"
    if max_width and extra_now + len(new_kinds) + len(fresh) > max_width:
        return (f"max_table_width exceeded: table would have "
                f"{extra_now + len(new_kinds) + len(fresh)} columns, limit {max_width}")
    return None


def is_context_extra(column):
    """A ``context_<section>_*`` column that is not a standard column (property
    columns never start with ``context_``; traits are ``context_traits_*``)."""
    return column.startswith("context_") and not column.startswith("context_traits_")


def changes_sql(changes, database, caps):
    """The statements for ``changes``: [(sql, is_alter_modify)]."""
    out = []
    if changes.create:
        extra = list(changes.add.items())
        out.append((create_table_sql(database, changes.table, caps, extra), False))
    elif changes.add:
        out.append((add_columns_sql(database, changes.table, list(changes.add.items()), caps), False))
    for col, t in changes.modify.items():
        out.append((modify_column_sql(database, changes.table, col, t), True))
    return out
