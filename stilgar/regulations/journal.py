"""The durable local regulation log: append-only JSON lines, fsynced off the reactor thread.

One file, ``<spool.path>/regulations/journal.jsonl``, shared by the workers of
an instance (each record is one ``write`` on an ``O_APPEND`` descriptor),
created with the first regulation. Every
record is written as ``"\\n" + json + "\\n"``: a line torn by a ``kill -9``
is ended by the next record's leading newline, and skipped when read. The
file holds subject ids only as keyed hashes; the raw ids a running deletion
needs are kept in ``regulations/pending/<id>.json`` (written atomically,
removed when the regulation ends).
"""

import errno
import json
import os

from twisted.internet import defer, threads
from twisted.logger import Logger

__all__ = ["Journal"]

log = Logger(namespace="stilgar.regulations")

DIRECTORY = "regulations"   # under spool.path
JOURNAL_NAME = "journal.jsonl"
PENDING_DIR = "pending"


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """Appends and reads regulation records; blocking work runs in ``in_thread``."""

    def __init__(self, directory, reactor, fsync=True, in_thread=None):
        self.directory = directory
        self.path = os.path.join(directory, JOURNAL_NAME)
        self.pending = os.path.join(directory, PENDING_DIR)
        self.reactor = reactor
        self.fsync = fsync
        self._in_thread = in_thread or (lambda f, *a: threads.deferToThreadPool(
            reactor, reactor.getThreadPool(), f, *a))
        self._lock = defer.DeferredLock()
        self._offset = 0
        self._fd = None
        self.skipped = 0

    # -- start-up (blocking, before the reactor runs) ---------------------------

    def open(self):
        """Read every complete record (start-up only); nothing is created until a first write."""
        return self._read_new()

    def load_subjects(self, regulation_id):
        """The raw subject ids of a running deletion, or None once gone (blocking)."""
        try:
            with open(self._pending_file(regulation_id), "rb") as f:
                return json.loads(f.read().decode("utf-8"))["subjectIds"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def pending_ids(self):
        """Regulation ids with a pending subjects file (blocking, start-up)."""
        try:
            names = os.listdir(self.pending)
        except OSError:
            return []
        return [n[:-5] for n in names if n.endswith(".json")]

    # -- from the reactor ------------------------------------------------------

    def append(self, record):
        """Write one record durably; a Deferred fired once it is fsynced."""
        line = b"\n" + json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
        return self._lock.run(self._in_thread, self._write, line)

    def read_new(self):
        """Records appended since the last read (by any worker); a Deferred."""
        return self._lock.run(self._in_thread, self._read_new)

    def save_subjects(self, regulation_id, subject_ids):
        return self._in_thread(self._save_subjects, regulation_id, list(subject_ids))

    def drop_subjects(self, regulation_id):
        return self._in_thread(self._drop_subjects, regulation_id)

    def close(self):
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    # -- blocking bodies (in a thread) -------------------------------------------

    def _write(self, line):
        if self._fd is None:
            created = not os.path.exists(self.path)
            os.makedirs(self.directory, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            if created and self.fsync:
                _fsync_dir(self.directory)
        view = memoryview(line)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        if self.fsync:
            os.fsync(self._fd)

    def _read_new(self):
        records = []
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError as e:
            if e.errno == errno.ENOENT:
                return records
            raise
        end = data.rfind(b"\n")
        if end < 0:
            return records
        self._offset += end + 1
        for line in data[:end].split(b"\n"):
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"))
            except ValueError:
                self.skipped += 1   # a line torn by a crash
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def _pending_file(self, regulation_id):
        safe = "".join(c for c in regulation_id if c.isalnum() or c == "-")
        return os.path.join(self.pending, safe + ".json")

    def _save_subjects(self, regulation_id, subject_ids):
        os.makedirs(self.pending, exist_ok=True)
        final = self._pending_file(regulation_id)
        tmp = final + ".tmp"
        with open(tmp, "wb") as f:
            f.write(json.dumps({"id": regulation_id, "subjectIds": subject_ids}).encode("utf-8"))
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        os.replace(tmp, final)
        if self.fsync:
            _fsync_dir(self.pending)

    def _drop_subjects(self, regulation_id):
        try:
            os.unlink(self._pending_file(regulation_id))
        except FileNotFoundError:
            return
        if self.fsync:
            _fsync_dir(self.pending)
