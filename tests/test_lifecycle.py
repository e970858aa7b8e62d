"""The service tree: sequential stop, the spool's one owner, one make_service, the announcing endpoint."""

import gc
import os
import signal

import attr
from twisted.application import service
from twisted.internet import defer, error
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial import unittest

from stilgar.lifecycle import ProcessService, SequentialMultiService, SpoolService
from stilgar.logs import ProcessLog
from stilgar.service import AnnouncingEndpoint, make_service
from stilgar.spool import Spool, SpoolLocked

from .helpers import make_config


class Recorder(service.Service):
    """Records its start and stop in ``journal``; its stop waits for ``release``."""

    def __init__(self, name, journal, hold=False):
        self.setName(name)
        self.journal = journal
        self.hold = hold
        self.release = None

    def startService(self):
        super().startService()
        self.journal.append(("start", self.name))

    def stopService(self):
        super().stopService()
        self.journal.append(("stop", self.name))
        if self.hold:
            self.release = defer.Deferred()
            return self.release
        return None


class Failing(Recorder):
    def stopService(self):
        super().stopService()
        raise RuntimeError("cannot stop")


class SequentialMultiServiceTests(unittest.TestCase):
    def tree(self, *children):
        top = SequentialMultiService()
        for child in children:
            child.setServiceParent(top)
        return top

    def test_starts_in_order_stops_in_reverse_each_after_the_previous(self):
        journal = []
        a, b, c = (Recorder(name, journal, hold=True) for name in "abc")
        top = self.tree(a, b, c)
        top.startService()
        self.assertEqual(journal, [("start", "a"), ("start", "b"), ("start", "c")])
        del journal[:]
        d = top.stopService()
        self.assertEqual(journal, [("stop", "c")])     # b waits for c's Deferred
        self.assertNoResult(d)
        c.release.callback(None)
        self.assertEqual(journal, [("stop", "c"), ("stop", "b")])
        b.release.callback(None)
        self.assertEqual(journal, [("stop", "c"), ("stop", "b"), ("stop", "a")])
        self.assertNoResult(d)
        a.release.callback(None)
        self.successResultOf(d)
        self.assertFalse(top.running)

    def test_a_failed_stop_is_logged_and_the_rest_still_stop(self):
        journal = []
        top = self.tree(Recorder("a", journal), Failing("b", journal), Recorder("c", journal, hold=True))
        top.startService()
        del journal[:]
        d = top.stopService()
        top.getServiceNamed("c").release.errback(Failure(ValueError("late")))
        self.successResultOf(d)
        self.assertEqual(journal, [("stop", "c"), ("stop", "b"), ("stop", "a")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_a_child_already_stopped_is_not_stopped_again(self):
        journal = []
        a, b = Recorder("a", journal), Recorder("b", journal)
        top = self.tree(a, b)
        top.startService()
        b.stopService()          # e.g. by its own shutdown trigger
        del journal[:]
        self.successResultOf(top.stopService())
        self.assertEqual(journal, [("stop", "a")])


@attr.s
class FakeSpool:
    calls = attr.ib(factory=list)
    closing = attr.ib(default=None)

    def open(self):
        self.calls.append("open")

    def start(self):
        self.calls.append("start")

    def close(self):
        self.calls.append("close")
        self.closing = defer.Deferred()
        return self.closing


class SpoolServiceTests(unittest.TestCase):
    def test_opened_when_built_started_with_the_service_closed_by_its_stop(self):
        spool = FakeSpool()
        owner = SpoolService.opened(spool)
        self.assertEqual(spool.calls, ["open"])
        owner.startService()
        self.assertEqual(spool.calls, ["open", "start"])
        d = owner.stopService()
        self.assertEqual(spool.calls, ["open", "start", "close"])
        self.assertNoResult(d)                   # the stop is the close: written, lock released
        spool.closing.callback(None)
        self.successResultOf(d)


class FakePort:
    def __init__(self):
        self.stopped = 0

    def getHost(self):
        from twisted.internet.address import IPv4Address
        return IPv4Address("TCP", "127.0.0.1", 8080)

    def stopListening(self):
        self.stopped += 1
        return defer.succeed(None)


@attr.s
class FakeEndpoint:
    result = attr.ib(factory=FakePort)
    factories = attr.ib(factory=list)

    def listen(self, factory):
        self.factories.append(factory)
        if isinstance(self.result, Exception):
            return defer.fail(self.result)
        return defer.succeed(self.result)


class FakeReactor(Clock):
    def __init__(self):
        super().__init__()
        self.triggers = []
        self.when_running = []

    def addSystemEventTrigger(self, phase, event, f, *args):
        self.triggers.append((phase, event, f, args))

    def callWhenRunning(self, f, *args):
        self.when_running.append((f, args))

    def stop(self):
        pass


class AnnouncingEndpointTests(unittest.TestCase):
    def test_announces_the_port(self):
        announced = []
        inner = FakeEndpoint()
        endpoint = AnnouncingEndpoint(inner, "tcp:8080", FakeReactor(), announced.append)
        port = self.successResultOf(endpoint.listen(Factory()))
        self.assertIs(port, inner.result)
        self.assertEqual(announced, [port])

    def test_a_failed_listen_is_logged_once_then_stops_and_exits_1(self):
        from twisted.application.internet import StreamServerEndpointService
        from twisted.logger import globalLogPublisher
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        reactor = FakeReactor()
        endpoint = AnnouncingEndpoint(FakeEndpoint(error.CannotListenError("", 80, "busy")), "tcp:80",
                                      reactor, lambda port: self.fail("announced"))
        web = StreamServerEndpointService(endpoint, Factory())
        web.startService()
        self.assertEqual([(phase, event, args) for phase, event, f, args in reactor.triggers],
                         [("after", "shutdown", (1,))])
        self.assertIs(reactor.triggers[0][2], os._exit)
        self.assertEqual(reactor.when_running, [(reactor.stop, ())])
        self.assertEqual(self.flushLoggedErrors(), [])     # not a second time, with a traceback
        critical = [e for e in events if "cannot listen" in (e.get("log_format") or "")]
        self.assertEqual(len(critical), 1)
        self.successResultOf(web.stopService())            # no port to close


class MakeServiceTests(unittest.TestCase):
    def setUp(self):
        self.path = os.path.abspath(self.mktemp())
        sigusr1 = signal.getsignal(signal.SIGUSR1)
        self.addCleanup(signal.signal, signal.SIGUSR1, sigusr1)
        self.addCleanup(gc.unfreeze)

    def build(self, endpoint):
        from twisted.internet import reactor
        config = make_config(spool={"path": self.path, "fsync": False})
        return make_service(config, reactor, endpoint, worker=3,
                            process_log=ProcessLog.from_config(config.logging, reactor, stream=open(os.devnull, "w")))

    def test_children_in_start_order_web_on_the_given_endpoint(self):
        endpoint = FakeEndpoint()
        top = self.build(endpoint)
        self.addCleanup(top.spool.close)
        self.assertIsInstance(top, ProcessService)
        names = [child.name for child in top]
        self.assertEqual((names[0], names[1], names[-1]), ("spool", "forwarder", "web"))
        self.assertIs(top.web.endpoint, endpoint)
        self.assertEqual(top.spool.path, os.path.join(self.path, "worker-3"))
        # opened when built (before twistd forks): its directory is locked already
        self.assertRaises(SpoolLocked, Spool(top.spool.path, reactor=Clock()).open)

    @defer.inlineCallbacks
    def test_stop_closes_the_listener_first_and_the_spool_last(self):
        endpoint = FakeEndpoint()
        top = self.build(endpoint)
        order = []
        endpoint.result.stopListening = lambda: order.append("web") or defer.succeed(None)
        forwarder_stop = top.forwarder.stopService

        def stop_forwarder():
            order.append("forwarder")
            self.assertTrue(top.forwarder.stopping)     # 503 on open connections from the start
            return forwarder_stop()
        top.forwarder.stopService = stop_forwarder
        spool_close = top.spool.close
        top.spool.close = lambda: order.append("spool") or spool_close()
        top.startService()
        self.assertEqual(len(endpoint.factories), 1)
        yield top.stopService()
        self.assertEqual(order, ["web", "forwarder", "spool"])
        from twisted.internet import reactor
        again = Spool(top.spool.path, reactor=reactor)
        again.open()                                    # the lock was released
        yield again.close()


    @defer.inlineCallbacks
    def test_collection_thresholds_while_running(self):
        from stilgar.service import GC_THRESHOLDS
        before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *before)
        top = self.build(FakeEndpoint())
        top.startService()
        self.assertEqual(gc.get_threshold(), GC_THRESHOLDS)
        self.assertGreater(GC_THRESHOLDS[0], before[0])
        yield top.stopService()
        self.assertEqual(gc.get_threshold(), before)

class ProcessServiceTests(unittest.TestCase):
    def test_offers_its_observer_to_the_application_once(self):
        from twisted.logger import ILogObserver
        observer, other = (lambda event: None), (lambda event: None)
        application = service.Application("stilgar")
        ProcessService(ProcessLog(observer), Clock()).setServiceParent(application)
        self.assertIs(application.getComponent(ILogObserver), observer)
        ProcessService(ProcessLog(other), Clock()).setServiceParent(application)
        self.assertIs(application.getComponent(ILogObserver), observer)   # the first one stays

    def test_stop_tells_systemd_stopping_before_any_child_stops(self):
        import shutil
        import socket
        import tempfile
        directory = tempfile.mkdtemp(prefix="stl-")
        self.addCleanup(shutil.rmtree, directory, True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(os.path.join(directory, "notify"))
        listener.settimeout(0)
        self.addCleanup(listener.close)
        self.patch(os, "environ", {**os.environ, "NOTIFY_SOCKET": os.path.join(directory, "notify")})
        journal = []
        top = ProcessService(ProcessLog(lambda event: None), Clock())
        child = Recorder("web", journal, hold=True)
        child.setServiceParent(top)
        top.startService()
        d = top.stopService()
        self.assertEqual(listener.recv(100), b"STOPPING=1")
        self.assertEqual(journal[-1], ("stop", "web"))
        child.release.callback(None)
        self.successResultOf(d)
