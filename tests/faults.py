"""Fault scenarios shared by the trial fault tests and ``bench/chaos``.

Each scenario runs real processes on loopback (a ClickHouse of its own, Stilgar
under twistd), sends a known set of events with a load client that behaves
like an SDK (same batch and messageIds again on 5xx or connection errors),
injects a fault, and returns what was acknowledged and what ClickHouse holds.
"""

import base64
import json
import os
import uuid

import attr
import treq
from twisted.internet import defer, reactor, utils
from twisted.internet.task import deferLater

from .processes import ROOT, StilgarProcess, free_port

SCRIPT = os.path.join(ROOT, "scripts", "clickhouse-server.sh")
CH_USER, CH_PASSWORD = "collector", "collector-test-pw"


class ClickHouse:
    """A throw-away ClickHouse of the scenario's own (it is stopped and started)."""

    def __init__(self, directory, port=None):
        self.port = port or free_port()
        self.env = dict(os.environ, CH_DIR=directory, CH_HTTP_PORT=str(self.port),
                        CH_USER=CH_USER, CH_PASSWORD=CH_PASSWORD)
        self.url = f"http://127.0.0.1:{self.port}"

    @defer.inlineCallbacks
    def _script(self, action):
        out, err, code = yield utils.getProcessOutputAndValue("/bin/bash", [SCRIPT, action], env=self.env)
        if code != 0:
            raise RuntimeError(f"clickhouse-server.sh {action} failed: {out.decode()} {err.decode()}")

    def start(self):
        return self._script("start")

    def stop(self):
        return self._script("stop")

    @defer.inlineCallbacks
    def query(self, sql):
        response = yield treq.post(self.url + "/", data=sql.encode(), persistent=False, headers={
            b"X-ClickHouse-User": [CH_USER.encode()], b"X-ClickHouse-Key": [CH_PASSWORD.encode()]})
        body = yield response.content()
        if response.code != 200:
            raise RuntimeError(f"ClickHouse {response.code}: {body[:300]!r}")
        return body.decode()

    @defer.inlineCallbacks
    def ids(self, database, table="tracks"):
        """(all ids stored, count of rows after FINAL)."""
        text = yield self.query(f"SELECT id FROM `{database}`.`{table}` FINAL FORMAT TabSeparated")
        rows = [line for line in text.split("\n") if line]
        return set(rows), len(rows)


def stilgar_config(directory, port, destinations, spool_max="64MiB", extra=""):
    path = os.path.join(directory, "stilgar.yml")
    blocks = []
    for d in destinations:
        blocks.append(f"""  - type: clickhouse
    name: {d['name']}
    write_keys: [{', '.join(d['keys'])}]
    host: 127.0.0.1
    port: {d['port']}
    user: {CH_USER}
    password: {d.get('password', CH_PASSWORD)}
    database: {d['database']}
    cache_threshold: 2000
    cache_idle_timeout: 200ms
    query_timeout: 3s
""")
    with open(path, "w") as f:
        f.write(f"""server:
  ip: 127.0.0.1
  port: {port}
spool:
  path: {os.path.join(directory, 'spool')}
  max_size: {spool_max}
  segment_size: 1MiB
forwarder:
  shutdown_timeout: 5s
logging:
  level: warn
{extra}destinations:
""" + "".join(blocks))
    return path


