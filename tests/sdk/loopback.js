// The loopback servers the browser scripts (browser.js, live_view.js) stand up beside Chromium:
// the pages' static server and the proxy sink that refuses, and counts, every request Chromium
// would send to another host. Loopback is never proxied, so nothing leaves the machine.
"use strict";
const fs = require("fs");
const http = require("http");
const path = require("path");

const ROOT = __dirname;
const TYPES = { ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".json": "application/json", ".map": "application/json" };

function listen(server, port) {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port || 0, "127.0.0.1", () => resolve(server.address().port));
  });
}

// Serves tests/sdk/pages and tests/sdk/node_modules; pushes "METHOD /path" onto served.
function staticServer(served) {
  return http.createServer((req, res) => {
    const url = new URL(req.url, "http://127.0.0.1");
    served.push(req.method + " " + url.pathname);
    const rel = path.normalize(decodeURIComponent(url.pathname)).replace(/^(\.\.[/\\])+/, "");
    const file = path.join(ROOT, rel);
    const allowed = ["pages", "node_modules"].some((d) => file.startsWith(path.join(ROOT, d) + path.sep));
    if (!allowed || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
      res.writeHead(404, { "Content-Type": "text/plain" });
      res.end("not found\n");
      return;
    }
    res.writeHead(200, { "Content-Type": TYPES[path.extname(file)] || "application/octet-stream",
                         "Cache-Control": "no-store" });
    fs.createReadStream(file).pipe(res);
  });
}

// Refuses every proxied request (403) and every CONNECT tunnel; pushes what was asked onto
// proxied. Chromium may reset a refused tunnel: a CONNECT socket belongs to us, not to the HTTP
// server, so its errors are ours to take, or Node ends the process on an unhandled 'error'.
function sinkProxy(proxied) {
  const server = http.createServer((req, res) => {
    proxied.push(req.method + " " + req.url);
    res.writeHead(403, { "Content-Type": "text/plain" });
    res.end("blocked by the Stilgar SDK test\n");
  });
  server.on("connect", (req, socket) => {
    proxied.push("CONNECT " + req.url);
    socket.on("error", () => socket.destroy());
    socket.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
  });
  server.on("clientError", (err, socket) => socket.destroy());
  return server;
}

module.exports = { listen, staticServer, sinkProxy };
