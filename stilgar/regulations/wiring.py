"""Assembling regulations, the delivery filter and retention for one worker (used by stilgar.service)."""

import attr
from twisted.logger import Logger

from .erasure import IErasable
import os

from .journal import DIRECTORY, Journal
from .retention import RetentionService
from .service import RegulationService
from .suppression import DeliveryFilter

__all__ = ["Privacy", "build_privacy", "erasables_of"]

log = Logger(namespace="stilgar.regulations")


def erasables_of(destinations):
    """``{name: IErasable}`` of the destinations that store data (an adapter each)."""
    from . import clickhouse  # noqa: F401  (registers the ClickHouse adapter)
    found = {}
    for destination in destinations:
        erasable = IErasable(destination, None)
        if erasable is not None:
            found[destination.name] = erasable
    return found


@attr.s(frozen=True)
class Privacy:
    regulations = attr.ib()        # RegulationService (an IRegulations)
    delivery_filter = attr.ib()    # for the forwarder
    services = attr.ib()           # to run under the collector's MultiService


def build_privacy(config, destinations, reactor, worker=0, in_thread=None):
    """The privacy pieces for a loaded configuration and built destinations.

    The journal is read here (blocking, at start-up) so that suppression holds
    for the spool's replay before the forwarder starts."""
    erasables = erasables_of(destinations)
    secret = config.privacy.subject_secret
    journal = Journal(os.path.join(config.spool.path, DIRECTORY), reactor, fsync=config.spool.fsync, in_thread=in_thread)
    regulations = RegulationService(
        journal, secret, erasables.values(), reactor, owner=f"worker-{worker}",
        sync_interval=config.privacy.regulations_sync_interval, settle=config.privacy.regulations_settle)
    if secret is None and regulations.ledger.regulations:
        log.critical("the regulation journal holds regulations but privacy.regulations_secret (and"
                     " hash_secret) is not set: suppressed subjects are NOT filtered")
    for d in config.destinations:
        if d.retention and d.name not in erasables:
            log.warn("destination {name}: retention has no effect (it stores nothing Stilgar can drop)",
                     name=d.name)
    rules = {d.name: d.consent for d in config.destinations if d.consent}
    delivery_filter = DeliveryFilter(regulations.suppressed, secret, rules)
    services = [regulations]
    targets = [(erasables[d.name], d.retention) for d in config.destinations
               if d.retention and d.name in erasables]
    if targets and worker == 0:
        services.append(RetentionService(targets, reactor))
    return Privacy(regulations, delivery_filter, services)
