"""Exponential backoff with jitter: the one rule for every retry in Stilgar.

1 s doubling to 5 min by default, each delay jittered by +-20% so that many
collectors (or lanes, or nodes) that failed together do not retry together.
"""

import random

import attr

__all__ = ["Backoff", "backoff_delay"]


def backoff_delay(failures, rand=random.random, initial=1.0, maximum=300.0, jitter=0.2):
    """The delay after ``failures`` consecutive failures (0: the first retry)."""
    base = min(maximum, initial * 2.0 ** min(failures, 30))
    return min(maximum, base * (1.0 - jitter + 2.0 * jitter * rand()))


@attr.s(slots=True)
class Backoff:
    """The delays of one thing being retried; ``reset()`` after a success."""
    initial = attr.ib(default=1.0)
    maximum = attr.ib(default=300.0)
    jitter = attr.ib(default=0.2)
    rand = attr.ib(default=random.random, repr=False)
    failures = attr.ib(default=0)

    def next_delay(self):
        delay = backoff_delay(self.failures, self.rand, self.initial, self.maximum, self.jitter)
        self.failures += 1
        return delay

    def reset(self):
        self.failures = 0
