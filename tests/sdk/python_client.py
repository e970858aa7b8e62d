"""Send events with the real rudder-sdk-python, then print one JSON line: what the SDK reported.

    python python_client.py @config.json      # the same JSON, from a file
    python python_client.py '{"host": "http://127.0.0.1:P", "clients": [
        {"writeKey": "...", "gzip": true, "maxRetries": 2,
         "calls": [{"method": "track", "kwargs": {"user_id": "u", "event": "E", "message_id": "m"}}]}]}'

Each client is flushed (flush() waits until its queue is empty), then joined; errors reach
``on_error(exception, batch)`` and are reported with the batch's messageIds.
"""

import json
import sys

from rudderstack.analytics.client import Client
from rudderstack.analytics.version import VERSION


def main():
    arg = sys.argv[1]
    if arg.startswith("@"):          # a file holding the JSON (argument lists are bounded)
        with open(arg[1:]) as f:
            arg = f.read()
    cfg = json.loads(arg)
    result = {"sdk": "rudder-sdk-python", "version": VERSION, "errors": [], "queued": []}
    clients = []
    for index, spec in enumerate(cfg["clients"]):
        def on_error(error, batch, index=index):
            result["errors"].append({
                "client": index, "error": str(error), "type": type(error).__name__,
                "status": getattr(error, "status", None), "message": getattr(error, "message", None),
                "messageIds": [m.get("messageId") for m in batch]})
        client = Client(spec["writeKey"], host=cfg["host"], gzip=spec.get("gzip", True),
                        on_error=on_error, max_retries=spec.get("maxRetries", 3), timeout=10,
                        upload_interval=0.1)
        clients.append(client)
        for call in spec["calls"]:
            ok, msg = getattr(client, call["method"])(**call["kwargs"])
            result["queued"].append({"client": index, "ok": ok, "messageId": msg.get("messageId")})
    for client in clients:
        client.flush()
    for client in clients:
        client.join()
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
