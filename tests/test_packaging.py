"""contrib/ and packaging: the alert rules (promtool), the Grafana dashboard, the systemd unit, the .deb."""

import json
import os
import re
import shutil
import subprocess

from twisted.trial import unittest

from stilgar import metrics

from .processes import ROOT

CONTRIB = os.path.join(ROOT, "contrib")
_METRIC_RE = re.compile(r"\b((?:stilgar|process|python)_[a-z_]+)\b")


def exported_names():
    """Every series name /metrics can show (histogram and counter suffixes included)."""
    names = set()
    for family in metrics.REGISTRY.collect():
        names.add(family.name)
        for s in family.samples:
            names.add(s.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_count", "_sum"))
    return names


def referenced(expr):
    return set(_METRIC_RE.findall(expr))


class AlertRulesTests(unittest.TestCase):
    path = os.path.join(CONTRIB, "prometheus", "alerts.yml")

    def test_every_metric_referenced_exists(self):
        import yaml
        with open(self.path) as f:
            doc = yaml.safe_load(f)
        names = exported_names()
        alerts = [rule for group in doc["groups"] for rule in group["rules"]]
        self.assertTrue({"StilgarSpoolFilling", "StilgarDestinationDown", "StilgarDiscardsRising",
                         "StilgarServerErrors", "StilgarBacklogNotDraining"} <= {a["alert"] for a in alerts})
        for rule in alerts:
            missing = referenced(rule["expr"]) - names
            self.assertEqual(missing, set(), rule["alert"])

    def promtool(self, *args):
        promtool = shutil.which("promtool")
        if promtool is None:
            raise unittest.SkipTest("promtool not installed (Debian: apt-get install prometheus)")
        return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)

    def test_promtool_check_rules(self):
        result = self.promtool("check", "rules", self.path)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("SUCCESS", result.stdout)

    def test_promtool_unit_tests_of_the_rules(self):
        result = self.promtool("test", "rules", os.path.join(CONTRIB, "prometheus", "alerts_test.yml"))
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)


class DashboardTests(unittest.TestCase):
    """A schema-ish check of contrib/grafana/stilgar.json (Grafana's dashboard JSON model)."""

    PANEL_TYPES = {"row", "timeseries", "stat", "gauge", "table", "bargauge", "text", "heatmap"}

    def setUp(self):
        with open(os.path.join(CONTRIB, "grafana", "stilgar.json")) as f:
            self.dashboard = json.load(f)

    def test_top_level(self):
        d = self.dashboard
        for key, kind in (("title", str), ("uid", str), ("panels", list), ("schemaVersion", int),
                          ("templating", dict), ("time", dict), ("tags", list)):
            self.assertIsInstance(d.get(key), kind, key)
        self.assertLessEqual(len(d["uid"]), 40)
        variables = {v["name"] for v in d["templating"]["list"]}
        self.assertEqual(variables, {"datasource", "instance"})

    def test_panels(self):
        ids, cells = set(), set()
        for panel in self.dashboard["panels"]:
            self.assertIn(panel["type"], self.PANEL_TYPES, panel.get("title"))
            self.assertNotIn(panel["id"], ids)
            ids.add(panel["id"])
            self.assertTrue(panel.get("title"))
            grid = panel["gridPos"]
            self.assertTrue(all(isinstance(grid[k], int) for k in ("h", "w", "x", "y")), panel["title"])
            self.assertLessEqual(grid["x"] + grid["w"], 24, panel["title"])
            for x in range(grid["x"], grid["x"] + grid["w"]):
                for y in range(grid["y"], grid["y"] + grid["h"]):
                    self.assertNotIn((x, y), cells, f"{panel['title']} overlaps another panel")
                    cells.add((x, y))
            if panel["type"] == "row":
                continue
            self.assertEqual(panel["datasource"], {"type": "prometheus", "uid": "${datasource}"})
            self.assertTrue(panel["targets"], panel["title"])
            refs = [t["refId"] for t in panel["targets"]]
            self.assertEqual(len(refs), len(set(refs)), panel["title"])

    def test_every_metric_referenced_exists(self):
        names = exported_names()
        seen = set()
        for panel in self.dashboard["panels"]:
            for target in panel.get("targets", []):
                missing = referenced(target["expr"]) - names
                self.assertEqual(missing, set(), f"{panel['title']}: {target['expr']}")
                seen |= referenced(target["expr"])
        for name in ("stilgar_spool_max_bytes", "stilgar_http_request_duration_seconds_bucket",
                     "stilgar_build_info", "process_resident_memory_bytes"):
            self.assertIn(name, seen)
