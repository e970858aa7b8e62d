#!/usr/bin/env python3
"""The whole collector's CPU per event, in one process, from request bytes to confirmed rows.

    python3 bench/pipeline_cpu.py                    # 3 rounds of 400 batch100 requests, 16 connections
    python3 bench/pipeline_cpu.py --payload single --requests 4000
    python3 bench/pipeline_cpu.py --profile          # cProfile of one round (the reactor thread)
    python3 bench/pipeline_cpu.py --profile --sort cumulative
    python3 bench/pipeline_cpu.py --instructions     # instructions per event (valgrind, every thread)

The collector is the one ``twistd stilgar`` builds (``stilgar.service.make_service``:
web, spool with fsync, forwarder, a ClickHouse destination), on the real reactor; only
the sockets are replaced: requests are written into its site over in-memory transports
(``--connections`` kept-alive ones, each sending its next request when the previous is
answered, as wrk does), and ClickHouse is the tests' fake server, answering every INSERT
at once (warm: tables and columns exist, INSERTs are counted, not parsed). A round ends
when every event is confirmed, so it counts everything the collector does for an event:
HTTP, decoding, normalising, the spool (encoding, the writer thread, fsync), the queue,
the forwarder, rows, TSV, gzip, the confirmations. What it leaves out is ClickHouse and
the kernel's side of the sockets (bench/run measures both, noisily; doc/performance.md).

Figures are CPU time of the process (``time.process_time``: every thread) per event, the
median of the rounds, with the service's own garbage-collection settings (it freezes and
sets its thresholds at start). ``--instructions`` counts instructions instead (callgrind,
PYTHONHASHSEED=0): the figure a noisy machine moves least.
"""

import argparse
import cProfile
import os
import pstats
import re
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import callgrind  # noqa: E402
import payloads  # noqa: E402
from destination_cpu import InstantClickHouse  # noqa: E402  (the tests' fake server, counting INSERTs once warm)
import yaml  # noqa: E402
from twisted.internet import defer, task  # noqa: E402
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

from stilgar import service as service_module  # noqa: E402
from stilgar.config import parse_config  # noqa: E402
from stilgar.destinations.blackhole import BlackholeType  # noqa: E402
from stilgar.destinations.clickhouse.destination import ClickHouseDestination  # noqa: E402

PAYLOAD = ["batch100"]
PEER = IPv4Address("TCP", "127.0.0.1", 40000)


class NoEndpoint:
    """The web service's endpoint: listens nowhere (requests come over in-memory transports)."""

    def listen(self, factory):
        return defer.succeed(None)


class Connection(StringTransport):
    """A kept-alive client connection: sends its next request when the answer is whole."""

    def __init__(self, site, requests, done):
        super().__init__(peerAddress=PEER)
        self.requests, self.done = requests, done
        self.channel = site.buildProtocol(PEER)
        self.channel.makeConnection(self)
        self.answered = 0

    def write(self, data):
        super().write(data)
        buf = self.value()
        head, sep, body = buf.partition(b"\r\n\r\n")
        if not sep:
            return
        m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        if m is None or len(body) < int(m.group(1)):
            return
        if not head.startswith(b"HTTP/1.1 200 "):
            raise SystemExit(f"unexpected answer: {buf[:300]!r}")
        self.clear()
        self.answered += 1
        from twisted.internet import reactor
        reactor.callLater(0, self.send)

    def send(self):
        if self.requests:
            self.channel.dataReceived(self.requests.pop())
        else:
            self.done(self)


def build(directory, clickhouse, options=(), blackhole=False, spool="fsync"):
    config = parse_config({
        "server": {"origins": [payloads.ORIGIN]},
        "spool": {"path": directory, "fsync": spool == "fsync"} if spool != "off" else {"enabled": False},
        "destinations": [{"type": "clickhouse", "name": "bench", "write_keys": [payloads.WRITE_KEY],
                          "host": "ch", "user": "u", "password": "p", "database": "db",
                          "cache_idle_timeout": "1s", **dict(options)}]})
    from twisted.internet import reactor

    def destinations(config, reactor):
        dest = config.destinations[0]
        if blackhole:
            return [BlackholeType.build(dest.name, dest.write_keys, None, reactor)], {}
        return [ClickHouseDestination(dest.name, dest.write_keys, dest.settings, reactor,
                                      client=clickhouse)], {}
    service_module.build_destinations = destinations
    top = service_module.make_service(config, reactor, endpoint=NoEndpoint())
    return top, top.web.factory


