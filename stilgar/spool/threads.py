"""The spool's I/O threads: each a one-thread Twisted ThreadPool, so its jobs run in order; and
the writer's disk work on one of them."""

import functools
import threading

from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool


def io_pool(name):
    """A stopped one-thread pool; its thread starts on the first job, not at ``start()``.

    twistd forks to daemonise after building the service (and opening the
    spool), and threads do not survive a fork. Daemon threads: a process that
    dies without closing the spool must not hang at exit (nothing unwritten
    was acknowledged).
    """
    pool = ThreadPool(minthreads=0, maxthreads=1, name=name)
    pool.threadFactory = functools.partial(threading.Thread, daemon=True)
    return pool


class ThreadIO:
    """An :class:`~.appender.Appender` on a one-thread pool (``spool.writer: thread``): the
    writer's disk work without a child process, at the cost of the GIL convoy
    (:mod:`.writerproc` says why the process is the default)."""

    def __init__(self, reactor, pool, appender):
        self._reactor, self._pool, self._appender = reactor, pool, appender

    def start(self):
        """Nothing to start: the pool's thread starts with its first job."""

    def commit(self, body, count, roll=False):
        return deferToThreadPool(self._reactor, self._pool, self._appender.commit, body, count, roll)

    def close(self):
        return deferToThreadPool(self._reactor, self._pool, self._appender.close)
