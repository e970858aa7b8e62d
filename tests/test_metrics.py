"""/metrics: process and platform collectors, build info, no _created, durations, reasons."""

import json

from twisted.internet import defer
from twisted.trial import unittest

from stilgar import __version__, metrics
from stilgar.stats import Stats

from .helpers import WRITE_KEY, answer, basic, event_body, make_app, stub


def sample(name, **labels):
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


class ExpositionTests(unittest.TestCase):
    def setUp(self):
        self.text = metrics.render().decode()

    def test_no_created_series(self):
        self.assertIn("stilgar_events_accepted_total", self.text)
        self.assertNotIn("_created", self.text)

    def test_process_and_platform(self):
        for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                     "process_open_fds", "process_start_time_seconds", "python_info"):
            self.assertIn(f"\n{name}", self.text)

    def test_build_info(self):
        import platform

        import twisted
        self.assertEqual(sample("stilgar_build_info", version=__version__, python=platform.python_version(),
                                implementation=__import__("sys").implementation.name,
                                twisted=twisted.__version__), 1.0)

    @defer.inlineCallbacks
    def test_spool_capacity_gauge_is_the_configured_size(self):
        import os

        from twisted.internet import reactor

        from stilgar.service import make_service

        from .helpers import make_config
        path = os.path.abspath(self.mktemp())
        top = make_service(make_config(spool={"path": path, "max_size": "5MiB"}), reactor)
        yield top.spool.close()
        self.assertEqual(sample("stilgar_spool_max_bytes"), 5 * 1024 ** 2)
        self.assertIn("\nstilgar_spool_max_bytes ", metrics.render().decode())
        make_service(make_config(spool={"enabled": False}), reactor)
        self.assertEqual(sample("stilgar_spool_max_bytes"), 0)


class ReasonLabelTests(unittest.TestCase):
    def test_snake_case(self):
        for text, label in (("invalid json", "invalid_json"),
                            ("request size exceeds max limit", "request_size_exceeds_max_limit"),
                            ("unknown event type: <script>", "unknown_event_type"),
                            ("Write-Key disabled!", "write_key_disabled"), ("???", "other")):
            self.assertEqual(metrics.reason_label(text), label)

    def test_stats_counts_the_label_and_keeps_the_text_for_status(self):
        stats = Stats(up_since=0)
        before = sample("stilgar_requests_rejected_total", reason="invalid_json")
        stats.reject("invalid json")
        self.assertEqual(sample("stilgar_requests_rejected_total", reason="invalid_json"), before + 1)
        self.assertEqual(sample("stilgar_requests_rejected_total", reason="invalid json"), 0)
        self.assertEqual(stats.rejected["invalid json"], 1)


class RequestDurationTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_histogram_per_route_measures_until_the_answer(self):
        app, intake, clock = make_app()
        intake.held = defer.Deferred()
        count = sample("stilgar_http_request_duration_seconds_count", route="track")
        total = sample("stilgar_http_request_duration_seconds_sum", route="track")
        treq = stub(app)
        d = treq.post("http://stilgar.test/v1/track", data=event_body(),
                      headers={b"Authorization": [basic(WRITE_KEY)], b"Content-Type": [b"application/json"]})
        self.assertEqual(len(intake.accepted), 1)
        clock.advance(0.25)   # the spool's fsync, say
        intake.held.callback(None)
        treq.flush()
        status, _, _ = yield answer((yield d))
        self.assertEqual(status, 200)
        self.assertEqual(sample("stilgar_http_request_duration_seconds_count", route="track"), count + 1)
        self.assertAlmostEqual(sample("stilgar_http_request_duration_seconds_sum", route="track") - total,
                               0.25, places=6)
        self.assertGreater(sample("stilgar_http_request_duration_seconds_bucket", route="track", le="0.5"), 0)

    @defer.inlineCallbacks
    def test_refusals_are_timed_under_their_route(self):
        app, _, _ = make_app()
        count = sample("stilgar_http_request_duration_seconds_count", route="batch")
        response = yield stub(app).post("http://stilgar.test/v1/batch", data=b"{")
        self.assertEqual(response.code, 401)
        self.assertEqual(sample("stilgar_http_request_duration_seconds_count", route="batch"), count + 1)


