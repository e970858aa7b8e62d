"""What the deep path of ``parse_json(cut_deep=True)`` costs (doc/sdks.md, doc/events.md).

    python bench/deep_json.py

Bodies nested deeper than ``MAX_DEPTH`` have their deep parts cut before parsing; ordinary
bodies never take that path. Prints the time of the fast path on an ordinary mobile batch and of
the deep path on a mobile batch holding one too-deep event and on hostile 4 MiB bodies.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stilgar.events import parse_json  # noqa: E402
from tests import mobile_wire  # noqa: E402


def best(body, runs=5):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        try:
            parse_json(body, cut_deep=True)
        except Exception:
            pass
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    events = json.loads(mobile_wire.ANDROID_BODY)["batch"] * 100
    ordinary = json.dumps({"sentAt": "x", "batch": events}).encode()
    deep = dict(events[1])
    deep["properties"] = {"nested": json.loads("[" * 600 + "]" * 600)}
    one_deep = json.dumps({"sentAt": "x", "batch": events + [deep]}).encode()
    n = 2 * 1024 * 1024
    cases = [
        ("ordinary mobile batch (fast path)", ordinary),
        ("same + one event 600 levels deep", one_deep),
        ("hostile: 4 MiB of [[[...]]]", b'{"batch":[' + b"[" * n + b"]" * n + b"]}"),
        ("hostile: 600 deep, then [],[],... to 4 MiB", b'{"batch":[' + b"[" * 600 + b"[]," * 1_390_000
         + b"1" + b"]" * 600 + b"]}"),
        ("hostile: 700 events 520 deep ({\"a\":...)", b'{"batch":[' + (b'{"a":' * 520 + b"1" + b"}" * 520
                                                                     + b",") * 700 + b"1]}"),
        ("same shape, 500 deep (fast path, to compare)", b'{"batch":[' + (b'{"a":' * 500 + b"1" + b"}" * 500
                                                                        + b",") * 700 + b"1]}"),
        ("hostile: 10000 cuts, then refused", b'{"batch":[' + b"[" * 510 + b"[]," * 10000 + b"[]"
         + b"]" * 510 + b"]}"),
    ]
    for name, body in cases:
        print(f"{name:48s} {len(body) / 1024:8.0f} KiB  {best(body) * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
