"""The parts of stilgar/spool/ one by one: the file format (pure), the cursor store, the
segment table, retention, recovery, and the writer and reader driven synchronously (a
pool and a reactor that run what they are given at once: no threads)."""

import errno
import json
import os
import stat
import threading

from twisted.internet import defer, task
from twisted.trial import unittest

from stilgar.spool import fileformat as ff
from stilgar.spool.appender import Appender
from stilgar.spool.cursors import CursorStore, cursor_filename, read_cursor_file
from stilgar.spool.errors import SpoolFormatError, SpoolFull, SpoolWriteError
from stilgar.spool.fileformat import BEGINNING, HEADER_SIZE, REC_OVERHEAD as REC, Position
from stilgar.spool.problems import ProblemLog
from stilgar.spool.reader import Reader
from stilgar.spool.recovery import Recovery
from stilgar.spool.retention import delete_consumed, low_water
from stilgar.spool.segments import SegmentTable
from stilgar.spool.threads import ThreadIO, io_pool
from stilgar.spool.writer import Writer


class AtOnceReactor:
    """callFromThread runs the call at once (everything here runs on one thread)."""

    def callFromThread(self, f, *args, **kw):
        f(*args, **kw)


class StepPool:
    """A ThreadPool stand-in: jobs wait in ``jobs`` until ``run_all()``."""

    def __init__(self):
        self.jobs = []

    def callInThread(self, f, *args):
        self.jobs.append((None, f, args))

    def callInThreadWithCallback(self, on_result, f, *args):
        self.jobs.append((on_result, f, args))

    def run_all(self):
        while self.jobs:
            on_result, f, args = self.jobs.pop(0)
            try:
                result = f(*args)
            except Exception as e:      # noqa: B902 - handed to on_result like ThreadPool does
                if on_result is None:
                    raise
                on_result(False, e)
            else:
                if on_result is not None:
                    on_result(True, result)


class Fsyncs:
    """An fsync recording the path of each file (or directory) it syncs; can fail once."""

    def __init__(self):
        self.paths = []
        self.fail = None

    def __call__(self, fd):
        self.paths.append(os.readlink("/proc/self/fd/%d" % fd))
        if self.fail is not None:
            err, self.fail = self.fail, None
            raise OSError(err, os.strerror(err))
        os.fsync(fd)


def segment_bytes(number, payloads):
    return ff.segment_header(number) + b"".join(ff.frame(p) for p in payloads)


class FileCase(unittest.TestCase):

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def fd_of(self, data, name="f.seg"):
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        fd = os.open(path, os.O_RDONLY)
        self.addCleanup(os.close, fd)
        return fd, len(data)


