"""Tests for stilgar.spool: real threads, the real reactor (trial's global one)."""

import errno
import os
import stat
import struct
import threading

from hypothesis import given, settings, strategies as st
from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from stilgar import spool as sp
from stilgar.spool import (BEGINNING, HEADER_SIZE, ISpool, Position, Spool, SpoolFormatError, SpoolFull,
                           SpoolLocked, SpoolWriteError)

REC = sp.REC_OVERHEAD


def payloads(n, size=0, prefix=b"rec"):
    return [(prefix + b"-%04d-" % i).ljust(size, b"x") for i in range(n)]


class Counter:
    """An injectable fsync counting its calls (and optionally failing or blocking)."""

    def __init__(self):
        self.calls = 0
        self.fail = None
        self.block = None       # (entered Deferred, threading.Event)

    def __call__(self, fd):
        self.calls += 1
        if self.block is not None:
            entered, release = self.block
            self.block = None
            reactor.callFromThread(entered.callback, None)
            release.wait(5)
        if self.fail is not None:
            raise OSError(self.fail, os.strerror(self.fail))
        os.fsync(fd)


class FailingWrite:
    """An injectable os.write: ``mode`` None (works), "fail" (raises) or "partial" (half, then raises)."""

    def __init__(self, err=errno.ENOSPC):
        self.mode = None
        self.err = err

    def __call__(self, fd, data):
        if self.mode == "partial" and len(data) > 1:
            self.mode = "fail"
            return os.write(fd, bytes(data[:len(data) // 2]))
        if self.mode is not None:
            raise OSError(self.err, os.strerror(self.err))
        return os.write(fd, data)


class SpoolTestBase(unittest.TestCase):
    timeout = 10

    def setUp(self):
        self.path = os.path.abspath(self.mktemp())

    def make(self, start=True, **kw):
        if "_write" in kw or "_fsync" in kw:
            kw.setdefault("writer", "thread")   # injected calls cannot cross into the writer process
        s = Spool(self.path, **kw)
        s.open()
        self.addCleanup(s.close)
        if start:
            s.start()
        return s

    def seg_path(self, n):
        return os.path.join(self.path, sp.segment_name(n))

    def seg_files(self):
        return sorted(int(f[:20]) for f in os.listdir(self.path) if f.endswith(".seg"))

    @defer.inlineCallbacks
    def fill(self, s, data):
        positions = yield defer.gatherResults([s.append(p) for p in data])
        return positions

    @defer.inlineCallbacks
    def read_all(self, s, start=BEGINNING, **kw):
        out, pos = [], start
        while True:
            recs = yield s.read(pos, **kw)
            if not recs:
                return out
            out.extend(recs)
            pos = recs[-1][1]


class FramingTests(unittest.TestCase):

    @settings(max_examples=50, deadline=None)
    @given(st.lists(st.binary(max_size=3000), max_size=30))
    def test_round_trip(self, data):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(sp.segment_header(7))
            for p in data:
                f.write(sp.frame(p))
        fd = os.open(path, os.O_RDONLY)
        try:
            end = os.fstat(fd).st_size
            got = list(sp.iter_records(fd, HEADER_SIZE, end, block=1000))
        finally:
            os.close(fd)
        self.assertEqual([p for _, p, _ in got], data)
        self.assertTrue(all(reason is None for _, _, reason in got))
        offsets = [off for off, _, _ in got]
        expected, off = [], HEADER_SIZE
        for p in data:
            expected.append(off)
            off += REC + len(p)
        self.assertEqual(offsets, expected)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.one_of(st.text(max_size=400).map(lambda t: t.encode()), st.binary(max_size=300)),
                    min_size=1, max_size=20),
           st.data())
    def test_one_flipped_byte_loses_one_record(self, data, draw):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(sp.segment_header(7))
            for p in data:
                f.write(sp.frame(p))
        starts, off = [], HEADER_SIZE
        for p in data:
            starts.append(off)
            off += REC + len(p)
        at = draw.draw(st.integers(HEADER_SIZE, off - 1))
        victim = max(i for i, start in enumerate(starts) if start <= at)
        with open(path, "r+b") as f:
            f.seek(at)
            b = f.read(1)
            f.seek(at)
            f.write(bytes([b[0] ^ draw.draw(st.integers(1, 255))]))
        fd = os.open(path, os.O_RDONLY)
        try:
            got = list(sp.iter_records(fd, HEADER_SIZE, off, block=draw.draw(st.sampled_from([64, 1000]))))
        finally:
            os.close(fd)
        self.assertEqual([p for _, p, bad in got if bad is None], data[:victim] + data[victim + 1:])
        damages = [bad for _, _, bad in got if bad is not None]
        self.assertEqual(len(damages), 1)
        self.assertEqual(damages[0].offset, starts[victim])
        self.assertEqual(damages[0].resume, starts[victim + 1] if victim + 1 < len(data) else None)

    def test_frame_layout(self):
        rec = sp.frame(b"hello")
        length, crc = struct.unpack("<II", rec[:8])
        self.assertEqual(length, 5)
        self.assertEqual(rec[8:], b"hello")
        import zlib
        self.assertEqual(crc, zlib.crc32(b"hello", zlib.crc32(struct.pack("<I", 5))))
        self.assertEqual(len(sp.segment_header(1)), HEADER_SIZE)
        self.assertTrue(sp.segment_header(1).startswith(b"STILGSPL"))

    def test_position_order(self):
        self.assertLess(Position(1, 500), Position(2, 24))
        self.assertLess(Position(2, 24), Position(2, 25))
        self.assertEqual(Position(3, 4), Position(3, 4))
        self.assertLess(BEGINNING, Position(1, HEADER_SIZE))


class AppendReadTests(SpoolTestBase):

    @defer.inlineCallbacks
    def test_append_read(self):
        s = self.make()
        data = payloads(20, 50)
        positions = yield self.fill(s, data)
        self.assertEqual(positions, sorted(positions))
        self.assertEqual(positions[0], Position(1, HEADER_SIZE))
        self.assertEqual(s.head, Position(1, HEADER_SIZE + sum(REC + len(p) for p in data)))
        recs = yield s.read(BEGINNING)
        self.assertEqual([r[2] for r in recs], data)
        self.assertEqual([r[0] for r in recs], positions)
        for (pos, nxt, p), following in zip(recs, recs[1:]):
            self.assertEqual(nxt, following[0])
        self.assertEqual(recs[-1][1], s.head)
        at_head = yield s.read(s.head)
        self.assertEqual(at_head, [])
        self.assertEqual(s.size, os.path.getsize(self.seg_path(1)))

    @defer.inlineCallbacks
    def test_read_limits(self):
        s = self.make()
        data = payloads(10, 100)
        yield self.fill(s, data)
        recs = yield s.read(BEGINNING, max_records=3)
        self.assertEqual([r[2] for r in recs], data[:3])
        recs = yield s.read(recs[-1][1], max_bytes=2 * (REC + 100))
        self.assertEqual([r[2] for r in recs], data[3:5])
        recs = yield s.read(recs[-1][1], max_bytes=1)        # at least one record
        self.assertEqual([r[2] for r in recs], data[5:6])
        recs = yield s.read(recs[-1][1], max_bytes=1 << 20)
        self.assertEqual([r[2] for r in recs], data[6:])

    @defer.inlineCallbacks
    def test_segments_roll_and_read_across(self):
        s = self.make(segment_size=1024)
        data = payloads(30, 200)
        positions = yield self.fill(s, data)
        segs = self.seg_files()
        self.assertGreater(len(segs), 5)
        for n in segs[:-1]:
            self.assertLessEqual(os.path.getsize(self.seg_path(n)), 1024)
        for pos in positions:             # records never split
            self.assertLessEqual(pos.offset + REC + 200, 1024)
        recs = yield self.read_all(s, max_bytes=700)
        self.assertEqual([r[2] for r in recs], data)
        self.assertEqual(s.size, sum(os.path.getsize(self.seg_path(n)) for n in segs))
        # a segment end is a valid start: continue in the next one
        last_of_first = [r for r in recs if r[0].segment == segs[0]][-1]
        recs = yield s.read(last_of_first[1], max_records=1)
        self.assertEqual(recs[0][0], Position(segs[1], HEADER_SIZE))

    @defer.inlineCallbacks
    def test_oversized_record_gets_its_own_segment(self):
        s = self.make(segment_size=512)
        big = b"B" * 2000
        positions = yield self.fill(s, [b"a", big, b"c"])
        self.assertEqual(positions[1], Position(2, HEADER_SIZE))
        self.assertEqual(positions[2], Position(3, HEADER_SIZE))
        recs = yield self.read_all(s)
        self.assertEqual([r[2] for r in recs], [b"a", big, b"c"])

    @defer.inlineCallbacks
    def test_no_fsync(self):
        c = Counter()
        s = self.make(fsync=False, _fsync=c)
        yield self.fill(s, payloads(10))
        yield s.save_cursor("d", Position(1, HEADER_SIZE))
        self.assertEqual(c.calls, 0)
        recs = yield s.read(BEGINNING)
        self.assertEqual(len(recs), 10)

    @defer.inlineCallbacks
    def test_close_finishes_pending_then_refuses(self):
        s = self.make(start=False)
        ds = [s.append(p) for p in payloads(5)]
        yield s.close()               # never started: close() writes them anyway
        positions = yield defer.gatherResults(ds)
        self.assertEqual(len(positions), 5)
        yield self.assertFailure(s.append(b"late"), SpoolWriteError)
        yield s.close()               # idempotent
        s2 = self.make()
        recs = yield s2.read(BEGINNING)
        self.assertEqual([r[2] for r in recs], payloads(5))


class GroupCommitTests(SpoolTestBase):

    @defer.inlineCallbacks
    def test_queued_before_start_one_fsync(self):
        c = Counter()
        s = self.make(start=False, _fsync=c)
        before = c.calls
        ds = [s.append(p) for p in payloads(200, 300)]
        s.start()
        yield defer.gatherResults(ds)
        self.assertEqual(c.calls - before, 1)

    @defer.inlineCallbacks
    def test_queued_during_fsync_go_in_next_commit(self):
        c = Counter()
        s = self.make(_fsync=c, commit_window=0)
        before = c.calls
        entered, release = defer.Deferred(), threading.Event()
        c.block = (entered, release)
        first = s.append(b"first")
        yield entered                 # the writer is inside fsync
        ds = [s.append(p) for p in payloads(100)]
        release.set()
        yield first
        yield defer.gatherResults(ds)
        self.assertEqual(c.calls - before, 2)

    @defer.inlineCallbacks
    def test_commit_window_collects(self):
        c = Counter()
        s = self.make(_fsync=c, commit_window=0.5)
        before = c.calls
        d1 = s.append(b"one")
        yield task.deferLater(reactor, 0.02, lambda: None)
        d2 = s.append(b"two")
        yield defer.gatherResults([d1, d2])
        self.assertEqual(c.calls - before, 1)


class CursorTests(SpoolTestBase):

    @defer.inlineCallbacks
    def test_cursor_save_load_and_deletion(self):
        s = self.make(segment_size=1024)
        self.assertEqual(s.cursor("a"), BEGINNING)
        data = payloads(40, 200)
        positions = yield self.fill(s, data)
        segs = self.seg_files()
        yield s.save_cursor("old", BEGINNING)
        s.set_consumers(["a", "b"])
        yield s.save_cursor("a", positions[30])
        self.assertEqual(self.seg_files(), segs)          # b has no cursor: nothing deleted
        yield s.save_cursor("b", positions[10])
        self.assertEqual(self.seg_files(), [n for n in segs if n >= positions[10].segment])
        self.assertEqual(s.cursor("b"), positions[10])
        yield s.save_cursor("b", positions[35])
        self.assertEqual(self.seg_files(), [n for n in segs if n >= positions[30].segment])
        self.assertEqual(s.size, sum(os.path.getsize(self.seg_path(n)) for n in self.seg_files()))
        recs = yield self.read_all(s, s.cursor("a"))
        self.assertEqual([r[2] for r in recs], data[30:])
        recs = yield s.read(BEGINNING, max_records=1)      # the beginning: first existing
        self.assertEqual(recs[0][0], Position(positions[30].segment, HEADER_SIZE))
        self.assertFalse(any(f.endswith(".tmp") for f in os.listdir(self.path)))

    @defer.inlineCallbacks
    def test_segment_end_cursor_deletes_it(self):
        s = self.make(segment_size=1024)
        positions = yield self.fill(s, payloads(12, 200))
        recs = yield self.read_all(s)
        first_seg = positions[0].segment
        end_of_first = [r for r in recs if r[0].segment == first_seg][-1][1]
        s.set_consumers(["a"])
        yield s.save_cursor("a", end_of_first)
        self.assertNotIn(first_seg, self.seg_files())

    @defer.inlineCallbacks
    def test_reopen_replays_from_cursor(self):
        s = self.make()
        data = payloads(10, 40)
        positions = yield self.fill(s, data)
        s.set_consumers(["ch"])
        yield s.save_cursor("ch", positions[6])
        yield s.close()
        s2 = self.make()
        self.assertEqual(s2.problems, [])
        self.assertEqual(s2.cursor("ch"), positions[6])
        self.assertGreater(s2.head, positions[-1])            # a new segment per start
        recs = yield self.read_all(s2, s2.cursor("ch"))
        self.assertEqual([r[2] for r in recs], data[6:])
        more = yield self.fill(s2, [b"new"])
        recs = yield self.read_all(s2, s2.cursor("ch"))
        self.assertEqual([r[2] for r in recs], data[6:] + [b"new"])
        self.assertEqual(recs[-1][0], more[0])

    @defer.inlineCallbacks
    def test_unreadable_cursor_is_a_problem(self):
        s = self.make()
        yield s.save_cursor("x/y z", Position(1, 100))
        yield s.close()
        files = [f for f in os.listdir(self.path) if f.endswith(".cursor")]
        self.assertEqual(len(files), 1)
        with open(os.path.join(self.path, files[0]), "w") as f:
            f.write("{garbage")
        s2 = self.make()
        self.assertEqual(s2.cursor("x/y z"), BEGINNING)
        self.assertEqual(len(s2.problems), 1)
        self.flushLoggedErrors()


class FullTests(SpoolTestBase):

    @defer.inlineCallbacks
    def test_spool_full_then_recovers(self):
        s = self.make(max_size=8192, segment_size=1024)
        positions = []
        for i in range(100):
            try:
                pos = yield s.append(b"p" * 200)
            except SpoolFull:
                break
            positions.append(pos)
        else:
            self.fail("never full")
        self.assertTrue(s.full() or s.size + REC + 200 > s.max_size)
        self.assertLessEqual(s.size, 8192)
        yield self.assertFailure(s.append(b"p" * 200), SpoolFull)
        s.set_consumers(["a"])
        recs = yield self.read_all(s)
        self.assertEqual(len(recs), len(positions))
        yield s.save_cursor("a", recs[-1][1])
        self.assertFalse(s.full())
        self.assertLess(s.size, 2048)
        pos = yield s.append(b"p" * 200)
        self.assertGreater(pos, positions[-1])

    @defer.inlineCallbacks
    def test_write_error_then_recovery(self):
        w = FailingWrite()
        s = self.make(_write=w)
        good = yield self.fill(s, [b"a", b"b"])
        w.mode = "partial"
        yield self.assertFailure(s.append(b"c" * 1000), SpoolWriteError)
        self.assertEqual(os.path.getsize(self.seg_path(1)), good[1].offset + REC + 1)
        self.assertEqual(s.health()["write_errors"], 1)
        yield self.assertFailure(s.append(b"still failing"), SpoolWriteError)   # roll fails too
        w.mode = None
        d = yield s.append(b"d")
        self.assertEqual(d, Position(2, HEADER_SIZE))            # a fresh segment
        recs = yield self.read_all(s)
        self.assertEqual([r[2] for r in recs], [b"a", b"b", b"d"])
        yield s.close()
        s2 = self.make()
        self.assertEqual(s2.problems, [])
        recs = yield self.read_all(s2)
        self.assertEqual([r[2] for r in recs], [b"a", b"b", b"d"])
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_disk_full_at_start(self):
        w = FailingWrite()
        w.mode = "fail"
        s = self.make(_write=w)                  # cannot create its segment: serves anyway
        self.assertEqual(self.seg_files(), [])
        yield self.assertFailure(s.append(b"a"), SpoolWriteError)
        recs = yield s.read(BEGINNING)
        self.assertEqual(recs, [])
        w.mode = None
        pos = yield s.append(b"b")
        self.assertEqual(pos, Position(1, HEADER_SIZE))
        recs = yield self.read_all(s)
        self.assertEqual([r[2] for r in recs], [b"b"])
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_fsync_error_then_recovery(self):
        c = Counter()
        s = self.make(_fsync=c)
        yield self.fill(s, [b"a"])
        c.fail = errno.EIO
        f = yield self.assertFailure(s.append(b"b"), SpoolWriteError)
        self.assertEqual(f.errno, errno.EIO)
        c.fail = None
        yield self.fill(s, [b"c"])
        recs = yield self.read_all(s)
        self.assertEqual([r[2] for r in recs], [b"a", b"c"])
        self.flushLoggedErrors()


class CrashTests(SpoolTestBase):
    """Damage a closed spool's files, reopen: detected, reported, the good part kept."""

    N = 10
    SIZE = 60

    @defer.inlineCallbacks
    def write_and_close(self):
        s = self.make()
        positions = yield self.fill(s, payloads(self.N, self.SIZE))
        yield s.close()
        return positions

    @defer.inlineCallbacks
    def check_reopen(self, kept, dropped_at, dropped):
        s = self.make()
        self.assertEqual(len(s.problems), 1)
        p = s.problems[0]
        self.assertEqual((p["segment"], p["offset"], p["bytes_dropped"]), (1, dropped_at, dropped))
        self.assertEqual(s.health()["problems"], 1)
        self.assertEqual(os.path.getsize(self.seg_path(1)), dropped_at)
        recs = yield self.read_all(s)
        self.assertEqual([r[2] for r in recs], payloads(self.N, self.SIZE)[:kept])
        yield self.fill(s, [b"after"])
        recs = yield self.read_all(s)
        self.assertEqual(recs[-1][2], b"after")
        yield s.close()
        s2 = self.make()
        self.assertEqual(s2.problems, [])
        recs = yield self.read_all(s2)
        self.assertEqual([r[2] for r in recs], payloads(self.N, self.SIZE)[:kept] + [b"after"])
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_truncated_mid_record(self):
        positions = yield self.write_and_close()
        size = os.path.getsize(self.seg_path(1))
        os.truncate(self.seg_path(1), size - 7)
        yield self.check_reopen(self.N - 1, positions[-1].offset, REC + self.SIZE - 7)

    @defer.inlineCallbacks
    def test_truncated_mid_header(self):
        positions = yield self.write_and_close()
        os.truncate(self.seg_path(1), positions[-1].offset + 3)
        yield self.check_reopen(self.N - 1, positions[-1].offset, 3)

    @defer.inlineCallbacks
    def test_garbage_appended(self):
        yield self.write_and_close()
        size = os.path.getsize(self.seg_path(1))
        with open(self.seg_path(1), "ab") as f:
            f.write(b"\x13\x00\x00\x00garbage garbage garbage")
        yield self.check_reopen(self.N, size, 4 + len(b"garbage garbage garbage"))

    @defer.inlineCallbacks
    def test_zeros_appended(self):
        yield self.write_and_close()
        size = os.path.getsize(self.seg_path(1))
        with open(self.seg_path(1), "ab") as f:
            f.write(b"\x00" * 4096)
        yield self.check_reopen(self.N, size, 4096)

    def flip(self, segment, at):
        with open(self.seg_path(segment), "r+b") as f:
            f.seek(at)
            b = f.read(1)
            f.seek(at)
            f.write(bytes([b[0] ^ 0x40]))

    @defer.inlineCallbacks
    def test_crc_flipped_at_the_tail(self):
        positions = yield self.write_and_close()
        size = os.path.getsize(self.seg_path(1))
        self.flip(1, positions[-1].offset + 5)
        yield self.check_reopen(self.N - 1, positions[-1].offset, size - positions[-1].offset)

    @defer.inlineCallbacks
    def test_crc_flipped_inside_the_last_segment_keeps_the_records_after(self):
        positions = yield self.write_and_close()
        size = os.path.getsize(self.seg_path(1))
        at = positions[4].offset
        self.flip(1, at + 5)
        s = self.make()
        self.assertEqual(os.path.getsize(self.seg_path(1)), size)   # nothing cut off
        self.assertEqual([(p["segment"], p["offset"], p["bytes_dropped"]) for p in s.problems],
                         [(1, at, REC + self.SIZE)])
        self.assertEqual((s.health()["skipped_bytes"], s.health()["skipped_regions"]), (REC + self.SIZE, 1))
        recs = yield self.read_all(s)
        expected = payloads(self.N, self.SIZE)
        self.assertEqual([r[2] for r in recs], expected[:4] + expected[5:])
        self.assertEqual(len(s.problems), 1)     # known from open(): not reported again by reads
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def sealed(self, damage):
        """Write N records, seal their segment, damage it with ``damage(positions)``, reopen."""
        positions = yield self.write_and_close()
        s = self.make()                          # segment 1 sealed, writing to 2
        yield self.fill(s, [b"second"])
        yield s.close()
        damage(positions)
        s = self.make()
        self.assertEqual(s.problems, [])         # sealed segments: header check only
        return positions, s

    @defer.inlineCallbacks
    def test_sealed_segment_corruption_skips_one_record(self):
        positions, s = yield self.sealed(lambda positions: self.flip(1, positions[3].offset + REC + 2))
        recs = yield self.read_all(s)
        expected = payloads(self.N, self.SIZE)
        self.assertEqual([r[2] for r in recs], expected[:3] + expected[4:] + [b"second"])
        self.assertEqual([(p["segment"], p["offset"], p["bytes_dropped"]) for p in s.problems],
                         [(1, positions[3].offset, REC + self.SIZE)])
        self.assertEqual(s.health()["skipped_bytes"], REC + self.SIZE)
        self.assertEqual(s.health()["problems"], 1)
        yield self.read_all(s)
        yield self.read_all(s, positions[2])
        self.assertEqual(len(s.problems), 1)     # reported once
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_sealed_segment_damaged_length_resynchronises(self):
        # a flipped length byte: the frame's end is unknown, the scan finds the next one
        positions, s = yield self.sealed(lambda positions: self.flip(1, positions[5].offset + 1))
        recs = yield self.read_all(s)
        expected = payloads(self.N, self.SIZE)
        self.assertEqual([r[2] for r in recs], expected[:5] + expected[6:] + [b"second"])
        self.assertEqual(s.problems[0]["bytes_dropped"], REC + self.SIZE)

    @defer.inlineCallbacks
    def test_sealed_segment_zeroed_stretch_resynchronises(self):
        def zero(positions):
            with open(self.seg_path(1), "r+b") as f:
                f.seek(positions[2].offset + 3)
                f.write(bytes(positions[6].offset - positions[2].offset - 3))
        positions, s = yield self.sealed(zero)
        recs = yield self.read_all(s, max_bytes=100)   # small reads: the budget and the skip meet
        expected = payloads(self.N, self.SIZE)
        self.assertEqual([r[2] for r in recs], expected[:2] + expected[6:] + [b"second"])
        self.assertEqual(s.health()["skipped_bytes"], positions[6].offset - positions[2].offset)
        self.assertEqual(s.health()["skipped_regions"], 1)
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_corrupt_record_the_rest_still_delivered_by_the_forwarder(self):
        from stilgar.forwarder import Forwarder, Record
        from stilgar.stats import Stats
        from tests.test_forwarder import FakeDestination
        s = self.make()
        records = [Record("k", f"r{i}", [{"type": "track", "messageId": f"m{i}"}]).encode()
                   for i in range(10)]
        positions = yield self.fill(s, records)
        yield s.close()
        self.flip(1, positions[4].offset + REC + 3)    # in the middle of a sealed segment
        s = self.make()
        dest = FakeDestination("d", ["k"])
        forwarder = Forwarder([dest], spool=s, stats=Stats(up_since=0), reactor=task.Clock())
        forwarder.startService()                 # the lane replays the spool from the beginning
        lane = forwarder.lanes["d"]
        for _ in range(500):
            if lane.live:
                break
            yield task.deferLater(reactor, 0.005, lambda: None)
        self.assertEqual([e["messageId"] for e in dest.received],
                         [f"m{i}" for i in range(10) if i != 4])
        self.assertEqual(forwarder.status(False)["spool"]["skipped_bytes"], REC + len(records[4]))
        self.assertEqual(forwarder.health()["spool"]["skipped_regions"], 1)
        forwarder.update_gauges()
        from stilgar import metrics
        self.assertEqual(metrics.REGISTRY.get_sample_value("stilgar_spool_skipped_bytes"), REC + len(records[4]))
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_bad_header_set_aside(self):
        yield self.write_and_close()
        s = self.make()
        yield self.fill(s, [b"second"])
        yield s.close()
        with open(self.seg_path(1), "r+b") as f:
            f.write(b"XXXX")
        s = self.make()
        self.assertEqual(len(s.problems), 1)
        self.assertTrue(os.path.exists(self.seg_path(1) + ".corrupt"))
        recs = yield self.read_all(s)
        self.assertEqual([r[2] for r in recs], [b"second"])
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_other_version_refused(self):
        yield self.write_and_close()
        with open(self.seg_path(1), "r+b") as f:
            head = struct.pack("<8sIQ", sp.MAGIC, 99, 1)
            f.write(head + struct.pack("<I", __import__("zlib").crc32(head)))
        s = Spool(self.path)
        self.assertRaises(SpoolFormatError, s.open)
        s2 = Spool(self.path)                    # the lock was released
        self.assertRaises(SpoolFormatError, s2.open)

    @defer.inlineCallbacks
    def test_empty_new_segment_after_crash(self):
        yield self.write_and_close()
        open(self.seg_path(2), "wb").close()     # created, crash before its header
        s = self.make()
        self.assertEqual(len(s.problems), 1)
        self.assertEqual(s.head.segment, 3)
        recs = yield self.read_all(s)
        self.assertEqual(len(recs), self.N)
        self.flushLoggedErrors()


class LockAndModeTests(SpoolTestBase):

    def test_provides_ispool(self):
        self.assertTrue(verifyObject(ISpool, Spool(self.path)))      # before open() too
        self.assertTrue(verifyObject(ISpool, self.make()))

    @defer.inlineCallbacks
    def test_locked(self):
        s = self.make()
        other = Spool(self.path)
        self.assertRaises(SpoolLocked, other.open)
        yield s.close()
        other = self.make()                      # released: adopted
        self.assertEqual(other.problems, [])

    @defer.inlineCallbacks
    def test_modes(self):
        old = os.umask(0)
        try:
            s = self.make()
        finally:
            os.umask(old)
        yield self.fill(s, [b"x"])
        yield s.save_cursor("d", s.head)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o700)
        for name in os.listdir(self.path):
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.path, name)).st_mode), 0o600,
                             name)

    def test_health(self):
        s = self.make()
        h = s.health()
        self.assertEqual(h["bytes"], s.size)
        self.assertEqual(h["problems"], 0)
        self.assertFalse(s.full())

    @defer.inlineCallbacks
    def test_health_shows_no_error_text_status_does(self):
        from stilgar.forwarder import Forwarder
        from stilgar.intake import Unavailable
        from stilgar.stats import Stats
        w = FailingWrite()
        s = self.make(_write=w)
        forwarder = Forwarder([], spool=s, stats=Stats(up_since=0), reactor=task.Clock())
        w.mode = "fail"
        yield self.assertFailure(forwarder.accept("k", "r", [{"type": "track"}]), Unavailable)
        spool_health = forwarder.health()["spool"]
        self.assertEqual(spool_health["write_errors"], 1)
        for key, value in spool_health.items():   # /health: no authentication, counts and states only
            self.assertIsInstance(value, (int, bool), key)
        self.assertNotIn(os.strerror(errno.ENOSPC), repr(forwarder.health()))
        status = forwarder.status(False)["spool"]  # /status (authenticated): the details
        self.assertIn(os.strerror(errno.ENOSPC), status["last_write_error"])
        self.assertIn(os.strerror(errno.ENOSPC), status["last_error"])
        self.flushLoggedErrors()


