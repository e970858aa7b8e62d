"""Filing, executing and sharing regulations (doc/privacy.md).

:class:`RegulationService` is the :class:`~.api.IRegulations` the web layer
calls. Filing a regulation writes it to the journal (fsynced) before the
answer; its suppression applies at once on this worker, reaches the other
workers through the shared journal and the other instances through the
``rudder_regulations`` table of every ClickHouse destination, both read every
``sync_interval`` seconds (a ``TimerService`` child).

A deletion (SUPPRESS_WITH_DELETE, DELETE_ONLY) runs on the worker that filed
it, in rounds: flush the destinations, count the subject's rows per table,
delete them (mutations), wait for the mutations, then wait ``settle`` seconds
(long enough for every instance to learn the suppression and store what it
held) and count again; it ends when a count after a settle finds nothing.
Each step is idempotent: after a restart or a ``kill -9`` the regulation
(still RUNNING in the journal) starts over from its first round.
"""

import datetime

from twisted.application import internet, service
from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from .api import IRegulations, RegulationsUnavailable
from .erasure import ErasureFailed
from .model import (DELETING, FAILED, FINISHED, RUNNING, Ledger, actions_of, new_regulation_id,
                    parse_request, subject_key)

__all__ = ["RegulationService", "MAX_ROUNDS"]

log = Logger(namespace="stilgar.regulations")

MAX_ROUNDS = 5      # settle-and-count rounds before rows that keep arriving fail the regulation


def iso(seconds):
    if seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class _Stopped(Exception):
    """The service is stopping: a running regulation resumes at the next start."""