class FormatTests(FileCase):
    """fileformat.py: framing, headers, reading and resynchronising, on plain files."""

    RECORDS = [b"alpha", b"", b"gamma" * 50, b"\x00\x01\x02", b"omega"]

    def offsets(self, records):
        out, off = [], HEADER_SIZE
        for p in records:
            out.append(off)
            off += REC + len(p)
        return out

    def test_frame_layout_and_header(self):
        data = ff.frame(b"abc")
        self.assertEqual(data[:4], (3).to_bytes(4, "little"))
        self.assertEqual(ff.frame_header(b"abc"), data[:REC])
        self.assertEqual(data[REC:], b"abc")

    def test_round_trip(self):
        fd, end = self.fd_of(segment_bytes(1, self.RECORDS))
        got = list(ff.iter_records(fd, HEADER_SIZE, end, block=16))
        self.assertEqual(got, [(o, p, None) for o, p in zip(self.offsets(self.RECORDS), self.RECORDS)])

    def test_torn_tail(self):
        data = segment_bytes(1, self.RECORDS)
        fd, end = self.fd_of(data[:-2])
        got = list(ff.iter_records(fd, HEADER_SIZE, end))
        self.assertEqual([p for _, p, _ in got[:-1]], self.RECORDS[:-1])
        off, payload, damage = got[-1]
        self.assertEqual((off, payload), (self.offsets(self.RECORDS)[-1], None))
        self.assertIsNone(damage.resume)
        self.assertIn("runs past the end", damage.reason)
        self.assertEqual(damage.size(end), end - off)

    def test_torn_record_header(self):
        data = segment_bytes(1, self.RECORDS[:1]) + b"\x05\x00\x00"
        fd, end = self.fd_of(data)
        got = list(ff.iter_records(fd, HEADER_SIZE, end))
        self.assertEqual(got[-1][2], ff.Damage("torn record header", len(data) - 3, None))

    def test_crc_mismatch_loses_one_record(self):
        data = bytearray(segment_bytes(1, self.RECORDS))
        bad = self.offsets(self.RECORDS)[2]
        data[bad + REC + 10] ^= 0x40                        # inside record 2's payload
        fd, end = self.fd_of(bytes(data))
        got = list(ff.iter_records(fd, HEADER_SIZE, end))
        damage = [d for _, _, d in got if d is not None]
        self.assertEqual(damage, [ff.Damage("checksum mismatch", bad, self.offsets(self.RECORDS)[3])])
        self.assertEqual([p for _, p, d in got if d is None], self.RECORDS[:2] + self.RECORDS[3:])

    def test_damaged_length_is_caught_by_the_crc(self):
        data = bytearray(segment_bytes(1, self.RECORDS))
        bad = self.offsets(self.RECORDS)[0]
        data[bad] = 4                                       # "alpha" now claims 4 bytes
        fd, end = self.fd_of(bytes(data))
        got = list(ff.iter_records(fd, HEADER_SIZE, end))
        self.assertEqual(got[0][2].reason, "checksum mismatch")
        self.assertEqual([p for _, p, d in got if d is None], self.RECORDS[1:])

    def test_resync_past_garbage_and_zeros(self):
        junk = bytes(5000) + os.urandom(3000).replace(b"\x00", b"\x01")
        data = segment_bytes(1, [b"one"]) + junk + ff.frame(b"two") + ff.frame(b"three")
        fd, end = self.fd_of(data)
        start = HEADER_SIZE + REC + 3
        self.assertEqual(ff.find_frame(fd, start, end, block=512), start + len(junk))
        got = list(ff.iter_records(fd, HEADER_SIZE, end, block=512))
        self.assertEqual([p for _, p, d in got if d is None], [b"one", b"two", b"three"])
        (damage,) = [d for _, _, d in got if d is not None]
        self.assertEqual((damage.offset, damage.resume), (start, start + len(junk)))

    def test_no_good_frame_after_damage_is_a_tail(self):
        data = segment_bytes(1, [b"one"]) + bytes(64)
        fd, end = self.fd_of(data)
        self.assertIsNone(ff.find_frame(fd, HEADER_SIZE + REC + 3, end))

    def test_budget_stops_before_a_record_but_yields_one(self):
        fd, end = self.fd_of(segment_bytes(1, [b"a" * 100, b"b" * 100]))
        self.assertEqual(len(list(ff.iter_records(fd, HEADER_SIZE, end, budget=150))), 1)
        self.assertEqual(len(list(ff.iter_records(fd, HEADER_SIZE, end, budget=10))), 1)
        self.assertEqual(list(ff.iter_records(fd, HEADER_SIZE, end, budget=10, at_least_one=False)), [])

    def test_headers(self):
        self.assertIsNone(ff.header_problem(ff.segment_header(7), 7))
        self.assertEqual(ff.header_problem(ff.segment_header(7)[:10], 7), "torn segment header")
        self.assertEqual(ff.header_problem(ff.segment_header(8), 7), "segment header names segment 8")
        broken = bytearray(ff.segment_header(7))
        broken[0] ^= 1
        self.assertEqual(ff.header_problem(bytes(broken), 7), "bad segment header")
        other = ff.SEG_HEADER.pack(ff.MAGIC, ff.VERSION + 1, 7)
        other += ff.LEN.pack(__import__("zlib").crc32(other))
        self.assertRaises(SpoolFormatError, ff.header_problem, other, 7)

    def test_segment_names(self):
        self.assertEqual(ff.segment_name(12), "00000000000000000012.seg")
        self.assertEqual(ff.segment_number(ff.segment_name(12)), 12)
        for name in ("12.seg", "00000000000000000012.seg.corrupt", "lock", "x" * 20 + ".seg"):
            self.assertIsNone(ff.segment_number(name), name)


