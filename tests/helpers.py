"""Shared test helpers: a configuration builder, a fake intake, a web app."""

import base64
import json

import attr
from treq.testing import StubTreq
from twisted.internet import defer, task
from zope.interface import implementer

from stilgar.config import parse_config
from stilgar.intake import IIntake, Unavailable
from stilgar.stats import Stats
from stilgar.web.app import StilgarApp

WRITE_KEY = "wk-test"
OTHER_KEY = "wk-other"
ORIGIN = "http://app.example"


def make_config(**sections):
    """A parsed configuration with a blackhole destination for WRITE_KEY and OTHER_KEY."""
    data = {"destinations": [{"type": "blackhole", "write_keys": [WRITE_KEY, OTHER_KEY]}],
            "server": {"origins": [ORIGIN]}}
    for name, value in sections.items():
        if name == "destinations":
            data[name] = value
        else:
            data.setdefault(name, {}).update(value)
    return parse_config(data)


def basic(key, password=""):
    return b"Basic " + base64.b64encode(f"{key}:{password}".encode())


@implementer(IIntake)
@attr.s
class FakeIntake:
    """Records accepted requests; can be told to refuse or to hold answers."""

    stopping = attr.ib(default=False)
    refuse = attr.ib(default=False)
    full = attr.ib(default=False)
    accepted = attr.ib(factory=list)
    held = attr.ib(default=None)

    def accepting(self, write_key):
        # the forwarder's rule: nothing while stopping or full
        return not self.full and not self.stopping

    def accept(self, write_key, request_id, events):
        if self.refuse:
            return defer.fail(Unavailable(30))
        self.accepted.append((write_key, request_id, events))
        if self.held is not None:
            return self.held
        return defer.succeed(None)

    def events(self):
        return [e for _, _, events in self.accepted for e in events]

    def health(self):
        return {"status": "UP", "acceptingEvents": not self.full and not self.stopping,
                "destinations": {}, "spool": {"bytes": 0}}

    def status(self, with_destinations):
        return {"spool": {"bytes": 0}, **({"blackhole": {"status": "OK"}} if with_destinations else {})}

    def queue_capacity(self):
        return 100


def make_app(config=None, intake=None, clock=None):
    config = config if config is not None else make_config()
    intake = intake if intake is not None else FakeIntake()
    clock = clock if clock is not None else task.Clock()
    clock.advance(1_700_000_000)
    app = StilgarApp(config, intake, Stats(up_since=clock.seconds()), clock)
    return app, intake, clock


def stub(app):
    """A treq whose requests go, in memory, through ``app.site()``: the production path
    (channel, gate at header time, Klein endpoint), with ``flush()`` to pump answers."""
    site = app.site()
    site.startFactory()
    client = StubTreq(site.resource)
    # treq's in-memory agent serves a plain Site around the resource: serve ours instead
    client._agent._serverFactory = site
    return client


@defer.inlineCallbacks
def answer(response):
    """(status, body bytes, headers) of a treq response."""
    body = yield response.content()
    return response.code, body, response.headers


def event_body(**fields):
    event = {"anonymousId": "anon-1", "messageId": "m-1", "event": "Clicked", "properties": {"a": 1}}
    event.update(fields)
    return json.dumps(event).encode()