@attr.s
class Load:
    """An SDK-like client: batches with fixed messageIds, retried until acknowledged."""

    base = attr.ib()
    key = attr.ib()
    total = attr.ib()
    batch = attr.ib(default=50)
    concurrency = attr.ib(default=4)
    acked = attr.ib(factory=set)
    statuses = attr.ib(factory=dict)
    stop_after = attr.ib(default=None)   # stop sending once this many are acked (None: all)

    def batches(self):
        run = uuid.uuid4().hex[:8]
        for start in range(0, self.total, self.batch):
            yield [{"type": "track", "event": "Chaos Event", "messageId": f"{run}-{i}",
                    "anonymousId": f"anon-{i % 97}", "properties": {"n": i, "label": "x" * (i % 13), "padding": "p" * 700},
                    "originalTimestamp": "2026-01-02T03:04:05.000Z", "sentAt": "2026-01-02T03:04:06.000Z"}
                   for i in range(start, min(start + self.batch, self.total))]

    @defer.inlineCallbacks
    def send_one(self, events):
        body = json.dumps({"batch": events}).encode()
        auth = b"Basic " + base64.b64encode(self.key.encode() + b":")
        delay = 0.05
        while True:
            try:
                response = yield treq.post(self.base + "/v1/batch", data=body, persistent=False, timeout=10,
                                           headers={b"Authorization": [auth],
                                                    b"Content-Type": [b"application/json"]})
                yield response.content()
                code = response.code
            except Exception:
                code = "error"
            self.statuses[code] = self.statuses.get(code, 0) + 1
            if code == 200:
                self.acked.update(e["messageId"] for e in events)
                return
            if isinstance(code, int) and 400 <= code < 500:
                raise AssertionError(f"batch refused with {code}")
            yield deferLater(reactor, delay, lambda: None)
            delay = min(delay * 2, 1.0)

    @defer.inlineCallbacks
    def run(self):
        pending = iter(list(self.batches()))

        @defer.inlineCallbacks
        def worker():
            for events in pending:
                if self.stop_after is not None and len(self.acked) >= self.stop_after:
                    return
                yield self.send_one(events)
        yield defer.gatherResults([worker() for _ in range(self.concurrency)], consumeErrors=True)


@defer.inlineCallbacks
def wait_until(predicate, timeout, interval=0.2):
    waited = 0.0
    while True:
        try:
            value = yield defer.maybeDeferred(predicate)
        except Exception:
            value = None
        if value:
            return value
        if waited >= timeout:
            return None
        yield deferLater(reactor, interval, lambda: None)
        waited += interval


@attr.s
class Outcome:
    name = attr.ib()
    acknowledged = attr.ib()
    stored = attr.ib()
    missing = attr.ib()
    duplicates = attr.ib()
    statuses = attr.ib(factory=dict)
    seconds = attr.ib(default=0.0)

    def line(self):
        return (f"{self.name:<22} acknowledged={self.acknowledged:<7} stored={self.stored:<7} "
                f"missing={self.missing:<5} duplicates={self.duplicates:<5} statuses={self.statuses}")


@defer.inlineCallbacks
def settle(ch, database, acked, timeout=60):
    """Wait until every acknowledged id is in ClickHouse (or time out); count what is there."""
    state = {}

    @defer.inlineCallbacks
    def complete():
        ids, rows = yield ch.ids(database)
        state["ids"], state["rows"] = ids, rows
        return acked <= ids
    yield wait_until(complete, timeout)
    ids, rows = state.get("ids", set()), state.get("rows", 0)
    return ids, rows


def outcome(name, load, ids, rows, started):
    return Outcome(name=name, acknowledged=len(load.acked), stored=len(ids & load.acked),
                   missing=len(load.acked - ids), duplicates=rows - len(ids),
                   statuses=dict(sorted(load.statuses.items(), key=str)), seconds=reactor.seconds() - started)


def _process(config, directory):
    with open(config) as f:
        port = [line.split(":")[1].strip() for line in f if line.strip().startswith("port:")][0]
    return StilgarProcess(["-n", "--pidfile=", "stilgar", "--config", config], cwd=directory,
                          ping_url=f"http://127.0.0.1:{port}/ping")


@defer.inlineCallbacks
def _single_destination(directory, ch, prefix, total, spool_max="64MiB"):
    """A Stilgar with one ClickHouse destination, started, and a load for it (not yet sent)."""
    database = prefix + uuid.uuid4().hex[:6]
    port = free_port()
    config = stilgar_config(directory, port, [dict(name="ch", keys=["k"], port=ch.port, database=database)],
                            spool_max=spool_max)
    stilgar = _process(config, directory)
    yield stilgar.start()
    return database, config, stilgar, Load(f"http://127.0.0.1:{port}", "k", total)