@implementer(IRegulations)
class RegulationService(service.MultiService):
    """Regulations of one worker: the ledger, the executor and the periodic sync."""

    name = "regulations"

    def __init__(self, journal, secret, erasables, reactor, *, owner="worker-0", sync_interval=10.0,
                 settle=None, poll_interval=1.0):
        super().__init__()
        self.journal = journal
        self.secret = secret
        self.erasables = list(erasables)
        self.reactor = reactor
        self.owner = owner
        self.sync_interval = sync_interval
        self.poll_interval = poll_interval
        if settle is None:
            # every instance learns a suppression within two syncs, then stores what it held
            settle = 2 * sync_interval + max([e.settle_delay() for e in self.erasables] or [0]) + 5
        self.settle = settle
        self.ledger = Ledger()
        for record in journal.open():
            self.ledger.apply(record)
        self._running = {}
        self._publishing = set()
        self._pending = set()         # syncs and publications in flight, waited for at stop
        self._sleeps = set()
        self._stopping = False
        timer = internet.TimerService(sync_interval, self._sync_safely)
        timer.clock = reactor
        timer.setServiceParent(self)

    @property
    def unavailable(self):
        if self.secret is None:
            return "regulations need privacy.regulations_secret (or privacy.hash_secret) in the configuration"
        return None

    def suppressed(self):
        """The keys of the suppressed subjects (for the delivery filter)."""
        return self.ledger.suppressed()

    # -- IRegulations ------------------------------------------------------------

    def file(self, document, admin):
        kind, subject_type, ids = parse_request(document)
        d = self._file(kind, subject_type, ids, admin)

        def not_durable(failure):
            failure.trap(OSError)
            log.error("regulation journal cannot be written: {error}", error=failure.getErrorMessage())
            raise RegulationsUnavailable(failure.getErrorMessage())
        return d.addErrback(not_durable)

    @defer.inlineCallbacks
    def _file(self, kind, subject_type, ids, admin):
        now = self.reactor.seconds()
        rid = new_regulation_id(now)
        record = {"k": "filed", "id": rid, "at": now, "admin": admin, "type": kind,
                  "subject_type": subject_type, "keys": [subject_key(self.secret, subject_type, i) for i in ids],
                  "owner": self.owner}
        if kind in DELETING:
            yield self.journal.save_subjects(rid, ids)
        yield self._record(record)
        if kind not in DELETING:
            yield self._record({"k": "state", "id": rid, "status": FINISHED, "at": now})
        regulation = self.ledger.regulations[rid]
        log.info("regulation {id}: {kind} of {n} {subject_type} subjects filed by {admin}", id=rid, kind=kind,
                 n=len(ids), subject_type=subject_type, admin=admin or "-")
        self._publish_soon(regulation)
        if kind in DELETING:
            self._start(regulation, list(ids))
        return regulation.document(iso)

    @defer.inlineCallbacks
    def get(self, regulation_id):
        yield self._catch_up()
        regulation = self.ledger.regulations.get(regulation_id)
        return regulation.document(iso) if regulation is not None else None

    @defer.inlineCallbacks
    def newest_first(self):
        yield self._catch_up()
        return [r.document(iso) for r in self.ledger.newest_first()]

    # -- journal -----------------------------------------------------------------

    @defer.inlineCallbacks
    def _record(self, record):
        yield self.journal.append(record)
        self.ledger.apply(record)

    @defer.inlineCallbacks
    def _catch_up(self):
        """Fold what other workers appended to the shared journal."""
        for record in (yield self.journal.read_new()):
            self.ledger.apply(record)

    # -- service -----------------------------------------------------------------

    def startService(self):
        super().startService()
        running = {r.id for r in self.ledger.regulations.values() if r.status == RUNNING}
        for orphan in self.journal.pending_ids():
            if orphan not in running and orphan.startswith("reg-"):
                # saved just before a crash that lost its "filed" record: never acknowledged
                self.journal.drop_subjects(orphan).addErrback(lambda f: log.failure("dropping {f}", f))
        for regulation in self.ledger.regulations.values():
            if regulation.status == RUNNING and regulation.owner == self.owner:
                ids = self.journal.load_subjects(regulation.id)
                if ids is None:
                    d = self._record({"k": "state", "id": regulation.id, "status": FAILED,
                                      "at": self.reactor.seconds(),
                                      "reason": "its subject ids were lost (its regulations/pending file is missing)"})
                    d.addErrback(lambda f: log.failure("recording a regulation failed", f))
                    continue
                log.info("regulation {id}: resumed after a restart", id=regulation.id)
                self._start(regulation, ids)

    @defer.inlineCallbacks
    def stopService(self):
        self._stopping = True
        for d in list(self._sleeps):
            d.cancel()
        yield super().stopService()
        waiting = list(self._running.values()) + list(self._pending)
        if waiting:
            yield defer.DeferredList(waiting, consumeErrors=True)
        self.journal.close()

    def _sleep(self, seconds):
        if self._stopping:
            return defer.fail(_Stopped())
        d = task.deferLater(self.reactor, seconds, lambda: None)
        self._sleeps.add(d)

        def done(result):
            self._sleeps.discard(d)
            if self._stopping:
                raise _Stopped()
            return result
        return d.addBoth(done)

    # -- sharing -------------------------------------------------------------------

    def _track(self, d):
        self._pending.add(d)

        def done(result):
            self._pending.discard(d)
            return result
        return d.addBoth(done)

    def _sync_safely(self):
        if self._stopping:
            return None
        d = self._track(self.sync())
        d.addErrback(lambda f: log.failure("regulations: sync failed (retried next period)", f))
        return d

    @defer.inlineCallbacks
    def sync(self):
        """Read the other workers' records and every destination's shared rows; publish ours."""
        yield self._catch_up()
        for erasable in self.erasables:
            if not erasable.ready():
                continue
            try:
                self.ledger.add_remote((yield erasable.fetch()))
            except Exception as e:
                log.warn("regulations: reading {table} of {destination} failed: {error}",
                         table="rudder_regulations", destination=erasable.name, error=str(e))
        for regulation in list(self.ledger.regulations.values()):
            if regulation.owner == self.owner:
                self._publish_soon(regulation)

    def _publish_soon(self, regulation):
        for erasable in self.erasables:
            for release in (False, True):
                done = regulation.released if release else regulation.published
                if erasable.name in done or (release and regulation.status == RUNNING):
                    continue
                action = actions_of(regulation.kind, regulation.id)[1 if release else 0]
                key = (regulation.id, erasable.name, release)
                if action is None or key in self._publishing or not erasable.ready() or self._stopping:
                    continue
                self._publishing.add(key)
                d = self._track(self._publish(regulation, erasable, action, release))
                d.addBoth(lambda r, key=key: self._publishing.discard(key))

    @defer.inlineCallbacks
    def _publish(self, regulation, erasable, action, release):
        at = int((regulation.finished_at if release else regulation.created_at) * 1000)
        rows = [(at, regulation.id, action, k, regulation.kind, regulation.subject_type, regulation.admin)
                for k in regulation.keys]
        try:
            yield erasable.publish(rows)
            yield self._record({"k": "published", "id": regulation.id, "dest": erasable.name, "release": release})
        except Exception as e:
            log.warn("regulation {id}: sharing it through {destination} failed ({error}); retried",
                     id=regulation.id, destination=erasable.name, error=str(e))

    # -- execution -------------------------------------------------------------------

    def _start(self, regulation, ids):
        if regulation.id in self._running:
            return
        d = self._execute(regulation, ids)
        self._running[regulation.id] = d
        d.addBoth(lambda _: self._running.pop(regulation.id, None))

    @defer.inlineCallbacks
    def _execute(self, regulation, ids):
        try:
            rounds = 0
            while True:
                found = yield self._erase_pass(regulation, ids, final=rounds > 0)
                if rounds > 0 and found == 0:
                    break
                if rounds >= MAX_ROUNDS:
                    raise ErasureFailed(f"rows of the subjects were still arriving after {MAX_ROUNDS} rounds"
                                        " (an instance that does not share the suppression?)")
                rounds += 1
                if self.erasables:
                    yield self._sleep(self.settle)
            status, reason = FINISHED, None
        except _Stopped:
            return
        except ErasureFailed as e:
            status, reason = FAILED, str(e)
        except Exception as e:   # a bug: recorded, so that it is not retried for ever
            log.failure("regulation {id}: execution failed", id=regulation.id)
            status, reason = FAILED, f"internal error: {e!r}"
        yield self._record({"k": "state", "id": regulation.id, "status": status, "reason": reason,
                            "at": self.reactor.seconds()})
        yield self.journal.drop_subjects(regulation.id)
        log.info("regulation {id}: {status}{why}", id=regulation.id, status=status,
                 why=f" ({reason})" if reason else "")
        self._publish_soon(regulation)

    @defer.inlineCallbacks
    def _erase_pass(self, regulation, ids, final):
        """Count and delete the subjects' rows on every destination; the rows found."""
        found = 0
        for erasable in self.erasables:
            yield self._retrying(regulation, erasable.flush)
            items = yield self._retrying(regulation, erasable.plan, regulation.subject_type, ids)
            counts = {}
            for item in items:
                n = yield self._retrying(regulation, erasable.count, item)
                counts[item.table] = counts.get(item.table, 0) + n
                if n:
                    yield self._retrying(regulation, erasable.delete, item)
            for table, n in counts.items():
                progress = regulation.tables.get((erasable.name, table))
                record = {"k": "table", "id": regulation.id, "dest": erasable.name, "table": table}
                if progress is None or progress.rows_before is None:
                    record["rows_before"] = n
                if final:
                    record["rows_after"] = n
                yield self._record(record)
            for item in items:
                while not (yield self._retrying(regulation, erasable.deleted, item)):
                    yield self._sleep(self.poll_interval)
            for table in counts:
                if not regulation.tables[(erasable.name, table)].mutation_done:
                    yield self._record({"k": "table", "id": regulation.id, "dest": erasable.name, "table": table,
                                        "done": True})
            found += sum(counts.values())
        return found

    @defer.inlineCallbacks
    def _retrying(self, regulation, f, *args):
        """``f(*args)`` until it works: transient trouble is retried with backoff, ErasureFailed is not."""
        delay = 1.0
        while True:
            if self._stopping:
                raise _Stopped()
            try:
                return (yield defer.maybeDeferred(f, *args))
            except (ErasureFailed, _Stopped):
                raise
            except Exception as e:
                if regulation.last_error != str(e):
                    regulation.last_error = str(e)
                    log.warn("regulation {id}: {error}; retrying", id=regulation.id, error=str(e))
                yield self._sleep(delay)
                delay = min(60.0, delay * 2)