class CursorStoreTests(FileCase):

    def test_save_is_atomic_and_durable(self):
        fsyncs = Fsyncs()
        store = CursorStore(self.dir, fsyncs)
        store.save("ch", Position(3, 100))
        path = os.path.join(self.dir, "ch.cursor")
        # the temporary file, then the directory (after the rename)
        self.assertEqual(fsyncs.paths, [path + ".tmp", self.dir])
        self.assertEqual(os.listdir(self.dir), ["ch.cursor"])
        self.assertEqual(json.loads(open(path).read()), {"name": "ch", "segment": 3, "offset": 100})
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(read_cursor_file(path), ("ch", Position(3, 100)))
        fresh = CursorStore(self.dir, None)
        self.assertEqual(fresh.load(sorted(os.listdir(self.dir))), [])
        self.assertEqual(fresh.get("ch"), Position(3, 100))

    def test_failed_save_keeps_the_previous_cursor(self):
        fsyncs = Fsyncs()
        store = CursorStore(self.dir, fsyncs)
        store.save("ch", Position(1, 50))
        fsyncs.fail = errno.EIO
        self.assertRaises(OSError, store.save, "ch", Position(2, 60))
        self.assertEqual(store.get("ch"), Position(1, 50))
        self.assertEqual(read_cursor_file(os.path.join(self.dir, "ch.cursor")), ("ch", Position(1, 50)))

    def test_missing_cursor_is_the_beginning(self):
        store = CursorStore(self.dir, None)
        self.assertEqual(store.get("nobody"), BEGINNING)
        errors = store.load(["gone.cursor"])                # listed, then deleted
        self.assertEqual([name for name, _ in errors], ["gone.cursor"])
        self.assertIsInstance(errors[0][1], OSError)

    def test_corrupt_cursors_are_reported_not_loaded(self):
        bad = {"a.cursor": b"{not json", "b.cursor": b"[]", "c.cursor": b'{"name": 3, "segment": 1, "offset": 2}',
               "d.cursor": b'{"name": "d", "segment": 1}', "e.cursor": b'{"name": "e", "segment": "x", "offset": 2}'}
        for name, data in bad.items():
            with open(os.path.join(self.dir, name), "wb") as f:
                f.write(data)
        store = CursorStore(self.dir, None)
        errors = store.load(sorted(os.listdir(self.dir)) + ["lock"])
        self.assertEqual([name for name, _ in errors], sorted(bad))
        self.assertEqual(store.positions, {})

    def test_file_names(self):
        self.assertEqual(cursor_filename("click/house"), "click%2Fhouse.cursor")
        self.assertTrue(cursor_filename(".hidden").startswith("~"))
        self.assertEqual(len(cursor_filename("x" * 300)), 1 + 64 + len(".cursor"))
        store = CursorStore(self.dir, None)
        store.save("click/house", Position(1, 24))
        self.assertEqual(os.listdir(self.dir), ["click%2Fhouse.cursor"])


class SegmentTableTests(unittest.TestCase):

    def table(self):
        return SegmentTable({1: 100, 2: 200, 4: 300}, Position(4, 300))

    def test_sizes_and_backlog(self):
        t = self.table()
        self.assertEqual((len(t), t.total), (3, 600))
        self.assertEqual(t.bytes_between(Position(1, 50), Position(4, 100)),
                         (100 - 50) + (200 - HEADER_SIZE) + (100 - HEADER_SIZE))
        self.assertEqual(t.bytes_between(Position(4, 100), Position(1, 50)), 0)
        t.grown(4, 350)
        self.assertEqual((t.total, t.head), (650, Position(4, 350)))
        t.added(5)
        self.assertEqual((t.total, t.head, len(t)), (650 + HEADER_SIZE, Position(5, HEADER_SIZE), 4))

    def test_locate(self):
        t = self.table()
        self.assertEqual(t.locate(BEGINNING), (1, HEADER_SIZE, 100, 2, Position(4, 300)))
        self.assertEqual(t.locate(Position(3, 70)), (4, HEADER_SIZE, 300, None, Position(4, 300)))
        self.assertEqual(t.locate(Position(2, 150))[:3], (2, 150, 200))
        self.assertIsNone(t.locate(Position(4, 300)))

    def test_remove_below_keeps_the_head_segment(self):
        t = self.table()
        self.assertEqual(t.remove_below(Position(2, 200)), [1, 2])   # a segment's end consumes it
        self.assertEqual(t.remove_below(Position(9, 0)), [])        # never the one being written
        self.assertEqual((t.snapshot(), t.total), ([(4, 300)], 300))


