"""The shape of stilgar/: the import graph doc/design.md shows, no import circle, size limits.

Read from the source with ast (scripts/import-graph); nothing of stilgar is imported here.
"""

import ast
import importlib.machinery
import importlib.util
import pathlib
import re

from twisted.trial import unittest

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAX_CLASS_LINES = 300
MAX_FUNCTION_LINES = 50
# a function or class over its limit says why in one docstring line starting like this
REASON = re.compile(r"^\s*Long(:| because)\s*\S", re.MULTILINE)

# No import circle is known; a new one fails the test.
KNOWN_CIRCLES = set()

# Oversized code needs a 'Long:' reason in its docstring; none is allowlisted.
KNOWN_OVERSIZED = {}


# Code comments cite doc/ files of the repo, never the spec outside it (issue 10).
CITATION = re.compile(r"contract (section|§)|reference-[a-z]+(\.md)? (section|§)", re.IGNORECASE)
# No file cites the spec any more; a new citation fails the test.
KNOWN_CITING = set()


def load_import_graph():
    loader = importlib.machinery.SourceFileLoader("import_graph", str(ROOT / "scripts" / "import-graph"))
    spec = importlib.util.spec_from_loader("import_graph", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def documented_graph(text):
    """The lines of the fenced block that follows the import-graph marker of doc/design.md."""
    match = re.search(r"<!-- import-graph .*?-->\s*```\n(.*?)```", text, re.DOTALL)
    return match.group(1).splitlines() if match else None


def oversized(root=ROOT):
    """{"path:qualified.name": lines} of every class or function over its limit without a reason."""
    found = {}
    for path in sorted((root / "stilgar").rglob("*.py")):
        relative = path.relative_to(root).as_posix()

        def visit(node, prefix):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    name = prefix + child.name
                    lines = child.end_lineno - child.lineno + 1
                    limit = MAX_CLASS_LINES if isinstance(child, ast.ClassDef) else MAX_FUNCTION_LINES
                    if lines > limit and not REASON.search(ast.get_docstring(child) or ""):
                        found[f"{relative}:{name}"] = lines
                    visit(child, name + ".")
                else:
                    visit(child, prefix)
        visit(ast.parse(path.read_text(), str(path)), "")
    return found


class ImportGraphTests(unittest.TestCase):
    def setUp(self):
        self.graph = load_import_graph()

    def test_design_doc_shows_the_graph_of_the_code(self):
        shown = documented_graph((ROOT / "doc" / "design.md").read_text())
        self.assertIsNotNone(shown, "doc/design.md lost its import-graph block")
        self.assertEqual(shown, self.graph.layer_lines(),
                         "doc/design.md's import graph is stale: paste the output of scripts/import-graph")

    def test_no_import_circle(self):
        circles = self.graph.cycles(self.graph.module_graph())
        unexpected = [c for c in circles if tuple(c) not in KNOWN_CIRCLES]
        self.assertEqual(unexpected, [], "import circles in stilgar/")
        self.assertEqual(sorted(KNOWN_CIRCLES - {tuple(c) for c in circles}), [],
                         "a known circle is gone: delete it from KNOWN_CIRCLES")

    def test_no_circle_between_layers(self):
        circles = self.graph.cycles(self.graph.layer_graph())
        known = {tuple(m[len("stilgar."):] for m in c) for c in KNOWN_CIRCLES}
        self.assertEqual([c for c in circles if tuple(c) not in known], [])

    def test_circles_are_found(self):
        graph = {"a": ["b"], "b": ["c", "a"], "c": ["a"], "d": ["d"], "e": []}
        self.assertEqual(self.graph.cycles(graph), [["a", "b"], ["a", "b", "c"], ["d"]])

    def test_relative_and_lazy_imports_are_edges(self):
        modules = self.graph.module_graph()
        self.assertIn("stilgar.metrics", modules["stilgar.stats"])           # from . import metrics
        self.assertIn("stilgar.lifecycle", modules["stilgar.service"])
        self.assertIn("stilgar.web.routes", modules["stilgar.web.app"])       # from .routes import ...
        self.assertNotIn("stilgar.service", modules["stilgar.spool"])


class SizeTests(unittest.TestCase):
    def test_no_class_over_300_or_function_over_50_lines(self):
        found = oversized()
        new = {name: n for name, n in found.items() if name not in KNOWN_OVERSIZED}
        self.assertEqual(new, {}, "over the size limit: split it, or give a one-line 'Long: why' in its docstring")

    def test_the_allowlist_only_shrinks(self):
        found = oversized()
        fixed = sorted(name for name in KNOWN_OVERSIZED if name not in found)
        self.assertEqual(fixed, [], "fixed: delete these from KNOWN_OVERSIZED")

    def test_a_reason_line_exempts(self):
        self.assertTrue(REASON.search("Do things.\n\nLong: one table read top to bottom."))
        self.assertTrue(REASON.search("Long because the states read best in one place."))
        self.assertFalse(REASON.search("It is long."))


class CitationTests(unittest.TestCase):
    def citing(self):
        return {path.relative_to(ROOT).as_posix() for path in (ROOT / "stilgar").rglob("*.py")
                if CITATION.search(path.read_text())}

    def test_comments_cite_the_docs_of_the_repo(self):
        self.assertEqual(sorted(self.citing() - KNOWN_CITING), [],
                         "cite a doc/ file (doc/http.md, doc/events.md, doc/clickhouse.md, ...), not the spec")

    def test_the_list_of_citing_files_only_shrinks(self):
        self.assertEqual(sorted(KNOWN_CITING - self.citing()), [], "fixed: delete these from KNOWN_CITING")

    def test_the_pattern(self):
        for text in ("(contract section 2)", "CONTRACT sections 2, 3", "reference-clickhouse section 9",
                     "reference-stilgar.md section 5"):
            self.assertTrue(CITATION.search(text), text)
        self.assertFalse(CITATION.search("doc/clickhouse.md, \"Capabilities\""))
