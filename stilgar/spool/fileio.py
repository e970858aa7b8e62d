"""Small file operations the spool's parts share: whole writes, directory fsync, new segments."""

import errno
import os

from .fileformat import segment_header, segment_name

WRITE_CHUNK = 8 << 20                     # bytes per os.write within one commit


def write_buf(write, fd, data):
    """Write all of ``data`` with ``write`` (an :func:`os.write`), resuming short writes."""
    view = memoryview(data)
    while view:
        written = write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "short write")
        view = view[written:]


def write_parts(write, fd, parts):
    """Write the byte strings of ``parts`` in order, joined into chunks of about WRITE_CHUNK."""
    chunk, n = [], 0
    for p in parts:
        chunk.append(p)
        n += len(p)
        if n >= WRITE_CHUNK:
            write_buf(write, fd, b"".join(chunk))
            chunk, n = [], 0
    if chunk:
        write_buf(write, fd, b"".join(chunk))


def fsync_dir(path, fsync):
    """fsync the directory ``path`` (a created, renamed or deleted name is durable then)."""
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fsync(dfd)
    finally:
        os.close(dfd)


def create_segment(directory, number, fsync, write):
    """Create segment ``number`` (``O_EXCL``), write its header; returns its fd (append mode).

    With ``fsync`` (a callable, or None for ``spool.fsync: false``) the header
    and then the directory are fsynced. A failure leaves no file behind.
    """
    path = os.path.join(directory, segment_name(number))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        write_buf(write, fd, segment_header(number))
        if fsync is not None:
            fsync(fd)
            fsync_dir(directory, fsync)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
        raise
    return fd
