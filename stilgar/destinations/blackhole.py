"""The ``blackhole`` destination: accepts everything for its keys, stores nothing, counts."""

import attr
from twisted.internet import defer
from zope.interface import implementer, provider

from .. import validate
from .base import DISCARD, IDestination, IDestinationType


@attr.s(frozen=True)
class BlackholeSettings:
    pass


@provider(IDestinationType)
class BlackholeType:
    @staticmethod
    def parse_settings(settings, where, warn):
        validate.Block(settings, where, ("type", "name", "write_keys")).done()
        return BlackholeSettings()

    @staticmethod
    def default_name(settings):
        return "blackhole"

    @staticmethod
    def build(name, write_keys, settings, reactor):
        return Blackhole(name=name, write_keys=frozenset(write_keys), reactor=reactor)


@implementer(IDestination)
@attr.s
class Blackhole:
    name = attr.ib()
    write_keys = attr.ib(converter=frozenset)
    reactor = attr.ib(default=None, repr=False)
    accepted = attr.ib(default=0, init=False)
    discarded = attr.ib(default=0, init=False)     # discard records among them
    _since = attr.ib(default=None, init=False)

    def start(self):
        self._since = self.reactor.seconds() if self.reactor else None
        return defer.succeed(None)

    def write(self, events):
        self.accepted += len(events)
        self.discarded += sum(1 for e in events if e.get("type") == DISCARD)
        return defer.succeed(None)

    def flush(self):
        return defer.succeed(None)

    def stop(self):
        return defer.succeed(None)

    def buffered(self):
        return 0

    def health(self):
        return {"up": True, "since": self._since}

    def status(self):
        return {"status": "OK", "type": "blackhole", "accepted": self.accepted, "buffered": 0,
                "discarded": self.discarded, "last_error": None}
