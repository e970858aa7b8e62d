"""What the server can do (doc/clickhouse.md, "Capabilities"), probed at start and
after every reconnection with one query."""

import re

import attr

from .tsv import parse_tsv

__all__ = ["Capabilities", "PROBE_QUERY", "parse_probe", "OLD", "MODERN"]

PROBE_QUERY = (
    "SELECT 'v', version()"
    " UNION ALL SELECT 't', name FROM system.data_type_families WHERE name IN"
    " ('DateTime64', 'LowCardinality', 'Bool', 'SimpleAggregateFunction')"
    " UNION ALL SELECT 's', name FROM system.settings WHERE name IN"
    " ('async_insert', 'allow_experimental_low_cardinality_type')"
    " FORMAT TabSeparated")


@attr.s(frozen=True, slots=True)
class Capabilities:
    version = attr.ib(default=(0, 0))
    datetime64 = attr.ib(default=False)
    lowcardinality = attr.ib(default=False)
    bool = attr.ib(default=False)
    simple_aggregate = attr.ib(default=False)
    add_column_if_not_exists = attr.ib(default=False)
    async_insert = attr.ib(default=False)

    def describe(self):
        return {"version": ".".join(map(str, self.version)), **{
            k: getattr(self, k) for k in ("datetime64", "lowcardinality", "bool", "simple_aggregate",
                                          "add_column_if_not_exists", "async_insert")}}


def parse_probe(data):
    """Capabilities from the answer to :data:`PROBE_QUERY`."""
    version = (0, 0)
    types = set()
    settings = set()
    for row in parse_tsv(data):
        if len(row) < 2:
            continue
        tag, value = row[0], row[1]
        if tag == "v":
            nums = re.findall(r"\d+", value or "")
            version = tuple(int(n) for n in nums[:2]) if len(nums) >= 2 else (int(nums[0]), 0) if nums else (0, 0)
        elif tag == "t":
            types.add(value)
        elif tag == "s":
            settings.add(value)
    return Capabilities(
        version=version,
        datetime64="DateTime64" in types,
        # 18.16 lists LowCardinality but needs an experimental setting for it
        lowcardinality="LowCardinality" in types and "allow_experimental_low_cardinality_type" not in settings,
        bool="Bool" in types,
        simple_aggregate="SimpleAggregateFunction" in types,
        add_column_if_not_exists=version[0] >= 22,
        async_insert="async_insert" in settings,
    )


OLD = Capabilities(version=(18, 16))
MODERN = Capabilities(version=(26, 9), datetime64=True, lowcardinality=True, bool=True, simple_aggregate=True,
                      add_column_if_not_exists=True, async_insert=True)
