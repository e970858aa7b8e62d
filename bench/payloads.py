"""SDK-shaped request pools for the load generator.

Three kinds of request, shaped like what the real SDKs put on the wire
(/work/shared/spec/reference-clients.md, sections 1 and 2):

``single``
    the browser SDK v3: one event per ``POST /v1/<type>`` (page, track, identify),
    plain JSON, ``Authorization``, ``AnonymousId`` and ``SentAt`` headers, an
    ``Origin``, and the full browser ``context`` (library, app, userAgent, page,
    screen, locale, timezone, campaign, session); about 1.3 KB.
``batch20``
    the Node SDK: ``POST /v1/batch`` of 20 events, gzip, sent as
    ``application/x-www-form-urlencoded`` as axios does, ``_metadata``,
    ``originalTimestamp`` and ``sentAt`` per event.
``batch100``
    the Python SDK: ``POST /v1/batch`` of 100 events, gzip, ``timestamp`` only,
    ``integrations: {"All": true}``, identify traits in ``context.traits``.
``track100``
    the Python SDK's batch of 100, track events only (the catch-up backlog of
    bench/run: one ``tracks`` row and one per-event row each).
``relay100``
    a server relaying browser events 100 at a time (gzip): each has its
    visitor's ``context.userAgent`` (``user_agents``: 1,200 real-looking ones
    under a Zipf law, 2 % bots) and ``context.ip`` (documentation ranges), what
    enrichment works on (bench/enrich_bench.py, doc/enrichment.md).

Every event has its own messageId, so that a run into ClickHouse can be
checked for loss by counting distinct ids. A pool is a file of raw HTTP/1.1
requests, each preceded by its length on a line of its own, read by
``bench/wrk/pool.lua``. Pools are cached by (kind, count, seed).

    python bench/payloads.py single 1000 /tmp/pool.bin     # build one by hand
"""

import base64
import gzip
import json
import os
import random
import sys
import time
import uuid

try:
    import orjson

    def _dumps(value):
        return orjson.dumps(value)
except ImportError:  # pragma: no cover - PyPy
    def _dumps(value):
        return json.dumps(value, separators=(",", ":")).encode()

WRITE_KEY = "bench-write-key"
ORIGIN = "https://shop.example.com"
HOST = "stilgar-bench"
AUTH = b"Basic " + base64.b64encode(WRITE_KEY.encode() + b":")
BATCH_SIZES = {"single": 1, "batch20": 20, "batch100": 100, "track100": 100, "relay100": 100}

TRACK_EVENTS = ["Product Viewed", "Product Added", "Checkout Started", "Order Completed", "Signed Up"]
PAGES = [("/", "Home"), ("/shoes", "Shoes"), ("/shoes/runner-3", "Runner 3"), ("/cart", "Cart"),
         ("/checkout", "Checkout"), ("/blog/how-to-choose", "How to choose running shoes")]
USER_AGENT = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/126.0.0.0 Safari/537.36")
LOCALES = ["en-US", "fr-FR", "de-DE", "en-GB"]


