"""The one retry rule (stilgar/backoff.py), used by lanes, ClickHouse nodes and the worker supervisor."""

from twisted.trial import unittest

from stilgar.backoff import Backoff, backoff_delay


class BackoffTests(unittest.TestCase):
    def test_doubles_to_the_cap_with_jitter(self):
        self.assertEqual([backoff_delay(n, rand=lambda: 0.5) for n in range(4)], [1.0, 2.0, 4.0, 8.0])
        self.assertEqual(backoff_delay(40, rand=lambda: 0.5), 300.0)
        self.assertEqual(backoff_delay(0, rand=lambda: 0.0), 0.8)
        self.assertAlmostEqual(backoff_delay(2, rand=lambda: 1.0), 4.8)

    def test_reset(self):
        b = Backoff(rand=lambda: 0.5)
        self.assertEqual([b.next_delay() for _ in range(3)], [1.0, 2.0, 4.0])
        b.reset()
        self.assertEqual(b.next_delay(), 1.0)

    def test_the_worker_supervisors_parameters(self):
        """server.workers restarts: 0.5 s doubling to 30 s, no jitter (one parent, nothing to spread)."""
        b = Backoff(initial=0.5, maximum=30.0, jitter=0.0)
        self.assertEqual([b.next_delay() for _ in range(8)], [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0])

    def test_jitter_stays_within_its_band(self):
        for n in range(12):
            base = min(300.0, 2.0 ** n)
            for r in (0.0, 0.25, 0.5, 0.75, 0.999):
                d = backoff_delay(n, rand=lambda r=r: r)
                self.assertTrue(0.8 * base <= d <= min(300.0, 1.2 * base), (n, r, d))
