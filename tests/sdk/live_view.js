#!/usr/bin/env node
// The live view (/debug/) in headless Debian Chromium (playwright-core, no browser download),
// watched while real SDKs send: the browser SDK v3 from a page on another origin and
// rudder-sdk-python (python_client.py). Prints one JSON line: what was seen, and how fast.
//
//   node live_view.js '{"stilgar": "http://127.0.0.1:P", "writeKey": "...", "badKey": "...",
//                       "admin": ["user", "password"], "python": "/usr/bin/python3", "label": "...",
//                       "pythonCalls": [...], "screenshots": "/dir"}'
//
// Nothing may leave the machine: Chromium's proxy is a local sink (loopback is never proxied);
// "foreign" lists what the pages asked of other hosts.
"use strict";
const fs = require("fs");
const http = require("http");
const os = require("os");
const path = require("path");
const { execFile } = require("child_process");
const { chromium } = require("playwright-core");
const { listen, staticServer, sinkProxy } = require("./loopback");

const ROOT = __dirname;
const cfg = JSON.parse(process.argv[2] || "{}");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function post(url, body, headers) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: "POST", headers }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode));
    });
    req.on("error", reject);
    req.end(body);
  });
}

function pythonSdk() {
  const script = path.join(ROOT, "python_client.py");
  const arg = JSON.stringify({ host: cfg.stilgar, clients: [{ writeKey: cfg.writeKey, calls: cfg.pythonCalls }] });
  return new Promise((resolve, reject) => {
    execFile(cfg.python, [script, arg], { timeout: 60000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(String(err) + "\n" + stderr));
      else resolve(JSON.parse(stdout.trim().split("\n").pop()));
    });
  });
}

// resolves with the time (ms) at which every one of `ids` is a row of the events table
function rowsAppear(page, ids, timeout) {
  return page.waitForFunction((wanted) => wanted.every(
    (id) => document.querySelector('#events tbody tr[data-message-id="' + CSS.escape(id) + '"]')),
  ids, { timeout, polling: 25 }).then(() => Date.now());
}

