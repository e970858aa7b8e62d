"""The local append-only spool: a 200 means the events are on disk (doc/durability.md).

One directory holds one spool::

    lock                          flock'ed by the live process (pid inside, informative)
    00000000000000000001.seg      segments: a 24-byte header, then records
    00000000000000000002.seg
    <quoted name>.cursor          one durable cursor per destination (JSON)

The parts: :mod:`.fileformat` (segments and records, pure), :mod:`.recovery`
(start-up checks), :mod:`.writer` (group commit), :mod:`.reader`,
:mod:`.cursors`, :mod:`.retention` (deleting consumed segments),
:mod:`.segments` (the table they share), :mod:`.survey` (a read-only look,
for ``stilgar spool``) and the :class:`Spool` facade
(:mod:`.facade`), which implements :class:`ISpool`.
"""

from .errors import SpoolFormatError, SpoolFull, SpoolLocked, SpoolWriteError
from .facade import Spool
from .fileformat import (BEGINNING, HEADER_SIZE, MAGIC, MAX_PAYLOAD, REC_OVERHEAD, VERSION, Damage, Position,
                         find_frame, frame, iter_records, segment_header, segment_name)
from .interface import ISpool

__all__ = ["BEGINNING", "HEADER_SIZE", "MAGIC", "MAX_PAYLOAD", "REC_OVERHEAD", "VERSION", "Damage", "ISpool",
           "Position", "Spool", "SpoolFormatError", "SpoolFull", "SpoolLocked", "SpoolWriteError",
           "find_frame", "frame", "iter_records", "segment_header", "segment_name"]
