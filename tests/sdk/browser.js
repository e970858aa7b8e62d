#!/usr/bin/env node
// Load a RudderStack browser SDK page in headless Debian Chromium (playwright-core, no browser
// download) and report, as one JSON line on stdout, every request the browser made.
//
//   node browser.js '{"stilgar": "http://127.0.0.1:P", "writeKey": "...", "sdk": "v3"|"v2",
//                     "mode": "xhr"|"batch"|"beacon", "pagePort": N, "uid": "...", "gid": "...",
//                     "label": "...", "expect": 5, "probe": false, "timeoutMs": 20000}'
//
// The page is served by this script from tests/sdk on http://127.0.0.1:<pagePort> (another origin
// than Stilgar's). Nothing may leave the machine: Chromium gets a proxy that is a local sink which
// refuses and counts every request (loopback is never proxied), so any request to another host is
// aborted and reported in "proxied". Playwright's page.route() is deliberately not used: with
// interception on, Playwright answers CORS preflights itself (204, allow-all), so Stilgar's own
// CORS answers would never be exercised.
"use strict";
const fs = require("fs");
const os = require("os");
const path = require("path");
const { chromium } = require("playwright-core");
const { listen, staticServer, sinkProxy } = require("./loopback");

const cfg = JSON.parse(process.argv[2] || "{}");

function eventsOf(postData) {
  if (!postData) return [];
  try {
    const body = JSON.parse(postData);
    return Array.isArray(body.batch) ? body.batch : [body];
  } catch (e) {
    return [];
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function main() {
  const served = [], proxied = [], requests = [], seen = [], consoleLines = [];
  const pages = staticServer(served);
  const sink = sinkProxy(proxied);
  const pagePort = await listen(pages, cfg.pagePort || 0);
  const sinkPort = await listen(sink, 0);
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "stilgar-chromium-"));
  const stilgar = new URL(cfg.stilgar);
  let context;
  const out = { pageOrigin: `http://127.0.0.1:${pagePort}` };
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: cfg.chromium || "/usr/bin/chromium",
      headless: true,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", `--proxy-server=http://127.0.0.1:${sinkPort}`],
    });
    // Playwright's own events: every request of the context (the foreign-host check)
    context.on("request", (r) => seen.push(r.url()));
    const page = context.pages()[0] || (await context.newPage());
    // Chromium's request log over CDP: unlike Playwright's events it includes CORS preflights
    // and the bodies of sendBeacon requests (fetched with Network.getRequestPostData)
    const cdp = await context.newCDPSession(page);
    await cdp.send("Network.enable");
    const byId = new Map();
    const entryFor = (id) => byId.get(id) || { done: false };
    cdp.on("Network.requestWillBeSent", (ev) => {
      const previous = byId.get(ev.requestId);
      if (previous && ev.redirectResponse) previous.status = ev.redirectResponse.status;
      const entry = { id: ev.requestId, url: ev.request.url, method: ev.request.method, type: ev.type || null,
                      headers: ev.request.headers || {}, postData: ev.request.postData || null,
                      status: null, failure: null, cors: null, done: false, bodyPending: false };
      byId.set(ev.requestId, entry);
      requests.push(entry);
      if (ev.request.hasPostData && !entry.postData) {
        entry.bodyPending = true;
        cdp.send("Network.getRequestPostData", { requestId: ev.requestId })
          .then((r) => { entry.postData = r.postData; }, (e) => { entry.bodyError = String(e.message || e); })
          .finally(() => { entry.bodyPending = false; });
      }
    });
    cdp.on("Network.responseReceived", (ev) => { entryFor(ev.requestId).status = ev.response.status; });
    cdp.on("Network.loadingFinished", (ev) => { entryFor(ev.requestId).done = true; });
    cdp.on("Network.loadingFailed", (ev) => {
      const entry = entryFor(ev.requestId);
      entry.failure = ev.errorText || "failed";
      entry.cors = ev.corsErrorStatus ? ev.corsErrorStatus.corsError : null;
      entry.done = true;
    });
    page.on("console", (m) => consoleLines.push(m.type() + ": " + m.text()));
    page.on("pageerror", (e) => consoleLines.push("pageerror: " + e.message));

    const query = new URLSearchParams({ dp: cfg.stilgar, wk: cfg.writeKey, mode: cfg.mode || "xhr",
                                        uid: cfg.uid || "", gid: cfg.gid || "", label: cfg.label || "",
                                        probe: cfg.probe ? "1" : "0" });
    await page.goto(`${out.pageOrigin}/pages/${cfg.sdk}.html?${query}`, { waitUntil: "load" });

    const isDataPlane = (r) => {
      const u = new URL(r.url);
      return u.host === stilgar.host && r.method === "POST" &&
             (u.pathname.startsWith("/v1/") || u.pathname.startsWith("/beacon/"));
    };
    const deadline = Date.now() + (cfg.timeoutMs || 20000);
    let result = {};
    let settledSince = null;
    for (;;) {
      result = await page.evaluate(() => window.__result).catch(() => ({}));
      const dp = requests.filter(isDataPlane);
      const ids = new Set(dp.flatMap((r) => eventsOf(r.postData)).map((e) => e.messageId));
      const allDone = dp.every((r) => r.done && !r.bodyPending);
      let done;
      if (cfg.probe) done = result && result.probed;
      else done = ids.size >= (cfg.expect || 5) && allDone;
      if (done) {
        settledSince = settledSince || Date.now();
        if (Date.now() - settledSince >= (cfg.settleMs || 300)) break;   // catch a retry, if any
      } else {
        settledSince = null;
      }
      if (Date.now() > deadline) { out.timedOut = true; break; }
      await sleep(100);
    }
    out.result = result;
  } catch (e) {
    out.error = String(e && e.stack || e);
  } finally {
    if (context) await context.close().catch(() => {});
    pages.close();
    sink.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
  const events = [];
  for (const r of requests) {
    const u = new URL(r.url);
    if (u.host !== stilgar.host) continue;
    if (r.method !== "POST") continue;
    for (const e of eventsOf(r.postData)) events.push({ path: u.pathname, ...e });
  }
  out.requests = requests.map((r) => ({ method: r.method, url: r.url, type: r.type, status: r.status,
                                        failure: r.failure, cors: r.cors, bodyError: r.bodyError,
                                        contentType: r.headers["Content-Type"] || r.headers["content-type"] || null }));
  out.foreign = [...seen, ...requests.map((r) => r.url)].filter((u) => {
    const { protocol, hostname } = new URL(u);
    return !(protocol === "data:" || protocol === "blob:" || protocol === "about:" || hostname === "127.0.0.1");
  });
  out.proxied = proxied;
  out.served = served;
  out.events = events;
  out.console = consoleLines;
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().then(() => process.exit(0), (e) => { console.error(e); process.exit(2); });
