"""The on-disk format of segments and records (doc/durability.md, "On-disk format"): pure, no threads.

A segment starts with ``b"STILGSPL"``, u32 format version, u64 segment number and
a u32 CRC32 of those 20 bytes. A record is ``[u32 length][u32 crc][payload]``
(little-endian), the CRC32 covering the 4 length bytes and then the payload.
A :class:`Position` is ``(segment number, byte offset in the file)``.

Reading works on an open file descriptor with ``os.pread`` (no shared file
offset, so a reader never disturbs the writer).
"""

import os
import re
import struct
import typing

import attr

from ..zlibcodec import crc32
from .errors import SpoolFormatError

MAGIC = b"STILGSPL"
VERSION = 1
SEG_HEADER = struct.Struct("<8sIQ")       # magic, version, segment number; then u32 crc
HEADER_SIZE = SEG_HEADER.size + 4         # 24
REC = struct.Struct("<II")                # length, crc32(length bytes + payload)
LEN = struct.Struct("<I")
REC_OVERHEAD = REC.size                   # 8
MAX_PAYLOAD = (1 << 32) - 1
SEG_SUFFIX = ".seg"
SCAN_BLOCK = 1 << 20


class Position(typing.NamedTuple):
    """A place in the spool: ``segment`` number and byte ``offset`` in that file.

    Ordered. ``Position(0, 0)`` means "the beginning" (the first existing
    record); a record's ``next_pos`` (its end) is where the next one starts, or
    the end of its segment, which readers treat as the start of the next one.
    A tuple: compared and hashed in C (the forwarder keys and compares one per
    record; attrs' generated methods built a tuple in Python for each).
    """
    segment: int
    offset: int

    def __repr__(self):
        return "Position(%d, %d)" % (self.segment, self.offset)


BEGINNING = Position(0, 0)


def segment_name(number):
    """The file name of segment ``number`` (20 digits)."""
    return "%020d%s" % (number, SEG_SUFFIX)


def segment_number(name):
    """The number of a segment file ``name``, or None when it is not one."""
    stem = name[:-len(SEG_SUFFIX)]
    if name.endswith(SEG_SUFFIX) and len(stem) == 20 and stem.isdigit():
        return int(stem)
    return None


def segment_header(number):
    """The 24 header bytes of segment ``number``."""
    head = SEG_HEADER.pack(MAGIC, VERSION, number)
    return head + LEN.pack(crc32(head))


def header_problem(header, number, where=None):
    """Why ``header`` is not a good header of segment ``number`` (None when it is).

    Raises :class:`SpoolFormatError` (naming ``where``, the file) for a good
    header of another format version: that segment must not be set aside as damaged.
    """
    if len(header) < HEADER_SIZE:
        return "torn segment header"
    magic, version, num = SEG_HEADER.unpack_from(header)
    crc, = LEN.unpack_from(header, SEG_HEADER.size)
    if magic != MAGIC or crc32(header[:SEG_HEADER.size]) != crc:
        return "bad segment header"
    if version != VERSION:
        raise SpoolFormatError("%s: format version %d, this Stilgar reads version %d"
                               % (where or "segment %d" % number, version, VERSION))
    if num != number:
        return "segment header names segment %d" % num
    return None


def frame_header(payload):
    """The 8 bytes before ``payload`` in its record: length, then CRC32 of the length bytes and payload."""
    length = len(payload)
    return REC.pack(length, crc32(payload, crc32(LEN.pack(length))))


def frame(payload):
    """The bytes of one record holding ``payload``."""
    return frame_header(payload) + payload


@attr.s(frozen=True, slots=True)
class Damage:
    """Bytes of a segment that hold no good record, from ``offset`` up to ``resume``:
    the next frame whose length and CRC check out, or None when nothing good
    follows (a torn or corrupt tail)."""
    reason = attr.ib()
    offset = attr.ib()
    resume = attr.ib()

    def size(self, end):
        return (end if self.resume is None else self.resume) - self.offset

    def __str__(self):
        after = ("nothing good after it" if self.resume is None
                 else f"the next good record at offset {self.resume}")
        return f"{self.reason} at offset {self.offset} ({after})"


def _damaged(fd, off, end, reason):
    return Damage(reason, off, find_frame(fd, off + 1, end))


def _fill(fd, off, end, budget, used, block, need):
    """Read ahead from ``off``: a block, or only the budget left (at least ``need`` bytes)."""
    ahead = max(block, need) if budget is None else max(budget - used, need)
    return os.pread(fd, min(end - off, ahead), off)


