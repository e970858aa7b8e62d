"""The drain: a LoopingCall consumer of a DeferredQueue that sleeps while the queue is empty.

Each tick takes everything queued through the queue's public API (``get()``
while items are pending) and hands it over in one call. A tick that finds the
queue empty stops the loop; the ``get()`` left waiting on the queue receives
the next item and restarts the loop, whose first tick comes ``interval`` later
(what arrives meanwhile goes with it). So an idle process makes no wakeups for
the drain and a busy one hands over batches, one per tick.
"""

from twisted.internet import defer, task
from twisted.logger import Logger

__all__ = ["QueueConsumer"]

log = Logger(namespace="stilgar.forwarder")


class QueueConsumer:
    """Hands everything put on ``queue`` to ``handle(items)``, oldest first, in ticks."""

    def __init__(self, handle, clock, interval, queue=None):
        self.handle = handle
        self.interval = interval
        self.queue = defer.DeferredQueue() if queue is None else queue
        self.loop = task.LoopingCall(self._tick)
        self.loop.clock = clock
        self.active = False       # between start() and stop(): an arrival may restart the loop
        self._waiter = None       # the queue.get() waiting for the next item
        self._arrived = []        # what that get() handed over, for the next tick

    def put(self, item):
        self.queue.put(item)

    def start(self):
        """The first tick routes anything queued already and leaves a get() waiting."""
        self.active = True
        self.loop.start(self.interval, now=False)

    def take(self):
        """Everything queued, oldest first.

        ``get()`` fires at once while items are pending; the first one that
        does not is kept waiting: it hands over the next item and restarts the
        loop if an idle tick stopped it.
        """
        items, self._arrived = self._arrived, []
        while self._waiter is None:
            d = self.queue.get()
            if d.called:
                d.addCallback(items.append)
            else:
                self._waiter = d
                d.addCallback(self._item_arrived)
                d.addErrback(lambda f: f.trap(defer.CancelledError))   # stop()
        return items

    def _item_arrived(self, item):
        self._waiter = None
        self._arrived.append(item)
        if self.active and not self.loop.running:
            self.loop.start(self.interval, now=False)

    def drain(self):
        """Hand over everything queued now; returns how many items."""
        items = self.take()
        if items:
            self.handle(items)
        return len(items)

    def _tick(self):
        # a LoopingCall stops for good at its first exception: items would stop flowing
        try:
            if not self.drain() and self.loop.running:
                self.loop.stop()     # idle: the waiting get() restarts it
        except Exception:
            log.failure("forwarder drain failed (a bug); the loop goes on")

    def stop(self):
        """Hand over what is queued; what is put from now on stays in the queue."""
        self.active = False
        if self.loop.running:
            self.loop.stop()
        self.drain()
        if self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            waiter.cancel()