class RetentionTests(FileCase):

    def test_low_water(self):
        cursors = {"a": Position(3, 10), "b": Position(2, 99), "other": Position(0, 0)}
        self.assertIsNone(low_water(cursors, None))
        self.assertIsNone(low_water(cursors, frozenset()))
        self.assertEqual(low_water(cursors, {"a", "b"}), Position(2, 99))
        self.assertEqual(low_water(cursors, {"a", "new"}), BEGINNING)

    def test_delete_consumed(self):
        for n in (1, 2, 3):
            open(os.path.join(self.dir, ff.segment_name(n)), "wb").close()
        os.unlink(os.path.join(self.dir, ff.segment_name(2)))     # already gone: fine
        table = SegmentTable({1: 100, 2: 100, 3: 100}, Position(3, 100))
        fsyncs, logged = Fsyncs(), []
        self.assertEqual(delete_consumed(self.dir, table, None, fsyncs, logged.append), 0)
        self.assertEqual(delete_consumed(self.dir, table, Position(3, 50), fsyncs,
                                         lambda *a, **kw: logged.append(a)), 2)
        self.assertEqual(os.listdir(self.dir), [ff.segment_name(3)])
        self.assertEqual((fsyncs.paths, logged), ([self.dir], []))


class RecoveryTests(FileCase):

    def recover(self, cursors=(), fsync=None):
        self.problems = ProblemLog(self.dir, AtOnceReactor())
        names = sorted(os.listdir(self.dir))
        return Recovery(self.dir, self.problems, fsync, os.write).run(names, list(cursors))

    def write_segment(self, number, data):
        with open(os.path.join(self.dir, ff.segment_name(number)), "wb") as f:
            f.write(data)

    def test_torn_tail_cut_off_and_counted(self):
        good = segment_bytes(1, [b"one", b"two"])
        self.write_segment(1, good + ff.frame(b"three")[:-1])
        fsyncs = Fsyncs()
        found = self.recover(fsync=fsyncs)
        self.assertEqual(os.path.getsize(os.path.join(self.dir, ff.segment_name(1))), len(good))
        self.assertEqual(found.table.snapshot(), [(1, len(good)), (2, HEADER_SIZE)])
        self.assertEqual(found.segment, 2)
        self.assertEqual(self.problems.skipped_bytes, REC + 4)
        self.assertEqual(fsyncs.paths[0], os.path.join(self.dir, ff.segment_name(1)))   # the cut, first

    def test_damage_inside_is_kept_and_seen(self):
        data = bytearray(segment_bytes(1, [b"one", b"two", b"three"]))
        data[HEADER_SIZE + REC + 1] ^= 1
        self.write_segment(1, bytes(data))
        found = self.recover()
        self.assertEqual(found.table.snapshot()[0], (1, len(data)))
        self.assertEqual((self.problems.count, self.problems.skipped_regions), (1, 1))
        self.assertFalse(self.problems.first_sighting(1, HEADER_SIZE))     # readers do not report it again

    def test_bad_header_set_aside_tmp_removed_new_segment_above_cursors(self):
        self.write_segment(3, b"NOTASPOOL" * 5)
        open(os.path.join(self.dir, "ch.cursor.tmp"), "wb").close()
        found = self.recover(cursors=[Position(7, 100)])
        self.assertEqual(sorted(os.listdir(self.dir)), [ff.segment_name(3) + ".corrupt", ff.segment_name(8)])
        self.assertEqual((found.segment, found.table.head), (8, Position(8, HEADER_SIZE)))
        os.close(found.fd)

    def test_other_version_refuses(self):
        head = ff.SEG_HEADER.pack(ff.MAGIC, 2, 1)
        self.write_segment(1, head + ff.LEN.pack(__import__("zlib").crc32(head)))
        self.assertRaises(SpoolFormatError, self.recover)
        self.assertEqual(os.listdir(self.dir), [ff.segment_name(1)])


class StepReactor(task.Clock):
    """A Clock whose callFromThread runs the call at once (everything here runs on one thread)."""

    def callFromThread(self, f, *args, **kw):
        f(*args, **kw)