@defer.inlineCallbacks
def run_round(site, lane, requests, connections):
    """CPU seconds from the first request until every event is confirmed, and the events."""
    events = len(requests) * payloads.BATCH_SIZES[PAYLOAD[0]]
    target = lane.confirmed_events + events
    pending = list(reversed(requests))
    finished = defer.Deferred()
    open_ = []

    def done(conn):
        open_.remove(conn)
        conn.channel.connectionLost(None)
        if not open_:
            finished.callback(None)

    started, main_started = time.process_time(), time.thread_time()
    per = [pending[i::connections] for i in range(connections)]
    for reqs in per:
        open_.append(Connection(site, reqs, done))
    for conn in list(open_):
        conn.send()
    yield finished
    while lane.confirmed_events < target:
        lane.destination.flush()     # the rows routed since (flush() does nothing when none are waiting)
        yield task.deferLater(site.reactor, 0.001, lambda: None)
    return time.process_time() - started, time.thread_time() - main_started, events


@defer.inlineCallbacks
def main(reactor, args):
    directory = tempfile.mkdtemp(prefix="stilgar-pipeline-")
    try:
        clickhouse = InstantClickHouse("18.16.1")
        top, site = build(directory, clickhouse, [(k, yaml.safe_load(v)) for k, v in (o.split("=", 1) for o in args.option)],
                          blackhole=args.blackhole, spool=args.spool)
        site.reactor = reactor
        top.startService()
        PAYLOAD[0] = args.payload
        lane = next(iter(top.forwarder.lanes.values()))
        requests = list(payloads.requests(args.payload, args.requests))
        yield run_round(site, lane, requests[:50], args.connections)     # warm: schema, plans
        clickhouse.warm = True
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            yield run_round(site, lane, requests, args.connections)
            prof.disable()
            pstats.Stats(prof).sort_stats(args.sort).print_stats(args.top)
        else:
            times, main = [], []
            for _ in range(args.rounds):
                spent, spent_main, n = yield run_round(site, lane, requests, args.connections)
                times.append(spent)
                main.append(spent_main)
            spent = statistics.median(times)
            print(f"{args.payload}: {args.requests} requests, {n} events; CPU {1e6 * spent / n:.2f} us per event "
                  f"(median of {args.rounds} rounds: {', '.join(f'{1e6 * t / n:.2f}' for t in times)}), "
                  f"of which the reactor thread {1e6 * statistics.median(main) / n:.2f}; "
                  f"{clickhouse.body_bytes / (n * args.rounds):.0f} bytes of INSERT per event")
        yield top.stopService()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def instructions(args):
    """Instructions per event: callgrind of 1 round and of 3 rounds, the difference / 2 rounds of events."""
    common = ["--payload", args.payload, "--requests", args.requests, "--connections", args.connections,
              f"--spool={args.spool}"] + (["--blackhole"] if args.blackhole else []) + \
        [f"--option={o}" for o in args.option]
    counts = [callgrind.instructions(__file__, *common, "--rounds", rounds) for rounds in (1, 3)]
    n = args.requests * payloads.BATCH_SIZES[args.payload]
    print(f"{args.payload}: {(counts[1] - counts[0]) / (2 * n):,.0f} instructions per event "
          f"(callgrind, rounds of {args.requests} requests)")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--payload", default="batch100", choices=["batch100", "batch20", "single", "track100"])
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--sort", default="tottime", help="--profile: pstats order (tottime, cumulative)")
    p.add_argument("--instructions", action="store_true")
    p.add_argument("--blackhole", action="store_true", help="a blackhole destination (bench/run's api-* rows)")
    p.add_argument("--spool", choices=["fsync", "nofsync", "off"], default="fsync")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a destination setting, e.g. cache_threshold=500 (repeatable)")
    a = p.parse_args()
    if a.instructions:
        instructions(a)
    else:
        task.react(main, [a])
