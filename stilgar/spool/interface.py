"""``ISpool``: what the forwarder and the service use of the spool, and nothing else."""

from zope.interface import Attribute, Interface


class ISpool(Interface):
    """A durable, append-only log of records with one saved cursor per destination
    (doc/durability.md). Positions are ordered; Deferreds fire on the reactor."""

    head = Attribute("The Position just after the last durable record (where the next append goes).")
    size = Attribute("Bytes of all segments on disk.")
    max_size = Attribute("The capacity in bytes (spool.max_size): appends fail with SpoolFull past it.")

    def open():
        """Lock the directory, check the segments, load the cursors; synchronous (start-up)."""

    def start():
        """Start writing (appends made before are written then) and deleting consumed segments."""

    def close():
        """Refuse new appends, write the queued ones, stop; a Deferred fired when all is done."""

    def append(payload):
        """Queue one record (bytes); a Deferred fired with its Position once durable."""

    def read(start, max_bytes=1 << 20, max_records=None):
        """A Deferred fired with the durable records from ``start``: ``[(pos, next_pos, payload)]``."""

    def scan_recent(max_bytes):
        """The payloads of about ``max_bytes`` of the newest records, oldest first (start-up only)."""

    def record_end(pos, payload_size):
        """The Position just after a record of ``payload_size`` bytes written at ``pos``."""

    def bytes_between(start, end):
        """Bytes of records from ``start`` up to ``end``."""

    def full():
        """True when appends fail with SpoolFull."""

    def cursor(name):
        """The saved cursor of destination ``name`` (the beginning if none)."""

    def save_cursor(name, pos):
        """Save the cursor durably, then delete consumed segments; a Deferred."""

    def set_consumers(names):
        """The destinations in use: only their cursors decide which segments are deleted."""

    def health():
        """Counts and states for ``/health`` (no error texts)."""

    def status():
        """:meth:`health` and the details for ``/status``."""
