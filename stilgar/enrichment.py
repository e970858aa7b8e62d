"""The resources of enrichment (doc/enrichment.md): the operator's GeoIP
database files, and the enrichers of each write key.

* :class:`GeoDatabase` is one ``.mmdb`` file, memory-mapped, reopened when it
  is replaced (checked every ``check_interval`` seconds, or on
  :meth:`GeoDatabase.check` with ``force``, which SIGHUP calls); the check and
  the opening run in a thread, the swap on the reactor thread.
* :class:`Enrichment` holds a :class:`~stilgar.events.enrich.Enricher` per
  write key and the databases they share.
"""

import os

import maxminddb
from twisted.internet import defer, threads
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from .events.enrich import Enricher

__all__ = ["GeoDatabase", "GeoDatabaseError", "open_mmdb", "Enrichment"]

log = Logger(namespace="stilgar.enrich")

# the memory-mapped C reader when the extension is built, else the pure-Python mmap one
_MMDB_MODE = maxminddb.MODE_MMAP_EXT if getattr(maxminddb, "extension", None) else maxminddb.MODE_MMAP


class GeoDatabaseError(Exception):
    """The database file cannot be opened (message names the file and why)."""


def _identity(st):
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def open_mmdb(path):
    """(identity, reader) for ``path``; raises GeoDatabaseError."""
    try:
        st = os.stat(path)
        reader = maxminddb.open_database(path, _MMDB_MODE)
    except FileNotFoundError:
        raise GeoDatabaseError(f"{path}: no such file") from None
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as e:
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise GeoDatabaseError(f"{path}: not a readable MaxMind database ({reason})") from None
    return _identity(st), reader


def _in_thread(reactor):
    def run(f, *args):
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)
    return run


class GeoDatabase:
    """One ``.mmdb`` file. States: ``open`` (a reader serves lookups),
    ``missing`` (the file disappeared: no location until it is back; the old
    reader is closed, as MaxMind's licence wants outdated data deleted), and
    ``broken`` (the file was replaced by one that cannot be read: the previous
    reader, if any, goes on serving)."""

    def __init__(self, path, reactor, check_interval=5.0, in_thread=None, opener=open_mmdb):
        self.path = path
        self.reactor = reactor
        self.check_interval = check_interval
        self._in_thread = in_thread or _in_thread(reactor)
        self._opener = opener
        self._reader = None
        self._identity = None
        self.state = "closed"
        self._loop = None
        self._checking = None
        self.generation = 0  # counts reader changes: caches of lookups compare it

    def open(self):
        """Open the file now (at start, before the reactor runs); raises GeoDatabaseError."""
        self._identity, self._reader = self._opener(self.path)
        self.state = "open"
        self.generation += 1

    def lookup(self, addr):
        """The record for an ``ipaddress`` address, or None."""
        reader = self._reader
        if reader is None:
            return None
        try:
            return reader.get(addr)
        except (ValueError, maxminddb.InvalidDatabaseError) as e:
            log.error("enrich.geoip: lookup in {path} failed: {error}", path=self.path, error=e)
            return None

    # -- reloading ---------------------------------------------------------

    def start(self):
        if self._loop is None:
            self._loop = LoopingCall(self.check)
            self._loop.clock = self.reactor
            self._loop.start(self.check_interval, now=False).addErrback(
                lambda f: log.failure("enrich.geoip: the reload check stopped", f))

    def stop(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()
        self.state = "closed"

    def check(self, force=False):
        """Reopen the file if it was replaced (or ``force``); a Deferred fired when done."""
        if self._checking is not None:
            return self._checking
        d = self._in_thread(self._probe, force, self._identity)
        d.addCallback(self._swap)
        d.addErrback(lambda f: log.failure("enrich.geoip: checking {path} failed", f, path=self.path))

        def done(_):
            self._checking = None
        d.addBoth(done)
        if not d.called:
            self._checking = d
        return d

    def _probe(self, force, identity):
        # in a thread: stat, and open when the file changed
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return ("missing", None, None, f"{self.path}: no such file")
        except OSError as e:
            return ("missing", None, None, f"{self.path}: {e.strerror or e}")
        if not force and _identity(st) == identity:
            return ("same", None, None, None)
        try:
            new_identity, reader = self._opener(self.path)
        except GeoDatabaseError as e:
            return ("broken", _identity(st), None, str(e))
        return ("open", new_identity, reader, None)

    def _swap(self, probe):
        # on the reactor thread: lookups see either the old reader or the new one
        outcome, identity, reader, error = probe
        if self.state == "closed":          # stopped meanwhile
            if reader is not None:
                reader.close()
            return
        if outcome == "same":
            return
        if outcome == "missing":
            if self.state != "missing":
                log.error("enrich.geoip.database {error}: events get no location until it is back",
                          error=error)
            old, self._reader, self._identity = self._reader, None, None
            self.state = "missing"
        elif outcome == "broken":
            if identity != self._identity:
                kept = "the previous database goes on serving" if self._reader is not None \
                    else "events get no location"
                log.error("enrich.geoip.database {error}: {kept}", error=error, kept=kept)
            self._identity = identity
            self.state = "broken" if self._reader is None else "open"
            return
        else:
            old, self._reader, self._identity = self._reader, reader, identity
            was = self.state
            self.state = "open"
            meta = reader.metadata()
            log.info("enrich.geoip.database {path} {how}: {kind}, built {built}", path=self.path,
                     how="reloaded" if was == "open" else "is back",
                     kind=getattr(meta, "database_type", "?"), built=getattr(meta, "build_epoch", "?"))
        self.generation += 1
        if old is not None:
            old.close()



class Enrichment:
    """The enrichers of every write key, and the GeoIP databases they share."""

    def __init__(self, by_key, databases):
        self._by_key = by_key
        self.databases = databases

    @classmethod
    def from_config(cls, enrich_by_key, reactor, on_bot=None, in_thread=None, open_now=True):
        """Build from ``Config.enrich_by_write_key()``; opens each database
        (GeoDatabaseError when one cannot be read)."""
        databases, enrichers, by_key = {}, {}, {}
        for key, settings in enrich_by_key.items():
            if settings is None or not settings.enabled:
                continue
            if settings not in enrichers:
                geo = None
                if settings.geoip is not None:
                    path = settings.geoip.database
                    geo = databases.get(path)
                    if geo is None:
                        geo = databases[path] = GeoDatabase(path, reactor, settings.geoip.check_interval,
                                                            in_thread=in_thread)
                        if open_now:
                            geo.open()
                    geo.check_interval = min(geo.check_interval, settings.geoip.check_interval)
                enrichers[settings] = Enricher(settings, geo, on_bot)
            by_key[key] = enrichers[settings]
        return cls(by_key, databases)

    def for_key(self, write_key):
        """The :class:`Enricher` for a write key's events, or None."""
        return self._by_key.get(write_key)

    def enrichers(self):
        return list({id(e): e for e in self._by_key.values()}.values())

    def start(self):
        for db in self.databases.values():
            db.start()

    def stop(self):
        for db in self.databases.values():
            db.stop()

    def reload(self):
        """Reopen every database now (SIGHUP)."""
        return defer.DeferredList([db.check(force=True) for db in self.databases.values()])
