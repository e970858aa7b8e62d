// Drives a RudderStack browser SDK from the query string; results in window.__result.
//   ?dp=<Stilgar base URL>&wk=<write key>&mode=xhr|batch|beacon&uid=<user id>&gid=<group id>
//    &label=<text stored in properties/traits>&probe=1 (also try two raw cross-origin requests)
(function () {
  "use strict";
  var q = new URLSearchParams(location.search);
  var result = window.__result = {status: "loading", errors: [], probes: {}};
  window.addEventListener("error", function (e) { result.errors.push(String(e.message)); });
  window.addEventListener("unhandledrejection", function (e) { result.errors.push(String(e.reason)); });

  function loadOptions(sdk) {
    var local = location.origin + "/no-cdn";   // nothing is served there: nothing must be loaded
    var options = {
      configUrl: q.get("dp"),                  // Stilgar is the control plane too: <dp>/sourceConfig
      loadIntegration: false,
      polyfillIfRequired: false,
      destSDKBaseURL: local,
      logLevel: "ERROR"
    };
    if (sdk === "v3") options.pluginsSDKBaseURL = local;
    var mode = q.get("mode") || "xhr";
    if (mode === "batch") options.queueOptions = {batch: {enabled: true, maxItems: 100, flushInterval: 200}};
    if (mode === "beacon") {
      options.useBeacon = true;
      options.beaconQueueOptions = {flushQueueInterval: 200};
    }
    return options;
  }

  function calls(analytics) {
    var label = q.get("label"), uid = q.get("uid"), gid = q.get("gid");
    analytics.page("Docs", "Install Guide", {sdk_label: label, section: "setup"});
    analytics.track("Product Viewed", {sdk_label: label, product_id: "P-42", price: 12.5, quantity: 3});
    analytics.identify(uid, {sdk_label: label, email: uid + "@example.com", plan: "pro", logins: 7});
    analytics.group(gid, {sdk_label: label, name: "Acme Inc", employees: 42});
    analytics.alias(uid + "-alias");
    result.status = "called";
  }

  function probe() {
    // what a page sees when its origin is not allowed: both requests fail as network errors
    var dp = q.get("dp"), wk = q.get("wk");
    var body = JSON.stringify({type: "track", event: "Probe", anonymousId: "probe-" + q.get("label")});
    var tries = [
      ["xhr", fetch(dp + "/v1/track", {method: "POST", body: body,
        headers: {"Content-Type": "application/json", "Authorization": "Basic " + btoa(wk + ":")}})],
      ["simple", fetch(dp + "/beacon/v1/batch?writeKey=" + encodeURIComponent(wk),
        {method: "POST", body: JSON.stringify({batch: [JSON.parse(body)]}), headers: {"Content-Type": "text/plain"}})]
    ];
    return Promise.all(tries.map(function (t) {
      return t[1].then(function (r) { result.probes[t[0]] = "status " + r.status; },
                       function (e) { result.probes[t[0]] = "error " + e.name + ": " + e.message; });
    }));
  }

  window.stilgarTest = {
    run: function (sdk) {
      try {
        var analytics;
        if (sdk === "v3") {
          analytics = new window.rudderanalytics.RudderAnalytics();   // replaces window.rudderanalytics
        } else {
          analytics = window.rudderanalytics;
        }
        var options = loadOptions(sdk);
        options.onLoaded = function () { result.loaded = true; };
        analytics.load(q.get("wk"), q.get("dp"), options);
        analytics.ready(function () { result.ready = true; calls(analytics); });
        if (q.get("probe") === "1") {
          probe().then(function () { result.probed = true; });
        }
      } catch (e) {
        result.errors.push(String(e && e.stack || e));
        result.status = "error";
      }
    }
  };
})();