class WriterReaderCase(FileCase):

    def make(self, max_size=1 << 20, segment_size=1 << 20, write=os.write, commit_window=0, io=None):
        self.fsyncs = Fsyncs()
        self.pool = StepPool()
        self.clock = StepReactor()
        self.problems = ProblemLog(self.dir, self.clock)
        found = Recovery(self.dir, self.problems, self.fsyncs, os.write).run(sorted(os.listdir(self.dir)), [])
        self.fsyncs.paths = []
        self.appender = Appender(self.dir, found.segment, found.fd, segment_size=segment_size,
                                 fsync=self.fsyncs, write=write)
        self.io = io or ThreadIO(self.clock, self.pool, self.appender)
        self.writer = Writer(self.dir, found.table, self.io, reactor=self.clock, max_size=max_size,
                             commit_window=commit_window)
        self.rolls = []
        self.reader = Reader(self.dir, found.table, self.problems, lambda: self.rolls.append(1))
        self.addCleanup(self.stop)
        return found.table

    def run_all(self):
        """Run the commit jobs and the timers, the soonest first, until none is left."""
        while True:
            calls = self.clock.getDelayedCalls()
            if self.pool.jobs:
                self.pool.run_all()
            elif calls:
                self.clock.advance(min(c.getTime() for c in calls) - self.clock.seconds())
            else:
                return

    def stop(self):
        d = self.writer.stop()
        self.run_all()
        self.appender.close()
        return d

    def results(self, ds):
        out = []
        for d in ds:
            d.addBoth(out.append)
        return out

    def seg_path(self, n):
        return os.path.join(self.dir, ff.segment_name(n))


