"""ClickHouse's HTTP interface over treq (doc/clickhouse.md, "Transport").

One persistent connection pool; every statement in the POST body (never in
the URL); X-ClickHouse-User/X-ClickHouse-Key; gzip bodies; a timeout on every
request; errors parsed by ``^Code: (\\d+)[.,]`` (old and modern servers)."""

import re
from urllib.parse import urlencode

import treq
from treq.client import HTTPClient
from twisted.internet import defer, error as ierror
from twisted.internet.interfaces import IReactorThreads
from twisted.logger import Logger
from twisted.web import client as wclient

from ...zlibcodec import gzip_compress
from .nodes import NodeSet

__all__ = ["ClickHouseError", "TransportError", "Client", "parse_error", "TRANSIENT_CODES", "is_transient",
           "is_node_failure"]

log = Logger()

_CODE_RE = re.compile(rb"^\s*Code:\s*(\d+)[.,]")

# connection, timeout, authentication, permission and overload errors: retried
# without limit (the original's "critical" list plus modern codes)
TRANSIENT_CODES = frozenset([
    3, 74, 75, 76, 77, 87, 88, 95, 96, 159, 160, 164, 172, 173, 192, 193, 194, 195, 196, 197, 198,
    201, 202, 203, 204, 209, 210, 236, 241, 242, 243, 252, 274, 275, 290, 298, 299, 301, 303, 319, 335,
    373, 394, 425, 439, 497, 516, 999, 1000, 1001, 1002,
])


class ClickHouseError(Exception):
    """ClickHouse answered with an error."""

    def __init__(self, code, message, status=None):
        super().__init__(f"Code: {code}: {message}" if code is not None else f"HTTP {status}: {message}")
        self.code = code
        self.message = message
        self.status = status


class TransportError(Exception):
    """No answer: connection refused or lost, TLS failure, timeout."""


def is_node_failure(err):
    """Did the node fail (so another node may do better), rather than the statement?"""
    if isinstance(err, TransportError):
        return True
    if isinstance(err, ClickHouseError):
        if err.code is None:
            return err.status is None or err.status >= 500
        # a statement that ran out of time (159) says nothing of the node
        return err.code in TRANSIENT_CODES and err.code != 159
    return False


def is_transient(err):
    if isinstance(err, TransportError):
        return True
    if isinstance(err, ClickHouseError):
        return err.code is None or err.code in TRANSIENT_CODES
    return True


def parse_error(status, body, code_header=None):
    """A ClickHouseError from a non-200 answer."""
    code = None
    if code_header:
        try:
            code = int(code_header)
        except ValueError:
            code = None
    m = _CODE_RE.match(body or b"")
    if code is None and m:
        code = int(m.group(1))
    text = (body or b"").decode("utf-8", "replace").strip()
    if m:
        text = text[m.end():].strip()
    text = text.replace("e.displayText() = ", "").replace(", e.what() = DB::Exception", "")
    if text.startswith("DB::Exception: "):
        text = text[len("DB::Exception: "):]
    first = text.split("\n", 1)[0][:500]
    return ClickHouseError(code, first or f"HTTP {status}", status)


_RETRY_ONCE = (wclient.ResponseNeverReceived, wclient.RequestTransmissionFailed)


class _QuietFactory(wclient._HTTP11ClientFactory):
    noisy = False   # no "Starting factory" log line per new connection


class _QuietPool(wclient.HTTPConnectionPool):
    _factory = _QuietFactory


