// Stilgar's live view (doc/debugging.md): reads /debug/events (Server-Sent Events) and renders
// every value with textContent -- never as HTML: event data is whatever any client sent.
"use strict";
(function () {
  var MAX_ROWS = 500;            // kept per list; older ones are dropped from the page
  var MAX_HELD = 2000;           // items held while paused
  var state = { paused: false, held: [], events: [], rejected: [], discards: [],
                destinations: new Map(), status: new Map(), skipped: 0, selected: null };

  function $(id) { return document.getElementById(id); }

  function el(tag, text, className) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function row(cells) {
    var tr = document.createElement("tr");
    cells.forEach(function (cell) {
      var td = el("td");
      if (cell instanceof Node) td.appendChild(cell); else td.textContent = cell == null ? "" : String(cell);
      tr.appendChild(td);
    });
    return tr;
  }

  function time(at) {
    return typeof at === "number" ? new Date(at * 1000).toISOString().slice(11, 23) : "";
  }

  function prepend(tbody, tr) {
    tbody.insertBefore(tr, tbody.firstChild);
    while (tbody.childNodes.length > MAX_ROWS) tbody.removeChild(tbody.lastChild);
  }

  function remember(list, item) {
    list.push(item);
    if (list.length > MAX_ROWS) list.shift();
  }

  // -- filters -----------------------------------------------------------------------------------

  function filters() {
    return { key: $("filter-key").value.trim(), type: $("filter-type").value,
             name: $("filter-name").value.trim().toLowerCase(), text: $("filter-text").value.trim().toLowerCase() };
  }

  // a masked key ("abcd…yz") matches what it shows, and the whole key it stands for
  function keyMatches(masked, typed) {
    if (!typed) return true;
    masked = masked || "";
    if (masked.indexOf(typed) >= 0) return true;
    var parts = masked.split("…");
    return parts.length === 2 && typed.startsWith(parts[0]) && typed.endsWith(parts[1]);
  }

  function shown(item, f) {
    if (item.kind !== "discard" && !keyMatches(item.write_key, f.key)) return false;
    if (item.kind !== "event") return !f.text || JSON.stringify(item).toLowerCase().indexOf(f.text) >= 0;
    if (f.type && item.type !== f.type) return false;
    if (f.name && String(item.event || "").toLowerCase().indexOf(f.name) < 0) return false;
    if (f.text && JSON.stringify(item.payload).toLowerCase().indexOf(f.text) >= 0) return true;
    return !f.text;
  }

  function rerender() {
    var f = filters();
    [["events", state.events, eventRow], ["rejected", state.rejected, rejectedRow],
     ["discards", state.discards, discardRow]].forEach(function (t) {
      var tbody = $(t[0]).tBodies[0];
      while (tbody.firstChild) tbody.removeChild(tbody.firstChild);
      t[1].forEach(function (item) { if (shown(item, f)) prepend(tbody, t[2](item)); });
    });
    counts();
  }

  function counts() {
    $("events-count").textContent = "(" + $("events").tBodies[0].rows.length + " shown of " + state.events.length + ")";
    $("rejected-count").textContent = "(" + state.rejected.length + ")";
    $("discards-count").textContent = "(" + state.discards.length + ")";
  }

  // -- rows --------------------------------------------------------------------------------------

  function eventRow(item) {
    var lib = item.library || {};
    var tr = row([time(item.at), item.write_key, item.type, item.event, item.user_id || item.anonymous_id,
                  [lib.name, lib.version].filter(Boolean).join(" "), item.origin, item.worker]);
    tr.className = "event";
    tr.dataset.messageId = item.message_id || "";
    tr.addEventListener("click", function () { select(item, tr); });
    if (state.selected === item) tr.classList.add("selected");
    return tr;
  }

  function rejectedRow(item) {
    var status = el("span", item.status, "status-" + String(item.status).charAt(0));
    return row([time(item.at), status, item.reason, item.write_key, (item.method || "") + " " + (item.path || ""),
                item.origin, item.user_agent, item.worker]);
  }

  function discardRow(item) {
    return row([time(item.at), item.destination, item.table, item.column, item.reason, item.value, item.row_id]);
  }

  // -- the detail pane ---------------------------------------------------------------------------

  function select(item, tr) {
    state.selected = item;
    Array.prototype.forEach.call(document.querySelectorAll("#events tr.selected"),
                                 function (r) { r.classList.remove("selected"); });
    tr.classList.add("selected");
    $("detail").hidden = false;
    $("detail-json").textContent = JSON.stringify(item.payload, null, 2);
    var rows = $("detail-rows");
    while (rows.firstChild) rows.removeChild(rows.firstChild);
    rows.appendChild(el("p", "…", "muted"));
    fetch("preview", { method: "POST", headers: { "Content-Type": "application/json" }, credentials: "same-origin",
                       body: JSON.stringify({ event: item.payload, destinations: item.destinations || [] }) })
      .then(function (r) { return r.ok ? r.json() : r.text().then(function (t) { throw new Error(r.status + " " + t); }); })
      .then(function (doc) { if (state.selected === item) renderPreview(rows, doc); },
            function (e) { rows.textContent = "preview failed: " + e.message; });
  }

  function columnsTable(caption, columns) {
    var table = el("table", null, "row");
    table.appendChild(el("caption", caption));
    var head = row(["column", "value"]);
    table.appendChild(head);
    Object.keys(columns).forEach(function (name) {
      var value = columns[name];
      table.appendChild(row([name, typeof value === "string" ? value : JSON.stringify(value)]));
    });
    return table;
  }

  function renderPreview(box, doc) {
    while (box.firstChild) box.removeChild(box.firstChild);
    var names = Object.keys(doc);
    if (!names.length) box.appendChild(el("p", "no ClickHouse destination for this write key", "muted"));
    names.forEach(function (name) {
      var d = doc[name];
      box.appendChild(el("h3", name + " (database " + d.database + ")"));
      d.rows.forEach(function (r) { box.appendChild(columnsTable(r.table, r.columns)); });
      d.discards.forEach(function (r) { box.appendChild(columnsTable("discarded → " + r.table, r.columns)); });
    });
  }

  // -- destinations and totals -------------------------------------------------------------------

  function renderDestinations() {
    var tbody = $("destinations").tBodies[0];
    while (tbody.firstChild) tbody.removeChild(tbody.firstChild);
    Array.from(state.destinations.values()).sort(function (a, b) {
      return (a.name + a.worker) < (b.name + b.worker) ? -1 : 1;
    }).forEach(function (d) {
      tbody.appendChild(row([d.name, d.worker, el("span", d.up ? "up" : "down", d.up ? "up" : "down"), d.since,
                             d.backlog, d.inserted, d.discarded, d.last_error]));
    });
  }

  function renderTotals() {
    var sum = { received: 0, accepted: 0, rejected: 0, queue: 0, spool: 0 }, health = [];
    state.status.forEach(function (s) {
      var ev = s.events || {};
      sum.received += ev.received || 0;
      sum.accepted += ev.accepted || 0;
      Object.keys(ev.rejected || {}).forEach(function (k) { sum.rejected += ev.rejected[k]; });
      sum.queue += ev.queue_capacity || 0;
      sum.spool += (s.spool && s.spool.bytes) || 0;
      health.push("worker " + s.worker + ": " + s.health);
    });
    var box = $("totals");
    while (box.firstChild) box.removeChild(box.firstChild);
    [["requests received", sum.received], ["events accepted", sum.accepted], ["requests rejected", sum.rejected],
     ["queue capacity", sum.queue], ["spool bytes", sum.spool], ["health", health.join(", ")]].forEach(function (t) {
      var div = el("div", t[0]);
      div.appendChild(el("b", t[1]));
      box.appendChild(div);
    });
  }

  // -- the stream --------------------------------------------------------------------------------

  function take(item) {
    var f = filters();
    if (item.kind === "event") {
      remember(state.events, item);
      if (shown(item, f)) prepend($("events").tBodies[0], eventRow(item));
    } else if (item.kind === "rejected") {
      remember(state.rejected, item);
      if (shown(item, f)) prepend($("rejected").tBodies[0], rejectedRow(item));
    } else if (item.kind === "discard") {
      remember(state.discards, item);
      if (shown(item, f)) prepend($("discards").tBodies[0], discardRow(item));
    } else if (item.kind === "destination") {
      state.destinations.set(item.name + "\u0000" + item.worker, item);
      renderDestinations();
    } else if (item.kind === "status") {
      state.status.set(item.worker, item);
      renderTotals();
    } else if (item.kind === "skipped") {
      state.skipped += item.count || 0;
      $("skipped").textContent = state.skipped + " items left out by sampling";
    }
    counts();
  }

  function connect() {
    var source = new EventSource("events");
    var badge = $("connection");
    source.onopen = function () { badge.textContent = "live"; badge.className = "connection live"; };
    source.onerror = function () { badge.textContent = "reconnecting…"; badge.className = "connection down"; };
    source.onmessage = function (message) {
      var item;
      try { item = JSON.parse(message.data); } catch (e) { return; }
      if (state.paused && (item.kind === "event" || item.kind === "rejected" || item.kind === "discard")) {
        state.held.push(item);
        if (state.held.length > MAX_HELD) state.held.shift();
        $("pause").textContent = "Resume (" + state.held.length + " new)";
        return;
      }
      take(item);
    };
  }

  function start() {
    $("pause").addEventListener("click", function () {
      state.paused = !state.paused;
      if (!state.paused) {
        var held = state.held;
        state.held = [];
        held.forEach(take);
      }
      this.textContent = state.paused ? "Resume (" + state.held.length + " new)" : "Pause";
    });
    $("clear").addEventListener("click", function () {
      state.events = []; state.rejected = []; state.discards = []; state.held = [];
      rerender();
    });
    $("detail-close").addEventListener("click", function () { $("detail").hidden = true; state.selected = null; });
    ["filter-key", "filter-name", "filter-text"].forEach(function (id) { $(id).addEventListener("input", rerender); });
    $("filter-type").addEventListener("change", rerender);
    $("filters").addEventListener("submit", function (e) { e.preventDefault(); });
    counts();
    renderTotals();
    connect();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