def user_agents(count=1200):
    """(human user agents, most popular first; bot user agents)."""
    out = []
    for major in range(131, 100, -1):
        for build in range(0, 40, 3):
            out.append(f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                       f"Chrome/{major}.0.{6700 - build}.{build} Safari/537.36")
            out.append(f"Mozilla/5.0 (iPhone; CPU iPhone OS {major - 113}_{build % 7} like Mac OS X) "
                       f"AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{major - 113}.{build % 7} "
                       f"Mobile/15E148 Safari/604.1")
            out.append(f"Mozilla/5.0 (Linux; Android {major - 117}; K) AppleWebKit/537.36 (KHTML, like Gecko) "
                       f"Chrome/{major}.0.{6700 - build}.{build} Mobile Safari/537.36")
            out.append(f"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_{build % 8}) AppleWebKit/605.1.15 "
                       f"(KHTML, like Gecko) Version/{major - 113}.{build % 5} Safari/605.1.15")
            out.append(f"Mozilla/5.0 (X11; Linux x86_64; rv:{major}.0) Gecko/20100101 Firefox/{major}.0")
    bots = ["Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; "
            "+http://www.bing.com/bingbot.htm) Chrome/131.0.0.0 Safari/537.36",
            "Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "HeadlessChrome/131.0.0.0 Safari/537.36"]
    return out[:count], bots


_HUMANS, _BOTS = user_agents()
_ZIPF = [1 / (i + 1) ** 1.1 for i in range(len(_HUMANS))]
VISITOR_NETWORKS = ("192.0.2.", "198.51.100.", "203.0.113.", "127.0.0.")


def _iso(t, micro=False):
    s = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
    if micro:
        return s + ".%06d+00:00" % int((t % 1) * 1e6)
    return s + ".%03dZ" % int((t % 1) * 1e3)


class _Gen:
    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.t0 = time.time() - 60

    def uuid(self):
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def user(self):
        n = self.rng.randrange(20000)
        return str(uuid.UUID(int=n * 7919 + 1, version=4)), f"user-{n}"

    def properties(self, name):
        r = self.rng
        if name.startswith("Product") or name == "Order Completed":
            return {"product_id": f"p-{r.randrange(5000)}", "sku": f"SKU-{r.randrange(10**6):06d}",
                    "category": r.choice(["Shoes", "Socks", "Shirts"]), "name": "Runner 3",
                    "brand": "Stilgar Sports", "price": round(r.uniform(5, 200), 2),
                    "quantity": r.randrange(1, 4), "currency": "EUR", "position": r.randrange(1, 30),
                    "in_stock": r.random() < 0.9}
        if name == "Checkout Started":
            return {"order_id": f"o-{r.randrange(10**7)}", "value": round(r.uniform(5, 500), 2),
                    "revenue": round(r.uniform(5, 400), 2), "currency": "EUR", "coupon": ""}
        return {"method": r.choice(["email", "google", "apple"]), "plan": "free"}

    # -- browser SDK v3 ----------------------------------------------------------

    def browser_event(self):
        r = self.rng
        t = self.t0 + r.random() * 60
        anon, uid = self.user()
        path, title = r.choice(PAGES)
        url = "https://shop.example.com" + path
        kind = r.choices(["page", "track", "identify"], [40, 55, 5])[0]
        context = {
            "app": {"name": "RudderLabs JavaScript SDK", "namespace": "com.rudderlabs.javascript",
                    "version": "3.34.1", "installType": "npm"},
            "library": {"name": "RudderLabs JavaScript SDK", "version": "3.34.1", "variant": "bundled"},
            "userAgent": USER_AGENT, "os": {"name": "", "version": ""}, "locale": r.choice(LOCALES),
            "screen": {"width": 1920, "height": 1080, "density": 2, "innerWidth": 1280, "innerHeight": 720},
            "timezone": "GMT+0100", "campaign": {},
            "page": {"path": path, "referrer": "$direct", "referring_domain": "", "search": "",
                     "title": title, "url": url, "tab_url": url, "initial_referrer": "$direct",
                     "initial_referring_domain": ""},
            "traits": {}, "sessionId": int(t * 1000) - 5000,
        }
        event = {"type": kind, "messageId": self.uuid(), "originalTimestamp": _iso(t),
                 "anonymousId": anon, "userId": "", "channel": "web", "integrations": {"All": True},
                 "context": context, "sentAt": _iso(t + 0.05)}
        if kind == "page":
            event.update(name=title, category="",
                         properties={"name": title, "category": "", "path": path, "url": url,
                                     "title": title, "referrer": "$direct", "search": "", "tab_url": url,
                                     "initial_referrer": "$direct", "initial_referring_domain": ""})
        elif kind == "track":
            name = r.choice(TRACK_EVENTS)
            event.update(event=name, properties=self.properties(name))
        else:
            event["userId"] = uid
            context["traits"] = {"email": f"{uid}@example.com", "plan": "free", "name": "Ada"}
        return event

    def visitor_agent(self):
        if self.rng.random() < 0.02:
            return self.rng.choice(_BOTS)
        return self.rng.choices(_HUMANS, _ZIPF)[0]

    def visitor_ip(self):
        return self.rng.choice(VISITOR_NETWORKS) + str(self.rng.randrange(1, 255))

    def relayed_event(self):
        e = self.browser_event()
        e["context"]["userAgent"] = self.visitor_agent()
        e["context"]["ip"] = self.visitor_ip()
        return e

    # -- server SDKs --------------------------------------------------------------

    def server_event(self, sdk, mix=(85, 10, 5)):
        """One event of a server SDK; ``mix``: the weights of track, identify and page."""
        r = self.rng
        t = self.t0 + r.random() * 60
        anon, uid = self.user()
        kind = r.choices(["track", "identify", "page"], mix)[0]
        library = ({"name": "analytics-python", "version": "2.1.9"} if sdk == "python"
                   else {"name": "analytics-node", "version": "3.0.13"})
        event = {"type": kind, "messageId": self.uuid(), "userId": uid, "anonymousId": anon,
                 "channel": "server", "context": {"library": library}}
        if sdk == "python":
            event.update(timestamp=_iso(t, micro=True), integrations={"All": True})
        else:
            event.update(originalTimestamp=_iso(t), sentAt=_iso(t + 1), _metadata={"nodeVersion": "20.11.0"})
        if kind == "track":
            name = r.choice(TRACK_EVENTS)
            event.update(event=name, properties=self.properties(name))
        elif kind == "identify":
            traits = {"email": f"{uid}@example.com", "plan": r.choice(["free", "pro"]),
                      "logins": r.randrange(100), "created_at": _iso(t - 86400 * 30)}
            event["context"]["traits"] = traits
            if sdk == "node":
                event["traits"] = traits
        else:
            path, title = r.choice(PAGES)
            event.update(name=title, category="", properties={"path": path, "title": title,
                                                              "url": "https://shop.example.com" + path})
        return event


def _request(path, headers, body):
    lines = [b"POST %s HTTP/1.1" % path.encode(), b"Host: " + HOST.encode()]
    lines += [k + b": " + v for k, v in headers]
    lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def requests(kind, count, seed=1):
    """Yield ``count`` raw HTTP requests of ``kind``."""
    g = _Gen(seed)
    for _ in range(count):
        if kind == "single":
            e = g.browser_event()
            headers = [(b"Content-Type", b"application/json;charset=UTF-8"), (b"Authorization", AUTH),
                       (b"AnonymousId", base64.b64encode(e["anonymousId"].encode())),
                       (b"SentAt", e["sentAt"].encode()), (b"Origin", ORIGIN.encode()),
                       (b"Accept", b"application/json"), (b"User-Agent", USER_AGENT.encode())]
            yield _request("/v1/" + e["type"], headers, _dumps(e))
        elif kind == "batch20":
            events = [g.server_event("node") for _ in range(20)]
            now = _iso(g.t0 + 61)
            body = gzip.compress(_dumps({"batch": events, "timestamp": now, "sentAt": now}), 6)
            headers = [(b"Content-Type", b"application/x-www-form-urlencoded"), (b"Authorization", AUTH),
                       (b"Content-Encoding", b"gzip"), (b"Accept", b"application/json, text/plain, */*"),
                       (b"user-agent", b"analytics-node/3.0.13")]
            yield _request("/v1/batch", headers, body)
        elif kind in ("batch100", "track100"):
            mix = (1, 0, 0) if kind == "track100" else (85, 10, 5)
            events = [g.server_event("python", mix) for _ in range(100)]
            body = gzip.compress(_dumps({"batch": events, "sentAt": _iso(g.t0 + 61, micro=True)}), 6)
            headers = [(b"Content-Type", b"application/json"), (b"Authorization", AUTH),
                       (b"Content-Encoding", b"gzip"), (b"Accept", b"*/*"),
                       (b"User-Agent", b"analytics-python/2.1.9")]
            yield _request("/v1/batch", headers, body)
        elif kind == "relay100":
            events = [g.relayed_event() for _ in range(100)]
            body = gzip.compress(_dumps({"batch": events, "sentAt": events[-1]["sentAt"]}), 6)
            headers = [(b"Content-Type", b"application/json"), (b"Authorization", AUTH),
                       (b"Content-Encoding", b"gzip"), (b"User-Agent", b"relay/1.0")]
            yield _request("/v1/batch", headers, body)
        else:
            raise ValueError(f"unknown kind {kind!r}")


def write_pool(kind, count, path, seed=1):
    """Write a pool file; return (requests, total body bytes)."""
    total = 0
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        for raw in requests(kind, count, seed):
            f.write(b"%d\n" % len(raw))
            f.write(raw)
            total += len(raw)
    os.replace(tmp, path)
    return count, total


def pool(kind, count, cache_dir, seed=1):
    """The path of a cached pool file, built when missing."""
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, f"{kind}-{count}-{seed}.pool")
    if not os.path.exists(path):
        write_pool(kind, count, path, seed)
    return path


def body_sample(kind, seed=1):
    """One request's body, decompressed (for sizes in the report)."""
    raw = next(requests(kind, 1, seed))
    body = raw.split(b"\r\n\r\n", 1)[1]
    return gzip.decompress(body) if kind != "single" else body


if __name__ == "__main__":
    kind, count, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    t = time.time()
    n, size = write_pool(kind, count, out)
    print(f"{n} {kind} requests, {size / n:.0f} bytes each on the wire, {time.time() - t:.1f}s")
