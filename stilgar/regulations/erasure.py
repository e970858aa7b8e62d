"""What a destination must offer for regulations and retention (adapters, not the destinations).

Destinations know nothing of regulations: :mod:`.clickhouse` adapts the
ClickHouse destination to :class:`IErasable` with
``twisted.python.components.registerAdapter``; a destination without an
adapter (the blackhole) stores nothing to erase.
"""

from zope.interface import Attribute, Interface

__all__ = ["IErasable", "ErasureFailed"]


class ErasureFailed(Exception):
    """The backend refused a regulation's work for good (a FAILED regulation, with this reason)."""


class IErasable(Interface):
    name = Attribute("The destination's name.")

    def ready():
        """True when the backend is reachable now."""

    def settle_delay():
        """Seconds this destination may hold rows it was given before storing them."""

    def flush():
        """Store whatever the destination holds now (a Deferred)."""

    def publish(rows):
        """Store shared suppression rows ``(at_ms, regulation_id, action, key, type, subject_type,
        admin)`` for every instance (a Deferred)."""

    def fetch():
        """Every shared suppression row ``(at_ms, regulation_id, action, key)`` (a Deferred list)."""

    def plan(subject_type, subject_ids):
        """What to erase: a Deferred list of opaque items with a ``table`` attribute."""

    def count(item):
        """Rows of the subject in ``item``'s table now (a Deferred int)."""

    def delete(item):
        """Start the deletion of the subject's rows in ``item``'s table (a Deferred)."""

    def deleted(item):
        """True once every deletion of ``item``'s table is done (a Deferred bool); fails with
        :class:`ErasureFailed` when the backend gave up."""

    def apply_retention(seconds, now):
        """Keep ``seconds`` of data: TTL where supported, else drop old day partitions.
        A Deferred list of ``(table, what was done)``."""
