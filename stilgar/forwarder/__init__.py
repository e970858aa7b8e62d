"""The forwarder: spooling accepted requests, the queue, one lane per destination, cursors.

``service.Forwarder`` assembles the parts: ``admission`` (the one accepting rule), ``consumer``
(the LoopingCall drain of the DeferredQueue), ``lane`` (one destination's live feed and
catch-up from the spool), ``record`` (a spooled request), ``recent`` (the recent-messageId map).
doc/design.md and doc/durability.md describe the path.
"""

from .lane import Lane
from .recent import RecentMessages
from .record import Record
from .service import Backoff, Forwarder

__all__ = ["Forwarder", "Record", "Backoff", "Lane", "RecentMessages"]
