"""The spool's I/O threads: each a one-thread Twisted ThreadPool, so its jobs run in order."""

import functools
import threading

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
