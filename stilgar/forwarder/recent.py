"""The recent-messageId map: a client's retry gets its first copy's ``receivedAt``."""

import collections

from .. import jsoncodec

__all__ = ["RecentMessages"]


class RecentMessages:
    """messageId -> receivedAt of the most recently accepted events, bounded.

    A client resends a request whose answer it never saw (a crash between the
    fsync and the 200, a timeout) with the same messageIds. Giving the copy the
    first copy's ``receivedAt`` makes both rows share their sort key
    ``(received_at, id)``, so ReplacingMergeTree collapses them. Filled from the
    spool's newest records at start-up, so it survives a ``kill -9``.

    Memory is a fixed size per entry whatever the clients send: the key is the
    messageId's 64-bit string hash (SipHash, keyed at random per process, so
    clients cannot aim at a collision; by chance one in about 10^14 new ids
    meets one of 200 000 remembered; it costs 26 ns where a BLAKE2b digest cost
    400), the value a ``receivedAt`` text
    (the collector's own timestamp, shared by the events of a request). Ids
    longer than ``max_id_length`` characters and odd ``receivedAt`` values are
    not remembered (SDKs send 36-character UUIDs).
    """

    max_id_length = 512
    max_stamp_length = 40
    entry_bytes = 250       # measured upper bound per entry (tests/test_forwarder.py)

    def __init__(self, capacity=200_000):
        self.capacity = capacity
        self._seen = collections.OrderedDict()

    def __len__(self):
        return len(self._seen)

    def stamp(self, events):
        """Reuse the first ``receivedAt`` of known messageIds; remember the others."""
        seen = self._seen
        known = seen.get
        max_id, max_stamp = self.max_id_length, self.max_stamp_length
        for event in events:
            mid = event.get("messageId")
            if type(mid) is not str or len(mid) > max_id:    # (decoded JSON: a str is exactly str)
                continue
            key = hash(mid)
            first = known(key)
            received = event.get("receivedAt")
            if first is None:
                if type(received) is str and len(received) <= max_stamp:
                    seen[key] = received
            elif first != received:
                event["receivedAt"] = first
        if len(seen) > self.capacity:
            pop = seen.popitem
            for _ in range(len(seen) - self.capacity):
                pop(last=False)

    def load(self, payloads):
        """Remember the events of spooled records (oldest first)."""
        for payload in payloads:
            try:
                events = jsoncodec.loads(payload)["e"]
            except (ValueError, KeyError, TypeError):
                continue
            self.stamp([e for e in events if isinstance(e, dict) and "receivedAt" in e])
