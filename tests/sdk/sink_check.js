#!/usr/bin/env node
// Resets refused CONNECT tunnels at the proxy sink (as Chromium may), then asks again; prints
// one JSON line: how many refusals came back and what the sink counted. Run by tests/test_sdks.py.
"use strict";
const net = require("net");
const { listen, sinkProxy } = require(process.argv[2] || "./loopback");

function refusedThenReset(port, host) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1", () => {
      socket.write(`CONNECT ${host}:443 HTTP/1.1\r\nHost: ${host}:443\r\n\r\n`);
    });
    socket.once("data", (data) => {
      socket.resetAndDestroy();
      resolve(data.toString("latin1").split("\r\n")[0]);
    });
    socket.on("error", reject);
  });
}

async function main() {
  const proxied = [];
  const sink = sinkProxy(proxied);
  const port = await listen(sink, 0);
  const answers = [];
  for (const host of ["a.example", "b.example", "c.example"]) {
    answers.push(await refusedThenReset(port, host));
    await new Promise((r) => setTimeout(r, 50));   // let the reset reach the sink
  }
  sink.close();
  process.stdout.write(JSON.stringify({ answers, proxied }) + "\n");
}

main().then(() => process.exit(0), (e) => { console.error(e); process.exit(2); });
