"""The writer process: the spool's disk work in a child process of its own (``spool.writer: process``).

Why a process and not a thread: a Python thread needs the GIL after every
``write`` and ``fsync``, and under load the reactor thread gives it up only
for its own system calls, each of which wakes the waiting thread for nothing
(CPython's GIL convoy: about 40 context switches per commit, a third of a
single-event request's CPU, measured in doc/performance.md). A child has a
GIL of its own; the reactor only writes a batch to a pipe and reads the
answer, both non-blocking.

The child is :mod:`.writerchild`, a separate module so that ``python -m`` runs
it fresh (the package imports this one).

The wire, in order on the child's stdin and stdout (little-endian):

- a commit: ``u8 op`` (:data:`COMMIT`, or :data:`ROLL_COMMIT` to start a new
  segment first), ``u32 count``, ``u64 length``, then the ``count`` records,
  framed as in a segment (:func:`~.appender.frames`): the bytes to write;
- its answer: ``u32 length`` + the pickled Committed tuple (:mod:`.appender`).
"""

import fcntl
import os
import pickle
import struct
import sys

from twisted.internet import error as ierror
from twisted.internet.defer import Deferred, fail
from twisted.internet.protocol import ProcessProtocol

from .errors import SpoolWriteError

COMMIT, ROLL_COMMIT = 1, 2
REQUEST = struct.Struct("<BIQ")
LENGTH = struct.Struct("<I")
LOCK_FD, SEGMENT_FD = 3, 4          # the child's descriptors of the lock file and the open segment
PIPE_SIZE = 1 << 20                 # the child's stdin: a commit in few writes (Linux's default limit)


class WriterProcess(ProcessProtocol):
    """The reactor's handle on the writer process: :meth:`commit` in order, each a Deferred of its
    Committed tuple. A child that dies fails the commits in flight; the next commit starts
    another, which goes on in a new segment after ``head()``'s."""

    def __init__(self, reactor, directory, *, segment, fd, lock_fd, segment_size, fsync, head):
        self._reactor, self._directory = reactor, directory
        self._segment, self._fd, self._lock_fd = segment, fd, lock_fd
        self._segment_size, self._fsync, self._head = segment_size, bool(fsync), head
        self._waiting = []          # Deferreds of the commits sent, oldest first
        self._buffer = b""
        self._state = "stopped"     # stopped | running | closing | closed
        self._ended = []            # Deferreds of close()
        self._stdin = None          # the running child's stdin pipe (a Twisted ProcessWriter)
        self.pid = None

    def start(self):
        """Start the child (after twistd's fork: a process made before it would not be ours)."""
        if self._state != "stopped":
            return
        fds = {0: "w", 1: "r", 2: 2, LOCK_FD: self._lock_fd}
        if self._fd is not None:
            fds[SEGMENT_FD] = self._fd
        argv = [sys.executable, "-m", "stilgar.spool.writerchild", self._directory, str(self._segment),
                "1" if self._fd is not None else "0", str(self._segment_size), "1" if self._fsync else "0"]
        self._buffer = b""
        self._state = "running"
        transport = self._reactor.spawnProcess(self, sys.executable, argv, env=_child_env(), childFDs=fds)
        self.pid = transport.pid
        # the child's stdin: written at once by commit(), with a larger buffer (_widen)
        self._stdin = getattr(transport, "pipes", {}).get(0)
        _widen(self._stdin)
        if self._fd is not None:
            os.close(self._fd)      # the child's now; a new child starts in a new segment
            self._fd = None

    def commit(self, body, count, roll=False):
        if self._state == "stopped":
            self._segment = self._head().segment
            try:
                self.start()
            except Exception as e:  # noqa: B902 - no child (fork failed, out of memory): a 503
                self._state = "stopped"
                return fail(SpoolWriteError("cannot start the spool writer process: %s" % (e,)))
        if self._state != "running":
            return fail(SpoolWriteError("spool writer process is closed"))
        d = Deferred()
        self._waiting.append(d)
        self.transport.writeSequence([REQUEST.pack(ROLL_COMMIT if roll else COMMIT, count, len(body)), body])
        # Now, not on the reactor's next poll: that may be after a long turn (encoding an INSERT),
        # and the disk would wait for it. What does not fit stays for the next polls; an error
        # (the child gone) is left for the reactor's next poll to find, as it would have been.
        if self._stdin is not None:
            self._stdin.doWrite()
        return d

    def close(self):
        """Let the child finish the commits sent and exit; fires once it has."""
        d = Deferred()
        if self._state in ("stopped", "closed"):
            self._state = "closed"
            d.callback(None)
            return d
        self._ended.append(d)
        if self._state == "running":
            self._state = "closing"
            self.transport.closeStdin()
        return d

    # -- the process protocol --------------------------------------------------------

    def outReceived(self, data):
        buf = self._buffer + data
        at = 0
        while len(buf) - at >= LENGTH.size:
            n, = LENGTH.unpack_from(buf, at)
            if len(buf) - at - LENGTH.size < n:
                break
            result = pickle.loads(buf[at + LENGTH.size:at + LENGTH.size + n])
            at += LENGTH.size + n
            self._waiting.pop(0).callback(result)
        self._buffer = buf[at:]

    def processEnded(self, reason):
        waiting, self._waiting = self._waiting, []
        why = "exited" if reason.check(ierror.ProcessDone) else "ended: %s" % (reason.value,)
        for d in waiting:
            d.errback(SpoolWriteError("spool writer process %s" % why))
        self.pid = None
        if self._state == "closing":
            self._state = "closed"
        elif self._state == "running":
            self._state = "stopped"     # the next commit starts another
        ended, self._ended = self._ended, []
        for d in ended:
            d.callback(None)


def _widen(pipe):
    """A larger pipe to the child, when the kernel allows (F_SETPIPE_SZ: Linux, Python 3.10+)."""
    if pipe is not None and hasattr(fcntl, "F_SETPIPE_SZ"):
        try:
            fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass                    # a lower pipe-max-size: the default pipe works, in more writes


def _child_env():
    """The parent's environment, with this ``stilgar`` first on the child's path."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env
