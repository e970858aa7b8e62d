"""The spool's exceptions: what callers (the forwarder, the web's 503s) catch."""


class SpoolFull(Exception):
    """``spool.max_size`` is reached: the web answers 503 until destinations catch up."""


class SpoolWriteError(Exception):
    """A write or fsync failed (EIO, ENOSPC...), or the spool is closed: the web answers 503.

    ``errno`` is the OS error number when there is one. The spool recovers by
    itself: the next append is attempted again, in a fresh segment.
    """

    def __init__(self, message, errno=None):
        super().__init__(message)
        self.errno = errno


class SpoolLocked(Exception):
    """Another live process holds the spool directory's lock."""


class SpoolFormatError(Exception):
    """A segment was written by another format version: refuse to start rather than lose it."""
