"""The one small interface every destination implements.

A destination knows nothing of HTTP requests: it receives *normalised* events
(plain JSON-able dicts built once at the door by :mod:`stilgar.events`, the same
dicts the spool holds and replays) and confirms them.

The forwarder owns routing (write key -> destinations), the per-destination
lane, the spool cursor and the retry of writes failed with TransientError; a
destination owns its own buffering and its own transport. Each kind of
destination has one retry owner: either the destination retries internally
and its write() never fails (ClickHouse: doc/clickhouse.md, "Who retries
what"), or it fails write() with TransientError and the lane retries.
"""

from zope.interface import Attribute, Interface

# ``type`` of a *discard record* (doc/events.md), which a destination records;
# defined by the events layer that makes them, re-exported for destinations.
from ..events.discard import DISCARD

__all__ = ["IDestination", "IDestinationType", "TransientError", "DISCARD"]


class TransientError(Exception):
    """The destination could not take the events *now*; the caller retries them later."""


class IDestination(Interface):
    name = Attribute("Unique name (str); keys the spool cursor, /status and /health entries.")
    write_keys = Attribute("frozenset of the write keys routed to this destination.")

    def start():
        """Begin work (connect, probe, create tables). Never fails hard: a
        destination that cannot reach its backend reports itself down in
        :meth:`health` and keeps retrying. Returns a Deferred that fires once the
        destination may be given events (it may fire at once)."""

    def write(events):
        """Take a list of normalised event dicts (one request's worth).

        Returns a Deferred that fires with None once *every* event is confirmed:
        stored by the backend, or recorded as a discard (nothing is dropped
        silently). Transient trouble is either retried inside the destination
        (the Deferred simply fires later) or reported by failing the Deferred
        with :class:`TransientError`, after which the forwarder offers the same
        events again with exponential backoff. It must never fail because of
        the content of an event."""

    def flush():
        """Send whatever is buffered now. Returns a Deferred fired when that
        attempt ended (success or not)."""

    def stop():
        """Stop timers and connections after a last :meth:`flush`. Returns a
        Deferred. Events not confirmed by then stay in the spool."""

    def buffered():
        """Number of events taken by :meth:`write` and not yet confirmed."""

    def health():
        """A dict for /health: ``{"up": bool, "since": float unix time of the
        last up/down change}``. Never holds error texts."""

    def status():
        """A JSON-able dict for /status?with_destinations=true (may hold
        ``last_error``, counters of inserted and discarded rows, and so on)."""


class IDestinationType(Interface):
    """A kind of destination, named by the ``type:`` key of a destination block."""

    def parse_settings(settings, where, warn):
        """Validate the destination block (a dict, with ``type``, ``name`` and
        ``write_keys`` already checked by the core) and return an immutable
        settings object. Raise :class:`stilgar.units.ConfigError` whose key
        starts with ``where`` (e.g. ``destinations[1].port``); call
        ``warn(text)`` for an unknown key. Called before anything listens."""

    def default_name(settings):
        """The destination's name when the block gives none."""

    def build(name, write_keys, settings, reactor):
        """Return an :class:`IDestination` (not started)."""

    # Optional: ``probe(settings, reactor)`` -> Deferred firing with a one-line
    # description of the backend reached (``stilgar check --connect``), or failing.
