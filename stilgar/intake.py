"""The boundary between the HTTP surface and the forwarder."""

from zope.interface import Attribute, Interface

__all__ = ["IIntake", "Unavailable"]


class Unavailable(Exception):
    """The intake cannot hold these events now (spool full, disk full, stopping)."""

    def __init__(self, retry_after=30):
        super().__init__(retry_after)
        self.retry_after = retry_after


class IIntake(Interface):
    """Where accepted events go (the forwarder, with its spool)."""

    stopping = Attribute("True once shutdown began (set by the web service when it stops listening): "
                         "event routes answer 503 with Retry-After: 5.")

    def accepting(write_key):
        """Cheap check at header time: may a request for this key be taken now?

        The one admission rule (stilgar/admission.py): false while stopping
        too; ``accept()`` and ``health()`` apply the same rule."""

    def accept(write_key, request_id, events):
        """Hold a request's normalised events durably; a Deferred fired once
        they are safe (spooled), failing with :class:`Unavailable` when not."""

    def health():
        """The /health document (without the HTTP status)."""

    def status(with_destinations):
        """Extra /status keys: spool, destinations."""

    def queue_capacity():
        """Free room in the in-memory queue (the original's queue_capacity)."""
