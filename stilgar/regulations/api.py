"""The boundary the web layer talks to for regulations (it knows nothing of storage)."""

from zope.interface import Attribute, Interface

from .model import BadRegulation

__all__ = ["IRegulations", "BadRegulation", "RegulationsUnavailable"]


class RegulationsUnavailable(Exception):
    """A regulation cannot be recorded now (the journal cannot be written): answered 503."""


class IRegulations(Interface):
    unavailable = Attribute("None when regulations can be filed, else the reason (str).")

    def file(document, admin):
        """File a regulation from a decoded request body; raises :class:`BadRegulation` at once
        for a malformed one. A Deferred fired with its document once it is durable, failing with
        :class:`RegulationsUnavailable` when it cannot be made durable."""

    def get(regulation_id):
        """A Deferred fired with the regulation's document, or None when unknown."""

    def newest_first():
        """A Deferred fired with the documents of every regulation, newest first."""