class Client:
    """Queries and inserts; at most ``max_parallel_queries`` requests at once.

    That bound is enforced here, once, for every request (inserts, DDL,
    reads): the insert pipeline cuts an INSERT only when :meth:`free_slots`
    says one would start at once, and hears of slots freed by other queries
    through :meth:`on_slot_free` (doc/clickhouse.md, "Batching")."""

    def __init__(self, reactor, settings, http=None, compress_in_thread_over=256 * 1024):
        self.reactor = reactor
        self.settings = settings
        self._pool = None
        if http is None:
            pool = _QuietPool(reactor, persistent=True)
            pool.maxPersistentPerHost = settings.max_parallel_queries + 2
            # ClickHouse drops idle keep-alive connections after 10 s by default: drop
            # ours first (a connection closed under us is retried once at once)
            pool.cachedConnectionTimeout = 5
            pool.retryAutomatically = False
            self._pool = pool
            agent = wclient.Agent(reactor, connectTimeout=settings.query_timeout, pool=pool)
            http = HTTPClient(agent)
        self._http = http
        self._sem = defer.DeferredSemaphore(settings.max_parallel_queries)
        self._slot_hooks = []
        self._threads = compress_in_thread_over if IReactorThreads.providedBy(reactor) else None
        self._headers = {
            b"X-ClickHouse-User": [settings.user.encode("utf-8")],
            b"X-ClickHouse-Key": [settings.password.encode("utf-8")],
            b"Content-Type": [b"text/plain; charset=utf-8"],
        }
        self._gz_headers = dict(self._headers)
        self._gz_headers[b"Content-Encoding"] = [b"gzip"]
        self.async_insert_known = False
        self.insert_params = {}        # the layout's (cluster: insert_distributed_sync, insert_quorum)
        self.nodes = NodeSet(settings.urls or (settings.url,), reactor)

    # -- requests --------------------------------------------------------------

    def query(self, sql, timeout=None, select=False, node=None, params=None):
        """Run one statement; fires with the answer's body (bytes).

        ``node``: one of ``self.nodes.nodes`` to run it on that node only
        (per-node DDL), else the current healthy node, failing over.
        ``params``: settings for this query (URL parameters)."""
        if select:
            params = dict(params or {}, wait_end_of_query="1")
        d = self._sem.run(self._request, sql.encode("utf-8"), params, timeout or self.settings.query_timeout,
                          node)
        d.addBoth(self._slot_freed)
        return d

    def free_slots(self):
        """Requests that may start now without waiting for another to end."""
        return self._sem.tokens

    def on_slot_free(self, hook):
        """Call ``hook()`` whenever a query (not an INSERT: its caller knows) ends."""
        self._slot_hooks.append(hook)

    def _slot_freed(self, result):
        for hook in self._slot_hooks:
            hook()
        return result

    def insert(self, body, timeout=None):
        """POST one INSERT body (statement line + TSV rows, bytes).

        Bounded by ``insert_timeout``, not ``query_timeout``: an INSERT given up on may still
        succeed, and its retry then stores the rows twice (collapsed only at merge time)."""
        params = {"input_format_allow_errors_num": "0", "input_format_allow_errors_ratio": "0",
                  **self.insert_params}
        if self.async_insert_known:
            params["async_insert"] = "0"
        return self._sem.run(self._request, body, params, timeout or self.settings.insert_timeout)

    @defer.inlineCallbacks
    def _request(self, body, params, timeout, only=None):
        query = "?" + urlencode(params) if params else ""
        headers = self._headers
        if self.settings.compression:
            body = yield self._compress(body)
            headers = self._gz_headers
        nodes = self.nodes
        last = None
        for node in ([only] if only is not None else nodes.candidates()):
            try:
                answer = yield self._request_node(node.url + "/" + query, body, headers, timeout)
            except Exception as e:
                if not is_node_failure(e):
                    nodes.succeeded(node)    # the node answered: the statement is at fault
                    raise
                nodes.failed(node, e)
                if len(nodes.nodes) > 1:
                    log.warn("ClickHouse node {url} failed ({error}); trying the next",
                             url=node.url, error=str(e))
                last = e
                continue
            nodes.succeeded(node)
            return answer
        raise last

    @defer.inlineCallbacks
    def _request_node(self, url, body, headers, timeout):
        for attempt in (0, 1):
            timed_out = []
            try:
                status, answer, code_header = yield self._post(url, body, headers, timeout, timed_out)
                break
            except Exception as e:
                if timed_out:
                    raise TransportError(f"no answer within {timeout:g} s") from None
                if isinstance(e, _RETRY_ONCE):
                    # a pooled connection the server had just closed: one fresh try
                    if attempt == 1:
                        raise TransportError(f"no answer: {_reason(e)}") from None
                    continue
                if isinstance(e, (ierror.ConnectError, ierror.ConnectionLost, ierror.ConnectionDone,
                                  wclient.ResponseFailed, ierror.DNSLookupError, ierror.TimeoutError,
                                  defer.CancelledError, defer.TimeoutError, OSError)) \
                        or type(e).__module__.startswith(("OpenSSL", "twisted", "service_identity", "treq")):
                    raise TransportError(f"connection failed: {_reason(e)}") from None
                raise
        if status != 200:
            raise parse_error(status, answer, code_header)
        return answer

    def _post(self, url, body, headers, timeout, timed_out):
        d = self._http.post(url, data=body, headers=headers)

        def got(response):
            code_header = response.headers.getRawHeaders(b"X-ClickHouse-Exception-Code", [None])[0]
            return treq.content(response).addCallback(lambda content: (response.code, content, code_header))
        d.addCallback(got)

        def expire():
            timed_out.append(True)
            d.cancel()
        call = self.reactor.callLater(timeout, expire)

        def done(result):
            if call.active():
                call.cancel()
            return result
        d.addBoth(done)
        return d

    def _compress(self, body):
        if self._threads is not None and len(body) > self._threads:
            from twisted.internet.threads import deferToThreadPool
            return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), gzip_compress, body, 1)
        return defer.succeed(gzip_compress(body, 1))

    def close(self):
        if self._pool is not None:
            return self._pool.closeCachedConnections()
        return defer.succeed(None)


def _reason(e):
    reasons = getattr(e, "reasons", None)
    if reasons:
        return "; ".join(_reason(r.value) if hasattr(r, "value") else str(r) for r in reasons)
    text = str(e) or type(e).__name__
    return text[:300]
