"""The writer process's own code: ``python -m stilgar.spool.writerchild`` (:mod:`.writerproc` starts it).

It runs an :class:`~.appender.Appender` on each commit of the wire (in
:mod:`.writerproc`), in order. It holds the spool directory's lock with the
parent (the same open lock file, inherited), ignores SIGINT and SIGTERM (the
parent decides when writing ends) and exits at the end of its stdin: when the
parent closes it, or dies.
"""

import os
import pickle
import signal
import struct
import sys

from .appender import Appender
from .writerproc import LENGTH, LOCK_FD, REQUEST, ROLL_COMMIT, SEGMENT_FD


def _read_exactly(stream, n):
    data = stream.read(n)
    if len(data) != n:
        raise EOFError
    return data


def serve(appender, inp, out):
    """Commit what ``inp`` asks, answering on ``out``, until ``inp`` ends."""
    while True:
        head = inp.read(REQUEST.size)
        if not head:
            return
        try:
            op, count, length = REQUEST.unpack(head)
            body = _read_exactly(inp, length)
        except (EOFError, struct.error):
            return                  # the parent died in the middle of a request: nothing was acknowledged
        try:
            result = appender.commit(body, count, roll=op == ROLL_COMMIT)
        except Exception as e:      # noqa: B902 - a bug must not stop the commits
            result = ([], (None, "spool writer failed: %r" % (e,), repr(e)), [],
                      [("critical", "spool writer failed: %r" % (e,))])
        data = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        out.write(LENGTH.pack(len(data)) + data)
        out.flush()


def main(argv):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a file size limit: EFBIG, a 503, not a dead writer
    directory, segment, has_fd, segment_size, fsync = argv
    appender = Appender(directory, int(segment), SEGMENT_FD if has_fd == "1" else None,
                        segment_size=int(segment_size), fsync=os.fsync if fsync == "1" else None)
    try:
        serve(appender, sys.stdin.buffer, sys.stdout.buffer)
    finally:
        appender.close()
        os.close(LOCK_FD)


if __name__ == "__main__":
    main(sys.argv[1:])
