"""Durable per-destination cursors: one small JSON file each, replaced atomically.

``<quoted name>.cursor`` holds ``{"name": .., "segment": .., "offset": ..}``.
A save writes ``.cursor.tmp``, fsyncs it, renames it over the cursor and
fsyncs the directory, so a crash leaves the old cursor or the new one, never
a mix (doc/durability.md).
"""

import hashlib
import json
import os
import urllib.parse

from .fileformat import BEGINNING, Position
from .fileio import fsync_dir, write_buf

CURSOR_SUFFIX = ".cursor"
TMP_SUFFIX = ".tmp"


def cursor_filename(name):
    """The file name of destination ``name``'s cursor (quoted; hashed when long or hidden)."""
    stem = urllib.parse.quote(name, safe="")
    if len(stem) > 200 or stem.startswith("."):
        stem = "~" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
    return stem + CURSOR_SUFFIX


# what reading a missing, truncated or hand-edited cursor file raises
UNREADABLE = (OSError, ValueError, KeyError, TypeError)


def read_cursor_file(path):
    """``(name, Position)`` from a cursor file; raises one of UNREADABLE when it is unreadable."""
    with open(path, "rb") as f:
        data = json.loads(f.read())
    name = data["name"]
    pos = Position(int(data["segment"]), int(data["offset"]))
    if not isinstance(name, str):
        raise ValueError("name is not a string")
    return name, pos


def encode_cursor(name, pos):
    return json.dumps({"name": name, "segment": pos.segment, "offset": pos.offset}).encode()


class CursorStore:
    """The cursor files of one spool directory and the positions they hold.

    ``fsync`` is a callable (:func:`os.fsync` or a test's), or None when the
    spool runs with ``spool.fsync: false``.
    """

    def __init__(self, directory, fsync):
        self.directory = directory
        self._fsync = fsync
        self.positions = {}         # name -> Position (durable)

    def load(self, filenames):
        """Read every cursor file among ``filenames``; returns ``[(filename, error)]`` for
        the unreadable ones (their destinations replay from the beginning)."""
        errors = []
        for filename in filenames:
            if not filename.endswith(CURSOR_SUFFIX):
                continue
            try:
                name, pos = read_cursor_file(os.path.join(self.directory, filename))
            except UNREADABLE as e:
                errors.append((filename, e))
                continue
            self.positions[name] = pos
        return errors

    def get(self, name):
        """The saved cursor of ``name`` (the beginning if none)."""
        return self.positions.get(name, BEGINNING)

    def save(self, name, pos):
        """Write the cursor durably (temp file, fsync, rename, fsync the directory)."""
        path = os.path.join(self.directory, cursor_filename(name))
        tmp = path + TMP_SUFFIX
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            write_buf(os.write, fd, encode_cursor(name, pos))
            if self._fsync is not None:
                self._fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        if self._fsync is not None:
            fsync_dir(self.directory, self._fsync)
        self.positions[name] = pos
