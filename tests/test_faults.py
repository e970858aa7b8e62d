"""Fault tests: real processes on loopback; every acknowledged event must be stored exactly once.

Each compares the messageIds acknowledged with 200 against the ids in ClickHouse
(after FINAL): zero missing, zero duplicates.
"""

import os
import shutil

from twisted.internet import defer
from twisted.trial import unittest

from . import faults


class FaultTests(unittest.TestCase):
    timeout = 240

    @defer.inlineCallbacks
    def setUp(self):
        if not os.path.exists("/usr/sbin/clickhouse-server") and not shutil.which("apt-get"):
            raise unittest.SkipTest("no clickhouse-server and no apt-get to install it")
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.ch = faults.ClickHouse(os.path.join(self.dir, "clickhouse"))
        yield self.ch.start()

    def tearDown(self):
        return self.ch.stop()

    @defer.inlineCallbacks
    def check(self, scenario, **kw):
        result = yield scenario(self.dir, self.ch, **kw)
        self.assertGreater(result.acknowledged, 0, result.line())
        self.assertEqual((result.missing, result.duplicates), (0, 0), result.line())
        return result

    def test_kill9_mid_load(self):
        return self.check(faults.kill9_scenario, total=1500)

    def test_clickhouse_down_then_back(self):
        return self.check(faults.clickhouse_down_scenario, total=1500)

    @defer.inlineCallbacks
    def test_spool_full_then_recovery(self):
        result = yield self.check(faults.spool_full_scenario, total=4000)
        self.assertGreater(result.statuses["503 while full"], 0, result.line())
        self.assertEqual(result.acknowledged, 4000)

    @defer.inlineCallbacks
    def test_failing_destination_does_not_block_another(self):
        result = yield self.check(faults.failing_destination_scenario, total=1000)
        self.assertEqual(result.statuses["good stored while other failed"], 1000)
