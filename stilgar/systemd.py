"""systemd's readiness protocol (sd_notify), in a few lines of stdlib.

With ``Type=notify`` systemd waits for ``READY=1`` on the datagram socket named by
``$NOTIFY_SOCKET``; Stilgar sends it once the port is bound and the spool is open
(contrib/systemd/stilgar.service, doc/operations.md). Outside systemd the
variable is unset and :func:`notify` does nothing.
"""

import os
import socket

from twisted.logger import Logger

__all__ = ["notify", "tell_systemd"]

log = Logger(namespace="stilgar")


def notify(state, environ=None):
    """Send ``state`` (``"READY=1"``, ``"STOPPING=1"``, ``"STATUS=..."`` lines) to systemd.

    Returns True when sent, False when not under systemd; an unreachable socket
    raises OSError (the caller logs it: readiness must not crash the collector)."""
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):            # an abstract socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.setblocking(False)            # one local datagram: never wait on the reactor
        sock.connect(address)
        sock.sendall(state.encode("utf-8"))
    return True


def tell_systemd(state):
    """:func:`notify` ``state``; a failure is logged, never raised."""
    try:
        notify(state)
    except OSError as e:
        log.warn("cannot notify systemd ({state}): {error}", state=state.split("\n", 1)[0], error=e)