async function main() {
  const out = { proxied: [], console: [] };
  const pages = staticServer([]);
  const sink = sinkProxy(out.proxied);
  const pagePort = await listen(pages, cfg.pagePort);
  const sinkPort = await listen(sink);
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "stilgar-live-chromium-"));
  let context;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: cfg.chromium || "/usr/bin/chromium", headless: true,
      viewport: { width: 1500, height: 1000 },
      httpCredentials: { username: cfg.admin[0], password: cfg.admin[1] },
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
             `--proxy-server=http://127.0.0.1:${sinkPort}`],
    });
    // what the pages themselves asked for (Chromium's own background calls hit the sink proxy)
    out.foreign = [];
    context.on("request", (r) => {
      const u = new URL(r.url());
      if (!["data:", "blob:", "about:"].includes(u.protocol) && u.hostname !== "127.0.0.1") out.foreign.push(r.url());
    });
    const live = context.pages()[0] || (await context.newPage());
    live.on("console", (m) => out.console.push("live " + m.type() + ": " + m.text()));
    live.on("pageerror", (e) => out.console.push("live pageerror: " + e.message));
    const response = await live.goto(cfg.stilgar + "/debug/", { waitUntil: "load" });
    out.pageStatus = response.status();
    out.headers = response.headers();
    await live.waitForFunction(() => document.getElementById("connection").textContent === "live", null,
                               { timeout: 10000 });

    // 1. the browser SDK v3, from another origin, with markup in what it sends
    const sdk = await context.newPage();
    const sent = [];
    let lastAnswer = 0;
    sdk.on("request", (r) => {
      if (r.method() === "POST" && new URL(r.url()).pathname.startsWith("/v1/")) {
        try {
          const body = JSON.parse(r.postData() || "{}");
          (Array.isArray(body.batch) ? body.batch : [body]).forEach((e) => sent.push(e));
        } catch (e) { /* not JSON: not an event */ }
      }
    });
    sdk.on("response", (r) => {
      if (new URL(r.url()).pathname.startsWith("/v1/")) lastAnswer = Math.max(lastAnswer, Date.now());
    });
    const query = new URLSearchParams({ dp: cfg.stilgar, wk: cfg.writeKey, mode: "xhr", uid: "live-user",
                                        gid: "live-group", label: cfg.label, probe: "0" });
    await sdk.goto(`http://127.0.0.1:${pagePort}/pages/v3.html?${query}`, { waitUntil: "load" });
    const deadline = Date.now() + 20000;
    while ((sent.length < 5 || !lastAnswer) && Date.now() < deadline) await sleep(50);
    await sleep(300);
    const browserIds = sent.map((e) => e.messageId);
    const seenBrowser = await rowsAppear(live, browserIds, 10000);
    out.browser = { sent: sent.map((e) => [e.type, e.event || e.name || null, e.messageId]),
                    delayMs: seenBrowser - lastAnswer };

    // 2. rudder-sdk-python
    const pyIds = cfg.pythonCalls.map((c) => c.kwargs.message_id);
    const pyResult = await pythonSdk();
    const pyDone = Date.now();
    const seenPython = await rowsAppear(live, pyIds, 10000);
    out.python = { result: pyResult, delayMs: seenPython - pyDone };

    // 3. a request with a bad write key
    const badAt = Date.now();
    out.badStatus = await post(cfg.stilgar + "/v1/track", JSON.stringify({ type: "track", event: "Nope", anonymousId: "x" }),
      { "Content-Type": "application/json", "Origin": `http://127.0.0.1:${pagePort}`, "User-Agent": "live-view-test/1",
        "Authorization": "Basic " + Buffer.from(cfg.badKey + ":").toString("base64") });
    await live.waitForFunction(() => Array.from(document.querySelectorAll("#rejected tbody tr"))
      .some((tr) => tr.textContent.indexOf("invalid write key") >= 0), null, { timeout: 5000, polling: 25 });
    out.rejectedDelayMs = Date.now() - badAt;
    out.rejectedRows = await live.$$eval("#rejected tbody tr", (rows) => rows.map(
      (tr) => Array.from(tr.cells).map((td) => td.textContent)));
    await live.waitForFunction(() => document.querySelectorAll("#destinations tbody tr").length > 0, null,
                               { timeout: 5000 });
    await sleep(300);
    if (cfg.screenshots) await live.screenshot({ path: path.join(cfg.screenshots, "debug-live.png") });

    // 4. filter by event name, then open one event
    await live.fill("#filter-name", "Product Viewed");
    out.filtered = await live.$$eval("#events tbody tr", (rows) => rows.map(
      (tr) => ({ id: tr.dataset.messageId, cells: Array.from(tr.cells).map((td) => td.textContent) })));
    const browserTrack = sent.find((e) => e.type === "track").messageId;
    await live.click(`#events tbody tr[data-message-id="${browserTrack}"]`);
    await live.waitForFunction(() => document.querySelectorAll("#detail-rows caption").length > 0, null,
                               { timeout: 5000 });
    out.detailJson = await live.textContent("#detail-json");
    out.detailTables = await live.$$eval("#detail-rows caption", (cs) => cs.map((c) => c.textContent));
    out.detailColumns = await live.$$eval("#detail-rows table", (ts) => ts.map((t) => ({
      table: t.caption.textContent,
      columns: Array.from(t.rows).slice(1).map((r) => [r.cells[0].textContent, r.cells[1].textContent]) })));
    out.injected = await live.evaluate(() => ({ xss: window.__xss === undefined ? null : window.__xss,
                                                images: document.images.length,
                                                scripts: document.scripts.length }));
    if (cfg.screenshots) await live.screenshot({ path: path.join(cfg.screenshots, "debug-event.png") });
    // 5. pause holds new items back; resume shows them
    await live.click("#pause");
    await post(cfg.stilgar + "/v1/track", JSON.stringify({ type: "track", event: "Product Viewed", anonymousId: "paused",
                                                           messageId: "live-paused-1" }),
      { "Content-Type": "application/json", "Authorization": "Basic " + Buffer.from(cfg.writeKey + ":").toString("base64") });
    await live.waitForFunction(() => /Resume \(1 new\)/.test(document.getElementById("pause").textContent), null,
                               { timeout: 5000 });
    out.whilePaused = await live.$$eval('#events tbody tr[data-message-id="live-paused-1"]', (r) => r.length);
    await live.click("#pause");
    out.afterResume = await live.$$eval('#events tbody tr[data-message-id="live-paused-1"]', (r) => r.length);
  } catch (e) {
    out.error = String(e && e.stack || e);
  } finally {
    if (context) await context.close().catch(() => {});
    pages.close();
    sink.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().then(() => process.exit(0), (e) => { console.error(e); process.exit(2); });