class WriterTests(WriterReaderCase):

    def test_group_commit_one_job_one_fsync(self):
        table = self.make()
        ds = [self.writer.append(b"r%d" % i) for i in range(10)]
        self.assertEqual((self.pool.jobs, self.clock.getDelayedCalls()), ([], []))   # not started: nothing
        self.writer.start()
        ds.append(self.writer.append(b"late"))             # the same reactor turn: the same commit
        positions = self.results(ds)
        self.assertEqual(positions, [])                    # not durable yet: no answer
        self.run_all()
        self.assertEqual(self.fsyncs.paths, [self.seg_path(1)])
        self.assertEqual(positions[0], Position(1, HEADER_SIZE))
        self.assertEqual(positions[-1], Position(1, HEADER_SIZE + 10 * (REC + 2)))
        with open(self.seg_path(1), "rb") as f:
            self.assertEqual(f.read(), segment_bytes(1, [b"r%d" % i for i in range(10)] + [b"late"]))
        self.assertEqual((table.head, self.writer.reserved), (Position(1, os.path.getsize(self.seg_path(1))), 0))

    def test_two_commits_in_flight_the_rest_waits_for_the_next(self):
        self.make()
        self.writer.start()
        first = self.results([self.writer.append(b"first")])
        self.clock.advance(0)                              # the commit is handed to the I/O
        second = self.results([self.writer.append(b"second")])
        self.clock.advance(0)
        self.assertEqual(len(self.pool.jobs), 2)           # the next one waits there already
        rest = self.results([self.writer.append(b"a"), self.writer.append(b"b")])
        self.clock.advance(0)
        self.assertEqual(len(self.pool.jobs), 2)           # no third while two are in flight
        self.pool.run_all()                                # the first two answered: the rest goes
        self.assertEqual((len(first + second), rest), (2, []))
        self.run_all()
        ends = [HEADER_SIZE + REC + 5, HEADER_SIZE + 2 * REC + 11, HEADER_SIZE + 3 * REC + 12]
        self.assertEqual(first + second + rest, [Position(1, HEADER_SIZE)] + [Position(1, e) for e in ends])
        self.assertEqual(len(self.fsyncs.paths), 3)

    def test_the_window_collects_from_the_oldest_record(self):
        self.make(commit_window=0.5)
        self.writer.start()
        one = self.results([self.writer.append(b"one")])
        self.clock.advance(0.3)
        two = self.results([self.writer.append(b"two")])
        self.clock.advance(0.19)
        self.assertEqual((self.pool.jobs, one, two), ([], [], []))
        self.clock.advance(0.01)                           # 0.5 s after the first: both go
        self.run_all()
        self.assertEqual((len(one + two), len(self.fsyncs.paths)), (2, 1))

    def test_a_full_window_of_bytes_commits_at_once(self):
        self.make(commit_window=10, max_size=64 << 20, segment_size=64 << 20)
        self.writer.start()
        self.results([self.writer.append(b"x" * (1 << 20)) for _ in range(7)])
        self.assertEqual(self.pool.jobs, [])
        self.results([self.writer.append(b"x" * (1 << 20))])   # 8 MiB queued: no more waiting
        self.assertEqual(len(self.pool.jobs), 1)

    def test_roll_fsyncs_the_full_segment_before_the_next_exists(self):
        self.make(segment_size=HEADER_SIZE + 2 * (REC + 100))
        self.writer.start()
        positions = self.results([self.writer.append(b"x" * 100) for _ in range(3)])
        self.run_all()
        self.assertEqual([p.segment for p in positions], [1, 1, 2])
        self.assertEqual(self.fsyncs.paths, [self.seg_path(1), self.seg_path(2), self.dir, self.seg_path(2)])

    def test_a_requested_roll_starts_a_segment_without_records(self):
        table = self.make()
        self.writer.start()
        self.writer.request_roll()
        self.run_all()
        self.assertEqual(table.head, Position(2, HEADER_SIZE))
        self.assertEqual(self.results([self.writer.append(b"a")]), [])
        self.run_all()
        self.assertEqual(table.head.segment, 2)

    def test_a_segment_made_by_a_dead_writer_is_stepped_over(self):
        self.make(segment_size=HEADER_SIZE + REC + 10)
        with open(self.seg_path(2), "wb") as f:            # a writer process died before saying so
            f.write(b"not ours")
        self.writer.start()
        positions = self.results([self.writer.append(b"%010d" % i) for i in range(2)])
        self.run_all()
        self.assertEqual(positions, [Position(1, HEADER_SIZE), Position(3, HEADER_SIZE)])
        with open(self.seg_path(2), "rb") as f:
            self.assertEqual(f.read(), b"not ours")

    def test_write_failure_truncates_and_moves_on(self):
        failing = {"on": False}

        def write(fd, data):
            if failing["on"]:
                os.write(fd, bytes(data[:3]))              # a partial write, then the error
                raise OSError(errno.ENOSPC, "No space left on device")
            return os.write(fd, data)

        table = self.make(write=write)
        self.writer.start()
        self.results([self.writer.append(b"kept")])
        self.run_all()
        size = os.path.getsize(self.seg_path(1))
        failing["on"] = True
        failed = self.results([self.writer.append(b"lost"), self.writer.append(b"lost too")])
        self.run_all()
        self.assertEqual([f.type for f in failed], [SpoolWriteError, SpoolWriteError])
        self.assertEqual(failed[0].value.errno, errno.ENOSPC)
        self.assertEqual(os.path.getsize(self.seg_path(1)), size)       # cut back
        self.assertEqual((self.writer.write_errors, table.head), (1, Position(1, size)))
        self.assertIn("ENOSPC", self.writer.last_write_error)
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        failing["on"] = False
        again = self.results([self.writer.append(b"again")])
        self.run_all()
        self.assertEqual(again, [Position(2, HEADER_SIZE)])           # a fresh segment

    def test_a_lost_commit_fails_its_records_and_the_next_goes_on(self):
        class Broken(ThreadIO):
            broken = True

            def commit(self, body, count, roll=False):
                if self.broken:
                    self.broken = False
                    return defer.fail(SpoolWriteError("spool writer process ended"))
                return super().commit(body, count, roll)

        self.make(io=None)
        self.writer._io = broken = Broken(self.clock, self.pool, self.appender)
        self.writer.start()
        lost = self.results([self.writer.append(b"a"), self.writer.append(b"b")])
        self.run_all()
        self.assertEqual([f.type for f in lost], [SpoolWriteError] * 2)
        self.assertEqual((self.writer.reserved, self.writer.write_errors), (0, 1))
        self.assertFalse(broken.broken)
        self.assertEqual(self.results([self.writer.append(b"c")]), [])
        self.run_all()
        self.assertEqual(len(self.fsyncs.paths), 1)

    def test_full(self):
        self.make(max_size=HEADER_SIZE + 2 * (REC + 10))
        self.writer.start()
        ok = self.results([self.writer.append(b"x" * 10), self.writer.append(b"x" * 10)])
        refused = self.results([self.writer.append(b"x")])
        self.assertEqual(refused[0].type, SpoolFull)
        self.run_all()
        self.assertEqual(len(ok), 2)

    def test_stop_commits_what_is_queued(self):
        self.make(commit_window=10)                        # stopping ends the window at once
        d = self.writer.append(b"last")
        done = self.results([self.writer.stop()])
        self.run_all()
        self.assertEqual((self.results([d])[0], done), (Position(1, HEADER_SIZE), [None]))
        self.assertEqual(self.results([self.writer.append(b"late")])[0].type, SpoolWriteError)