def iter_records(fd, off, end, budget=None, at_least_one=True, block=SCAN_BLOCK):
    """Read the records of an open segment from ``off`` up to ``end``.

    Yields ``(offset, payload, None)`` for each good record, and
    ``(offset, None, damage)`` for bad bytes (torn or corrupt, a
    :class:`Damage`): reading goes on at ``damage.resume``, the next good frame
    (resynchronised), or stops when there is none. With ``budget``, stops
    before a record that would take the total (framing included) past it, but
    yields at least one record if ``at_least_one``.
    """
    buf, base, used, first = b"", off, 0, at_least_one
    unpack = REC.unpack_from
    while off < end:
        rel = off - base
        if rel + REC_OVERHEAD > len(buf):
            buf, base, rel = _fill(fd, off, end, budget, used, block, REC_OVERHEAD), off, 0
            if len(buf) < REC_OVERHEAD:
                yield off, None, Damage("torn record header", off, None)
                return
        length, crc = unpack(buf, rel)
        size = REC_OVERHEAD + length
        if off + size > end:
            damage = _damaged(fd, off, end, "record length %d runs past the end of the segment" % length)
        else:
            if budget is not None and not first and used + size > budget:
                return
            if rel + size > len(buf):
                buf, base, rel = _fill(fd, off, end, budget, used, block, size), off, 0
                if len(buf) < size:
                    yield off, None, Damage("torn record", off, None)
                    return
            payload = buf[rel + REC_OVERHEAD:rel + size]
            if crc32(payload, crc32(buf[rel:rel + 4])) == crc:
                yield off, payload, None
                first = False
                used += size
                off += size
                continue
            damage = _damaged(fd, off, end, "checksum mismatch")
        yield off, None, damage
        if damage.resume is None:
            return
        off = base = damage.resume
        buf = b""


_ZERO_HEADER = bytes(REC_OVERHEAD)
_NONZERO = re.compile(b"[^\\x00]")


def find_frame(fd, start, end, block=SCAN_BLOCK):
    """The offset of the first frame in ``[start, end)`` that checks out, or None.

    A frame checks out when its length fits before ``end``, what follows it is
    the end or a header whose length fits too, and its CRC matches. Used to
    resynchronise after a damaged record. Cheap on spool data: a candidate
    needs the high byte of its length under the segment size's, which JSON
    text (bytes >= 0x20) never has, and runs of zeros are skipped at once.
    """
    if end - start < REC_OVERHEAD:
        return None
    high = min(0xFF, (end - start) >> 24)
    candidate = re.compile(b"[\\x00-\\x%02x]" % high)
    pos = start
    while pos + REC_OVERHEAD <= end:
        buf = os.pread(fd, min(block, end - pos), pos)
        last = len(buf) - REC_OVERHEAD      # candidates whose header lies in buf
        if last < 0:
            return None
        found = _find_in_block(fd, pos, end, buf, last, candidate)
        if found is not None:
            return found
        pos += last + 1
    return None


def _find_in_block(fd, pos, end, buf, last, candidate):
    """The first frame that checks out with its header at ``buf[0..last]`` (``buf`` read at ``pos``)."""
    i = 0
    while i <= last:
        m = candidate.search(buf, i + 3, last + 4)
        if m is None:
            return None
        i = m.start() - 3
        if buf[i:i + REC_OVERHEAD] == _ZERO_HEADER:
            # no header is eight zero bytes: the next one holds the next non-zero byte
            nz = _NONZERO.search(buf, i)
            if nz is None:
                return None
            i = max(i + 1, nz.start() - REC_OVERHEAD + 1)
            continue
        if _frame_checks_out(fd, pos + i, end, buf, i):
            return pos + i
        i += 1
    return None


def _frame_checks_out(fd, off, end, buf, rel):
    length, crc = REC.unpack_from(buf, rel)
    nxt = off + REC_OVERHEAD + length
    if nxt > end:
        return False
    if nxt + REC_OVERHEAD <= end:
        following = os.pread(fd, 4, nxt)
        if len(following) < 4 or LEN.unpack(following)[0] > end - nxt - REC_OVERHEAD:
            return False
    payload = os.pread(fd, length, off + REC_OVERHEAD)
    return len(payload) == length and crc32(payload, crc32(buf[rel:rel + 4])) == crc
