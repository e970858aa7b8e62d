"""Scale-out scenario shared by the trial test and ``bench/chaos scaleout``:
three Stilgar instances (twistd, each with its own spool) behind Debian's
haproxy (round robin) on loopback, writing to the test cluster
(tests/clusterserver.py); one instance is killed with kill -9 mid-load and
started again on its spool. Either the SDK-like load client of
tests/faults.py or the real Python SDK sends the events."""

import os
import shutil
import uuid

from twisted.internet import defer, protocol, reactor
from twisted.internet.task import deferLater

from .faults import CH_PASSWORD, CH_USER, Load, Outcome, wait_until
from .processes import StilgarProcess, free_port

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
INSTANCES = 3


def instance_config(directory, port, cluster, database):
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "stilgar.yml")
    hosts = "".join(f"      - {h}\n" for h in cluster.hosts)
    with open(path, "w") as f:
        f.write(f"""server:
  ip: 127.0.0.1
  port: {port}
spool:
  path: {os.path.join(directory, 'spool')}
  segment_size: 1MiB
forwarder:
  shutdown_timeout: 5s
logging:
  level: warn
destinations:
  - type: clickhouse
    name: cluster
    write_keys: [k]
    cluster: {cluster.name}
    hosts:
{hosts}    user: {CH_USER}
    password: {CH_PASSWORD}
    database: {database}
    cache_threshold: 2000
    cache_idle_timeout: 200ms
    query_timeout: 5s
    alter_timeout: 10s
""")
    return path


class _Quiet(protocol.ProcessProtocol):
    def __init__(self):
        self.output = []
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.output.append(data)

    errReceived = outReceived

    def processEnded(self, reason):
        self.ended.callback(None)


class HAProxy:
    """haproxy in the foreground (-db), round robin over the instances, with
    health checks on /ping so that a killed instance leaves the rotation."""

    def __init__(self, directory, backends):
        self.port = free_port()
        self.path = os.path.join(directory, "haproxy.cfg")
        servers = "".join(f"    server s{i} 127.0.0.1:{p} check inter 200ms fall 1 rise 2\n"
                          for i, p in enumerate(backends))
        with open(self.path, "w") as f:
            f.write(f"""global
    maxconn 1000
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 2
    option redispatch
frontend collectors
    bind 127.0.0.1:{self.port}
    default_backend stilgar
backend stilgar
    balance roundrobin
    option httpchk GET /ping
{servers}""")
        self.proto = None

    def start(self):
        self.proto = _Quiet()
        self.transport = reactor.spawnProcess(self.proto, HAPROXY, [HAPROXY, "-f", self.path, "-db"],
                                              env=dict(os.environ))
        return deferLater(reactor, 0.5, lambda: None)

    def stop(self):
        if self.proto is not None and not self.proto.ended.called:
            self.transport.signalProcess("TERM")
            return self.proto.ended
        return defer.succeed(None)


def _instance(directory, port):
    config = os.path.join(directory, "stilgar.yml")
    return StilgarProcess(["-n", "--pidfile=", "stilgar", "--config", config], cwd=directory,
                          ping_url=f"http://127.0.0.1:{port}/ping")


@defer.inlineCallbacks
def stored_ids(cluster, database):
    """(distinct ids stored, rows after FINAL) read through the Distributed table."""
    def read():
        text = cluster.query(f"SELECT id FROM `{database}`.tracks FINAL FORMAT TabSeparated")
        rows = [line for line in text.split("\n") if line]
        return set(rows), len(rows)
    from twisted.internet import threads
    result = yield threads.deferToThread(read)
    return result


@defer.inlineCallbacks
def scaleout_scenario(directory, cluster, total=3000, sdk=None):
    """``sdk``: a callable(base_url, events) -> Deferred of the acknowledged
    messageIds (the real Python SDK); None: the load client of tests/faults.py."""
    started = reactor.seconds()
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    database = "chaos_scaleout_" + uuid.uuid4().hex[:6]
    ports = [free_port() for _ in range(INSTANCES)]
    dirs = [os.path.join(directory, f"stilgar{i}") for i in range(INSTANCES)]
    instances = []
    lb = HAProxy(directory, ports)
    load = Load(f"http://127.0.0.1:{lb.port}", "k", total)
    base = load.base
    try:
        for d, p in zip(dirs, ports):
            instance_config(d, p, cluster, database)
            instances.append(_instance(d, p))
            yield instances[-1].start(timeout=60)
        yield lb.start()
        if sdk is None:
            sending = load.run()
            progress = lambda: len(load.acked)    # noqa: E731
        else:
            events = [e for batch in load.batches() for e in batch]
            sending = sdk(base, events)
            sending.addCallback(load.acked.update)
            progress = None
        if progress is not None:
            yield wait_until(lambda: progress() >= total // 3, 120, 0.02)
        else:
            yield deferLater(reactor, 0.7, lambda: None)   # the SDK is sending by then
        yield instances[1].kill()            # kill -9 of one instance mid-load
        yield deferLater(reactor, 0.5, lambda: None)
        instances[1] = _instance(dirs[1], ports[1])
        yield instances[1].start(timeout=60)  # its spool is replayed
        yield sending
        state = {}

        @defer.inlineCallbacks
        def complete():
            state["ids"], state["rows"] = yield stored_ids(cluster, database)
            return load.acked <= state["ids"]
        yield wait_until(complete, 120, 0.5)
        ids, rows = state.get("ids", set()), state.get("rows", 0)
    finally:
        yield lb.stop()
        for s in instances:
            if s.watcher is not None and not s.watcher.ended.called:
                try:
                    yield s.stop()
                except Exception:
                    pass
    return Outcome(name="scale-out kill -9", acknowledged=len(load.acked), stored=len(ids & load.acked),
                   missing=len(load.acked - ids), duplicates=rows - len(ids),
                   statuses=dict(sorted(load.statuses.items(), key=str)), seconds=reactor.seconds() - started)
