"""A connection's timer, kept for its whole life: one DelayedCall, re-armed.

twisted.web turns a channel's idle timeout off while a request is handled
and on again after it, and the server's read deadline starts with each
request's first byte and stops with its last: each time a cancelled
DelayedCall and a new one (``callLater`` and ``cancel``: about 4 µs per
pair; ``reset``: 0.3). A :class:`Deadline` that is disarmed stays
scheduled and does nothing when it comes due, so the next ``arm`` is a
``reset``.
"""

import attr

__all__ = ["Deadline"]


@attr.s(slots=True, eq=False)
class Deadline:
    """``on_due()`` runs when an armed deadline comes due; ``call_later``:
    the reactor's (or a Clock's)."""

    call_later = attr.ib()
    on_due = attr.ib()
    armed = attr.ib(default=False)
    _call = attr.ib(default=None, repr=False)

    def arm(self, seconds):
        """Come due ``seconds`` from now (whether armed before or not)."""
        self.armed = True
        call = self._call
        if call is not None and call.active():
            call.reset(seconds)
        else:
            self._call = self.call_later(seconds, self._due)

    def disarm(self):
        """Not due any more; the call stays scheduled, for the next ``arm``."""
        self.armed = False

    def stop(self):
        """Disarmed and unscheduled (the connection is gone: nothing holds it)."""
        self.armed = False
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _due(self):
        self._call = None
        if self.armed:
            self.armed = False
            self.on_due()
