#!/usr/bin/env node
// Send events with the real @rudderstack/rudder-sdk-node, then print one JSON line: what the SDK
// reported through its callbacks.
//
//   node node_client.js '{"host": "http://127.0.0.1:P", "clients": [
//       {"writeKey": "...", "gzip": true, "retryCount": 1,
//        "calls": [{"method": "track", "message": {"userId": "u", "event": "E", "messageId": "m"}}]}]}'
"use strict";
const Analytics = require("@rudderstack/rudder-sdk-node");
const { version } = require("@rudderstack/rudder-sdk-node/package.json");

function describe(err) {
  if (!err) return null;
  const resp = err.response || {};
  return { message: String(err.message || err), status: resp.status === undefined ? null : resp.status,
           body: typeof resp.data === "string" ? resp.data : resp.data === undefined ? null : JSON.stringify(resp.data) };
}

async function main() {
  const cfg = JSON.parse(process.argv[2]);
  const result = { sdk: "@rudderstack/rudder-sdk-node", version, callbacks: [], flushErrors: [] };
  const pending = [];
  const clients = cfg.clients.map((spec, index) => {
    const client = new Analytics(spec.writeKey, {
      dataPlaneUrl: cfg.host, gzip: spec.gzip !== false, retryCount: spec.retryCount ?? 1,
      flushInterval: 200, logLevel: "error",
      errorHandler: (err) => result.flushErrors.push({ client: index, ...describe(err) }),
    });
    for (const call of spec.calls) {
      pending.push(new Promise((resolve) => {
        client[call.method](call.message, (err) => {
          result.callbacks.push({ client: index, method: call.method, messageId: call.message.messageId || null,
                                  error: describe(err) });
          resolve();
        });
      }));
    }
    return client;
  });
  await Promise.all(clients.map((c) => c.flush().catch(() => {})));
  const timer = setTimeout(() => { result.timedOut = true; finish(); }, cfg.timeoutMs || 20000);
  await Promise.all(pending);
  clearTimeout(timer);
  finish();

  function finish() {
    process.stdout.write(JSON.stringify(result) + "\n");
    process.exit(0);
  }
}

main().catch((e) => { console.error(e); process.exit(2); });
