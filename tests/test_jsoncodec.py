"""stilgar.jsoncodec: the one place that picks the JSON libraries."""

import ast
import os

from twisted.trial.unittest import TestCase

from stilgar import jsoncodec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class JsonCodecTests(TestCase):
    def test_round_trip(self):
        value = {"a": [1, 2.5, None, True, "é\u2028"], "b": {"c": ""}}
        self.assertEqual(jsoncodec.loads(jsoncodec.dumps(value)), value)
        self.assertEqual(jsoncodec.dumps({"a": "é"}), '{"a":"é"}'.encode())

    def test_big_integers_survive_a_round_trip(self):
        # A spool record is written by dumps and read back by loads on replay:
        # an integer beyond 64 bits must come back as the same int (orjson's
        # loads turned it into a float, so a replay wrote another row).
        for big in (2**64, -(2**63) - 1, 123456789012345678901234567890):
            back = jsoncodec.loads(jsoncodec.dumps({"a": big}))["a"]
            self.assertEqual(back, big)
            self.assertIs(type(back), int)

    def test_loads_accepts_str_and_memoryview(self):
        self.assertEqual(jsoncodec.loads('{"a":1}'), {"a": 1})
        self.assertEqual(jsoncodec.loads(memoryview(b'{"a":1}')), {"a": 1})

    def test_fast_decoder_is_strict(self):
        for bad in (b"", b"{", b'{"a":NaN}', b'{"a":1} x', b'{"a":"\xff"}'):
            self.assertRaises(ValueError, jsoncodec.fast_loads, bad)

    def test_one_place_imports_the_libraries(self):
        # Every other module of stilgar/ takes orjson and msgspec from jsoncodec.
        offenders = []
        for folder, _, files in os.walk(os.path.join(ROOT, "stilgar")):
            for name in files:
                path = os.path.join(folder, name)
                if not name.endswith(".py") or path.endswith(os.path.join("stilgar", "jsoncodec.py")):
                    continue
                if path.endswith(os.path.join("clickhouse", "tsv.py")):
                    continue  # moved to jsoncodec on the chdest branch (issue 10)
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read())
                for node in ast.walk(tree):
                    names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                             else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                    if any(n.split(".")[0] in ("orjson", "msgspec") for n in names):
                        offenders.append(os.path.relpath(path, ROOT))
        self.assertEqual(offenders, [])
