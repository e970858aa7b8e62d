"""Starting and stopping a process's services in order (doc/operations.md, "Stopping").

:class:`SequentialMultiService` starts its children in the order they were
added and stops them in the reverse order, each stop waiting for the one
before it: the collector adds the spool first and the web last, so the
listener closes first and the spool is closed last, after the forwarder has
flushed and saved its cursors. :class:`ProcessService` is the top of one
process's tree (a collector or the parent of ``server.workers``).
"""

import threading

import attr
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from .systemd import tell_systemd

__all__ = ["SequentialMultiService", "ProcessService", "SpoolService"]

log = Logger(namespace="stilgar")


class SequentialMultiService(service.MultiService):
    """A ``MultiService`` whose children stop one at a time, last started first.

    ``stopService`` waits for each child's Deferred before stopping the next
    one; a child that fails to stop is logged and the others are still stopped.
    """

    def stopService(self):
        service.Service.stopService(self)
        return self._stop_children(list(self)[::-1])

    @defer.inlineCallbacks
    def _stop_children(self, children):
        for child in children:
            if not child.running:
                continue
            try:
                yield defer.maybeDeferred(child.stopService)
            except Exception:
                log.failure("stopping {name} failed", name=child.name or type(child).__name__)


class ProcessService(SequentialMultiService):
    """The top of one process's tree: its log (offered to twistd, SIGUSR1) and systemd's STOPPING.

    ``process_log`` is a :class:`stilgar.logs.ProcessLog`.
    """

    def __init__(self, process_log, reactor):
        super().__init__()
        self.process_log = process_log
        self.reactor = reactor

    @property
    def observer(self):
        """The log observer of this process (``twist`` is handed it by the plugin)."""
        return self.process_log.observer

    def setServiceParent(self, parent):
        # twistd starts its log observer after building the application: offer ours
        self.process_log.offer(parent)
        return super().setServiceParent(parent)

    def startService(self):
        # a Clock (unit tests) has no threads; signals can be set only from the main thread
        if hasattr(self.reactor, "callFromThread") and threading.current_thread() is threading.main_thread():
            self.process_log.handle_sigusr1(self.reactor)
        super().startService()

    def stopService(self):
        tell_systemd("STOPPING=1")
        return super().stopService()


@attr.s(eq=False)
class SpoolService(service.Service):
    """The one owner of the spool's life: opened when built, started, and closed last.

    Opened when built (:meth:`opened`), i.e. before twistd daemonises, so that a
    locked or unreadable spool stops the start with its message on stderr; its
    writer thread starts with the service (after the fork); ``stopService``
    closes it, which writes what is queued and releases the directory's lock.
    """

    spool = attr.ib()
    name = "spool"

    @classmethod
    def opened(cls, spool):
        spool.open()
        return cls(spool)

    def startService(self):
        super().startService()
        self.spool.start()

    def stopService(self):
        super().stopService()
        return self.spool.close()