@defer.inlineCallbacks
def kill9_scenario(directory, ch, total=3000):
    """kill -9 of Stilgar in the middle of a load, then a restart on the same spool."""
    started = reactor.seconds()
    database, config, stilgar, load = yield _single_destination(directory, ch, "chaos_kill9_", total)
    sending = load.run()
    yield wait_until(lambda: len(load.acked) >= total // 3, 60, 0.02)
    yield stilgar.kill()
    yield deferLater(reactor, 0.3, lambda: None)
    stilgar = _process(config, directory)
    yield stilgar.start()
    yield sending
    ids, rows = yield settle(ch, database, load.acked)
    yield stilgar.stop()
    return outcome("kill -9 mid-load", load, ids, rows, started)


@defer.inlineCallbacks
def clickhouse_down_scenario(directory, ch, total=3000):
    """ClickHouse stopped while events arrive, then started again."""
    started = reactor.seconds()
    database, _, stilgar, load = yield _single_destination(directory, ch, "chaos_chdown_", total)
    sending = load.run()
    yield wait_until(lambda: len(load.acked) >= total // 4, 60, 0.02)
    yield ch.stop()
    yield wait_until(lambda: len(load.acked) >= (3 * total) // 4, 60, 0.02)
    yield ch.start()
    yield sending
    ids, rows = yield settle(ch, database, load.acked)
    yield stilgar.stop()
    return outcome("ClickHouse down", load, ids, rows, started)


@defer.inlineCallbacks
def spool_full_scenario(directory, ch, total=3000):
    """A small spool with ClickHouse down: 503s, then recovery once it drains."""
    started = reactor.seconds()
    database, _, stilgar, load = yield _single_destination(directory, ch, "chaos_full_", total, "1MiB")
    yield ch.stop()
    sending = load.run()
    yield wait_until(lambda: load.statuses.get(503, 0) >= 3, 30, 0.05)
    refused_while_full = load.statuses.get(503, 0)
    yield ch.start()
    yield sending
    ids, rows = yield settle(ch, database, load.acked)
    yield stilgar.stop()
    result = outcome("spool full", load, ids, rows, started)
    result.statuses["503 while full"] = refused_while_full
    return result


@defer.inlineCallbacks
def failing_destination_scenario(directory, ch, total=2000):
    """One destination fails (wrong password) while another keeps receiving; fixed, it catches up."""
    started = reactor.seconds()
    good_db = "chaos_good_" + uuid.uuid4().hex[:6]
    bad_db = "chaos_bad_" + uuid.uuid4().hex[:6]
    port = free_port()
    dests = [dict(name="good", keys=["k"], port=ch.port, database=good_db),
             dict(name="bad", keys=["k"], port=ch.port, database=bad_db, password="wrong-password")]
    config = stilgar_config(directory, port, dests)
    stilgar = _process(config, directory)
    yield stilgar.start()
    load = Load(f"http://127.0.0.1:{port}", "k", total)
    yield load.run()
    good_ids, good_rows = yield settle(ch, good_db, load.acked)
    yield stilgar.stop()
    dests[1]["password"] = CH_PASSWORD
    config = stilgar_config(directory, port, dests)
    stilgar = _process(config, directory)
    yield stilgar.start()
    bad_ids, bad_rows = yield settle(ch, bad_db, load.acked)
    yield stilgar.stop()
    result = outcome("destination failing", load, good_ids & bad_ids,
                     good_rows - len(good_ids) + bad_rows - len(bad_ids) + len(good_ids & bad_ids), started)
    result.statuses["good stored while other failed"] = len(good_ids & load.acked)
    return result


SCENARIOS = {
    "kill9": kill9_scenario,
    "clickhouse_down": clickhouse_down_scenario,
    "spool_full": spool_full_scenario,
    "failing_destination": failing_destination_scenario,
}
