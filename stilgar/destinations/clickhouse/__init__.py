"""The ``clickhouse`` destination (doc/clickhouse.md).

Modules, by job: :mod:`.settings` (the config block), :mod:`.client` (treq
HTTP), :mod:`.capabilities` (server probing), :mod:`.naming` (names and
sanitising), :mod:`.coltypes` (types, inference, fitting, widening),
:mod:`.schema` (standard columns, DDL, cached table view), :mod:`.rows`
(event -> rows), :mod:`.tsv` (escaping), :mod:`.evolution` (schema change
plans), :mod:`.schemas` (the schema manager), :mod:`.layout` and :mod:`.nodes`
(one server or a cluster), :mod:`.batches` (rows waiting for their INSERT),
:mod:`.router` (rows to their group, schema work or discards),
:mod:`.evolver` (schema work), :mod:`.pipeline` (INSERTs), :mod:`.link`
(connection state), :mod:`.destination` (the IDestination assembling them).
"""

from zope.interface import provider

from ..base import IDestinationType
from .settings import ClickHouseSettings, parse_settings

__all__ = ["ClickHouseType", "ClickHouseSettings"]


@provider(IDestinationType)
class ClickHouseType:
    @staticmethod
    def parse_settings(settings, where, warn):
        return parse_settings(settings, where, warn)

    @staticmethod
    def default_name(settings):
        return f"clickhouse:{settings.database}"

    @staticmethod
    def probe(settings, reactor):
        """``stilgar check --connect``: fires with the server's version, or fails."""
        from .client import Client

        client = Client(reactor, settings)
        d = client.query("SELECT version()", select=True)
        d.addCallback(lambda body: "ClickHouse " + body.decode("utf-8", "replace").strip())
        d.addBoth(lambda result: client.close().addCallback(lambda _: result))
        return d

    @staticmethod
    def build(name, write_keys, settings, reactor):
        from .destination import ClickHouseDestination
        return ClickHouseDestination(name, write_keys, settings, reactor)

    @staticmethod
    def preview(settings, event, now):
        """The rows ``event`` becomes, at unix time ``now`` (the live view's optional hook)."""
        from .preview import preview_rows
        return preview_rows(settings.database, event, now)