class ReaderTests(WriterReaderCase):

    def fill(self, payloads):
        self.writer.start()
        out = self.results([self.writer.append(p) for p in payloads])
        self.run_all()
        return out

    def test_reads_across_segments_with_limits(self):
        self.make(segment_size=HEADER_SIZE + 2 * (REC + 10))
        data = [b"%010d" % i for i in range(5)]
        positions = self.fill(data)
        got = self.reader.read(BEGINNING, 1 << 20, None)
        self.assertEqual([p for _, _, p in got], data)
        self.assertEqual([pos for pos, _, _ in got], positions)
        self.assertEqual(got[1][1], Position(1, HEADER_SIZE + 2 * (REC + 10)))   # the end of segment 1
        self.assertEqual(len(self.reader.read(BEGINNING, 1 << 20, 3)), 3)
        self.assertEqual(len(self.reader.read(BEGINNING, 1, None)), 1)           # at least one
        self.assertEqual([p for _, _, p in self.reader.read(got[1][1], 1 << 20, None)], data[2:])
        self.assertEqual(self.reader.read(got[-1][1], 1 << 20, None), [])        # the head

    def test_damage_skipped_reported_once(self):
        self.make()
        data = [b"%010d" % i for i in range(5)]
        positions = self.fill(data)
        with open(self.seg_path(1), "r+b") as f:
            f.seek(positions[2].offset + REC + 1)
            f.write(b"!")
        for _ in range(2):
            got = self.reader.read(BEGINNING, 1 << 20, None)
            self.assertEqual([p for _, _, p in got], data[:2] + data[3:])
        self.assertEqual((self.problems.count, self.problems.skipped_bytes), (1, REC + 10))
        self.assertEqual(self.rolls, [])                   # records follow: no roll needed

    def test_damaged_tail_of_the_active_segment_asks_for_a_roll(self):
        self.make()
        positions = self.fill([b"one", b"two"])
        with open(self.seg_path(1), "r+b") as f:
            f.seek(positions[1].offset + REC)
            f.write(b"TWO")
        self.assertEqual([p for _, _, p in self.reader.read(BEGINNING, 1 << 20, None)], [b"one"])
        self.assertEqual(self.rolls, [1])

    def test_deleted_segment_is_skipped(self):
        table = self.make(segment_size=HEADER_SIZE + REC + 10)
        self.fill([b"%010d" % i for i in range(3)])
        table.remove_below(Position(2, 0))
        os.unlink(self.seg_path(1))
        self.assertEqual([p for _, _, p in self.reader.read(BEGINNING, 1 << 20, None)], [b"%010d" % i for i in (1, 2)])


class IOPoolTests(unittest.TestCase):

    @defer.inlineCallbacks
    def test_one_daemon_thread_started_by_the_first_job(self):
        from twisted.internet import reactor
        from twisted.internet.threads import deferToThreadPool

        pool = io_pool("stilgar-spool-test")
        pool.start()
        self.addCleanup(pool.stop)
        self.assertEqual(pool.threads, [])                 # nothing to survive twistd's fork
        names = yield defer.gatherResults([deferToThreadPool(reactor, pool, lambda: threading.current_thread())
                                           for _ in range(5)])
        self.assertEqual(len(set(names)), 1)
        self.assertTrue(names[0].daemon)
        self.assertEqual(len(pool.threads), 1)


class WriterProcessStartTests(unittest.TestCase):

    def test_a_child_that_cannot_start_again_is_a_503(self):
        from stilgar.spool.writerproc import WriterProcess

        class NoFork(task.Clock):
            def spawnProcess(self, *args, **kw):
                raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

        io = WriterProcess(NoFork(), "/nowhere", segment=1, fd=None, lock_fd=0, segment_size=1 << 20,
                           fsync=True, head=lambda: Position(1, HEADER_SIZE))
        failed = []
        io.commit(b"", 0).addErrback(failed.append)
        self.assertEqual(failed[0].type, SpoolWriteError)
        self.assertIn("cannot start", str(failed[0].value))
        failed = []
        io.commit(b"", 0).addErrback(failed.append)        # tried again on the next commit
        self.assertEqual(len(failed), 1)