class WriterProcessTests(SpoolTestBase):
    """``spool.writer: process``, the default: the disk work in a child process of its own."""

    def child(self, s):
        return s._writer._io

    @defer.inlineCallbacks
    def ended(self, io, pid):
        """Wait (real time: a real process) until the reactor has seen child ``pid`` end."""
        for _ in range(500):
            if io.pid != pid:
                return
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.fail("writer process %d did not end" % pid)

    @defer.inlineCallbacks
    def test_a_child_writes_and_ends_with_the_spool(self):
        s = self.make()
        yield self.fill(s, payloads(3))
        pid = self.child(s).pid
        self.assertNotIn(pid, (None, os.getpid()))
        self.assertEqual(os.readlink("/proc/%d/fd/3" % pid), os.path.join(self.path, "lock"))
        yield s.close()
        self.assertIsNone(self.child(s).pid)
        self.assertFalse(os.path.exists("/proc/%d/status" % pid) and
                         "zombie" not in open("/proc/%d/status" % pid).read())
        s2 = self.make()                                    # the lock is free again
        recs = yield self.read_all(s2)
        self.assertEqual([r[2] for r in recs], payloads(3))

    @defer.inlineCallbacks
    def test_signals_do_not_stop_the_child(self):
        import signal
        s = self.make()
        yield self.fill(s, [b"a"])
        pid = self.child(s).pid
        os.kill(pid, signal.SIGTERM)                        # twistd's and systemd's stop, Ctrl-C
        os.kill(pid, signal.SIGINT)
        pos = yield s.append(b"b")
        self.assertEqual((pos.segment, self.child(s).pid), (1, pid))

    @defer.inlineCallbacks
    def test_a_killed_child_fails_its_commit_and_the_next_goes_on_in_a_new_segment(self):
        import signal
        s = self.make()
        yield self.fill(s, [b"a", b"b"])
        io, pid = self.child(s), self.child(s).pid
        os.kill(pid, signal.SIGSTOP)                        # the next commit is sent, never answered
        lost = s.append(b"lost")
        yield task.deferLater(reactor, 0.05, lambda: None)
        os.kill(pid, signal.SIGKILL)
        f = yield self.assertFailure(lost, SpoolWriteError)
        self.assertIn("writer", str(f))
        yield self.ended(io, pid)
        pos = yield s.append(b"c")                          # a new child, a new segment
        self.assertEqual(pos, Position(2, HEADER_SIZE))
        self.assertNotIn(io.pid, (None, pid))
        self.assertEqual(s.health()["write_errors"], 1)
        recs = yield self.read_all(s)
        self.assertEqual([r[2] for r in recs], [b"a", b"b", b"c"])
        yield s.close()
        s2 = self.make()
        self.assertEqual(s2.problems, [])
        recs = yield self.read_all(s2)
        self.assertEqual([r[2] for r in recs], [b"a", b"b", b"c"])
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_a_write_error_in_the_child_is_a_503_then_a_new_segment(self):
        import resource
        s = self.make()
        yield self.fill(s, [b"a"])
        size = os.path.getsize(self.seg_path(1))
        limit = size + REC + 100
        resource.prlimit(self.child(s).pid, resource.RLIMIT_FSIZE, (limit, limit))
        f = yield self.assertFailure(s.append(b"x" * 200), SpoolWriteError)   # would grow the file past it
        self.assertEqual(f.errno, errno.EFBIG)
        self.assertEqual(os.path.getsize(self.seg_path(1)), size)             # cut back
        self.assertIn("EFBIG", s.status()["last_write_error"])
        pos = yield s.append(b"b")
        self.assertEqual(pos, Position(2, HEADER_SIZE))
        recs = yield self.read_all(s)
        self.assertEqual([r[2] for r in recs], [b"a", b"b"])
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_a_killed_collectors_child_finishes_and_frees_the_lock(self):
        """kill -9 of the collector: its writer process ends at the end of its stdin; a new
        collector waits for it, then finds every acknowledged record."""
        import signal
        import subprocess
        import sys
        script = ("import sys; from twisted.internet import reactor; from stilgar.spool import Spool\n"
                  "s = Spool(sys.argv[1]); s.open(); s.start()\n"
                  "def go():\n"
                  "    d = s.append(b'acked')\n"
                  "    d.addCallback(lambda p: (print(s._writer._io.pid, flush=True), s.append(b'maybe')))\n"
                  "reactor.callWhenRunning(go); reactor.run()\n")
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        proc = subprocess.Popen([sys.executable, "-c", script, self.path], stdout=subprocess.PIPE, cwd=root)
        child = int(proc.stdout.readline())
        proc.send_signal(signal.SIGKILL)
        proc.wait()                                         # reaped, as its supervisor would
        s = self.make()                                     # waits for the child if it still holds the lock
        try:
            fds = os.listdir("/proc/%d/fd" % child)
        except OSError:
            fds = []                                        # it has exited
        self.assertNotIn("3", fds)                          # the lock is not the child's any more
        recs = yield self.read_all(s)
        self.assertEqual([r[2] for r in recs][:1], [b"acked"])
