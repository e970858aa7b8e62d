"""A real ClickHouse for the integration tests.

``clickhouse()`` returns the shared server: ``$STILGAR_TEST_CLICKHOUSE_URL``
(+ ``_USER``, ``_PASSWORD``) when set, else one started with
``scripts/clickhouse-server.sh`` on a free port with its own temporary
directory, once per test process, stopped at exit. ``own_server(tz=...)``
starts a separate server the test controls (stop/restart, time zone).
When no server can be installed or started, these raise SkipTest with the
reason. Blocking: call them from setUpClass or module level, never from a
reactor-driven test body.
"""

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import unittest
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "clickhouse-server.sh")
USER = "collector"
PASSWORD = "collector-test-pw"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One server started by the script (or an external one, ``owned`` False)."""

    def __init__(self, url, user, password, env=None, directory=None):
        self.url = url
        self.user = user
        self.password = password
        self.env = env
        self.directory = directory
        self.owned = env is not None

    def _script(self, action, timeout=300):
        return subprocess.run(["bash", SCRIPT, action], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def start(self):
        r = self._script("start")
        if r.returncode != 0:
            raise unittest.SkipTest(f"ClickHouse could not be started with {SCRIPT}: "
                                    f"{(r.stderr or r.stdout).strip()[-600:]}")

    def stop(self):
        if self.owned:
            self._script("stop", timeout=60)

    def cleanup(self):
        self.stop()
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def query(self, sql, data=None):
        """Blocking query (for test setup and checks outside the reactor)."""
        body = sql.encode("utf-8") if data is None else sql.encode("utf-8") + b"\n" + data
        req = urllib.request.Request(self.url + "/?wait_end_of_query=1", data=body, headers={
            "X-ClickHouse-User": self.user, "X-ClickHouse-Key": self.password})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.read().decode("utf-8")


def own_server(tz=None):
    """Start a new server with its own port and directory (stopped at exit)."""
    directory = tempfile.mkdtemp(prefix="stilgar-ch-")
    port = free_port()
    env = dict(os.environ, CH_DIR=directory, CH_HTTP_PORT=str(port), CH_USER=USER, CH_PASSWORD=PASSWORD)
    if tz:
        env["CH_TZ"] = tz
    server = Server(f"http://127.0.0.1:{port}", USER, PASSWORD, env=env, directory=directory)
    atexit.register(server.cleanup)
    # belt and braces: a watchdog stops the server once this process is gone,
    # even if atexit handlers never run (a crash, os._exit)
    subprocess.Popen(
        ["bash", "-c", f'while kill -0 {os.getpid()} 2>/dev/null; do sleep 1; done; '
                       f'bash "{SCRIPT}" stop; rm -rf "{directory}"'],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    server.start()
    return server


_shared = None
_shared_error = None


def clickhouse():
    """The shared server for this test process (SkipTest when unavailable)."""
    global _shared, _shared_error
    if _shared is not None:
        return _shared
    if _shared_error is not None:
        raise unittest.SkipTest(_shared_error)
    url = os.environ.get("STILGAR_TEST_CLICKHOUSE_URL")
    if url:
        _shared = Server(url.rstrip("/"), os.environ.get("STILGAR_TEST_CLICKHOUSE_USER", "default"),
                         os.environ.get("STILGAR_TEST_CLICKHOUSE_PASSWORD", ""))
        return _shared
    try:
        _shared = own_server()
    except unittest.SkipTest as e:
        _shared_error = str(e)
        raise
    return _shared
