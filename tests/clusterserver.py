"""A real ClickHouse cluster for the cluster tests: ZooKeeper and four
ClickHouse 18.16 nodes (2 shards x 2 replicas, cluster ``stilgar``) on
loopback, started with ``scripts/clickhouse-cluster.sh``, once per test
process, stopped at exit.

``cluster()`` returns it; when it cannot be started the tests skip, unless
``$STILGAR_TEST_CLUSTER_REQUIRED`` is set (CI), where they fail. Blocking:
call it from setUpClass, never from a reactor-driven test body, except the
node controls, which are quick (kill -9 / start one process)."""

import atexit
import os
import subprocess
import unittest
import urllib.error
import urllib.request

from .chserver import PASSWORD, ROOT, USER

SCRIPT = os.path.join(ROOT, "scripts", "clickhouse-cluster.sh")
NAME = "stilgar"


class Cluster:
    def __init__(self, directory, base_port):
        self.directory = directory
        self.base_port = base_port
        self.env = dict(os.environ, CLUSTER_DIR=directory, CLUSTER_BASE_PORT=str(base_port),
                        CH_USER=USER, CH_PASSWORD=PASSWORD)
        self.user = USER
        self.password = PASSWORD
        self.name = NAME

    def script(self, *args, timeout=300):
        r = subprocess.run(["bash", SCRIPT, *args], env=self.env, capture_output=True, text=True,
                           timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"clickhouse-cluster.sh {' '.join(args)}: {(r.stderr or r.stdout).strip()[-600:]}")
        return r.stdout

    @property
    def urls(self):
        return [f"http://127.0.0.1:{self.base_port + n * 10 + 1}" for n in (1, 2, 3, 4)]

    @property
    def hosts(self):
        return [u[len("http://"):] for u in self.urls]

    def query(self, sql, node=1):
        """Blocking query on one node (1-4)."""
        req = urllib.request.Request(self.urls[node - 1] + "/?wait_end_of_query=1", data=sql.encode("utf-8"),
                                     headers={"X-ClickHouse-User": self.user, "X-ClickHouse-Key": self.password})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.read().decode("utf-8")
        except urllib.error.HTTPError as e:
            raise RuntimeError(e.read().decode("utf-8", "replace")[:500]) from None

    def kill_node(self, n):
        self.script("kill-node", str(n))

    def start_node(self, n):
        self.script("start-node", str(n))

    def stop_zookeeper(self):
        self.script("kill-zk")

    def start_zookeeper(self):
        self.script("start-zk")

    def stop(self):
        try:
            self.script("stop", timeout=120)
        except Exception:
            pass


_shared = None
_error = None


def cluster():
    global _shared, _error
    if _shared is not None:
        return _shared
    required = bool(os.environ.get("STILGAR_TEST_CLUSTER_REQUIRED"))
    if _error is not None:
        if required:
            raise RuntimeError(_error)
        raise unittest.SkipTest(_error)
    directory = os.environ.get("STILGAR_TEST_CLUSTER_DIR") or f"/tmp/stilgar-test-cluster-{os.getpid()}"
    base = int(os.environ.get("STILGAR_TEST_CLUSTER_PORT") or 19100 + (os.getpid() % 50) * 60)
    c = Cluster(directory, base)
    try:
        c.script("start")
    except Exception as e:
        _error = f"the ClickHouse cluster could not be started: {e}"
        c.stop()
        if required:
            raise RuntimeError(_error) from None
        raise unittest.SkipTest(_error) from None
    atexit.register(c.stop)
    subprocess.Popen(
        ["bash", "-c", f'while kill -0 {os.getpid()} 2>/dev/null; do sleep 1; done; bash "{SCRIPT}" stop'],
        env=c.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    _shared = c
    return c
