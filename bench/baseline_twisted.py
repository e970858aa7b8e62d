"""The framework's ceiling: a bare twisted.web resource answering ``OK`` to any POST.

    python bench/baseline_twisted.py PORT [INTERFACE]

Same reactor as twistd picks (epoll on Linux), same ``Site`` machinery, no
gate, no decoding, no JSON, no spool: what Stilgar's request rate is measured
against. Prints ``listening on`` once ready; stops on SIGTERM.
"""

import sys

from twisted.internet import reactor
from twisted.web import resource, server


class OK(resource.Resource):
    isLeaf = True

    def render_POST(self, request):
        request.content.read()
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"OK"

    render_GET = render_POST


def main():
    port = int(sys.argv[1])
    interface = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
    site = server.Site(OK())
    site.log = lambda request: None     # Stilgar writes no access log either
    reactor.listenTCP(port, site, backlog=1024, interface=interface)
    print(f"listening on {interface}:{port} ({reactor.__class__.__name__})", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