class OneSourceOfCountsTests(unittest.TestCase):
    """/status reads the Prometheus counters: nothing counts twice."""

    def test_status_reads_the_counters(self):
        stats = Stats(up_since=0)
        metrics.REQUESTS_RECEIVED.inc()
        metrics.EVENTS_ACCEPTED.inc(3)
        metrics.REQUESTS_REJECTED.labels(reason="other").inc()
        metrics.EVENTS_FORWARDED.labels(type="page").inc(2)
        doc = stats.events_json(7)
        self.assertEqual((doc["received"], doc["accepted"], doc["rejected"]), (1, 3, {"other": 1}))
        self.assertEqual(doc["forwarded"], {"aliases": 0, "groups": 0, "identifies": 0, "pages": 2,
                                            "screens": 0, "tracks": 0})

    def test_counts_since_the_start_of_the_stats(self):
        metrics.REQUESTS_RECEIVED.inc(5)
        Stats(up_since=0).reject("invalid json")
        stats = Stats(up_since=0)
        self.assertEqual((stats.received, stats.rejected), (0, {}))
        stats.count_received()
        self.assertEqual(stats.received, 1)

    def test_methods_count_into_the_registry(self):
        stats = Stats(up_since=0)
        received = sample("stilgar_requests_received_total")
        accepted = sample("stilgar_events_accepted_total")
        tracks = sample("stilgar_events_forwarded_total", type="track")
        stats.count_received()
        stats.count_accepted(4)
        stats.count_forwarded([{"type": "track"}, {"type": "track"}, {"type": "rudder_discard"}, {}])
        self.assertEqual(sample("stilgar_requests_received_total"), received + 1)
        self.assertEqual(sample("stilgar_events_accepted_total"), accepted + 4)
        self.assertEqual(sample("stilgar_events_forwarded_total", type="track"), tracks + 2)
        self.assertEqual((stats.received, stats.accepted_events, stats.forwarded["tracks"]), (1, 4, 2))

    def test_status_document_shape(self):
        stats = Stats(up_since=1_700_000_000)
        stats.reject("unknown event type: <b>")
        stats.reject("invalid json")
        self.assertEqual(json.dumps(stats.events_json(65536)), json.dumps({
            "up_since": "2023-11-14T22:13:20.000000+00:00", "queue_capacity": 65536,
            "received": 0, "accepted": 0,
            "forwarded": {"aliases": 0, "groups": 0, "identifies": 0, "pages": 0, "screens": 0, "tracks": 0},
            "rejected": {"invalid json": 1, "unknown event type": 1}}))

    @defer.inlineCallbacks
    def test_a_request_counts_once(self):
        app, _, _ = make_app()
        before = sample("stilgar_events_accepted_total")
        response = yield stub(app).post(
            "http://stilgar.test/v1/track", data=event_body(),
            headers={b"Authorization": [basic(WRITE_KEY)], b"Content-Type": [b"application/json"]})
        self.assertEqual(response.code, 200)
        self.assertEqual(sample("stilgar_events_accepted_total"), before + 1)
        self.assertEqual((app.stats.received, app.stats.accepted_events), (1, 1))


class TableLabelTests(unittest.TestCase):
    def test_metrics_knows_no_destination(self):
        import pathlib
        source = pathlib.Path(metrics.__file__).read_text()
        for name in ("tracks", "identifies", "rudder_discards", "clickhouse"):
            self.assertNotIn(f'"{name}"', source)

    def test_the_clickhouse_destination_supplies_bounded_table_labels(self):
        from stilgar.destinations.clickhouse.naming import BASE_TABLES, DISCARDS_TABLE, table_label
        for table in sorted(BASE_TABLES) + [DISCARDS_TABLE]:
            self.assertEqual(table_label(table), table)
        self.assertEqual(table_label("order_completed"), "event")
