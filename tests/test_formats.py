"""kslm.data.formats: the registry, read_records_with_lines, and its import structure (format modules import only
the shared formats.jsonl, kslm.errors and kslm.io's bounded JSON reader). The readers' records and error messages are tested in test_spans.py."""

import ast
import json

import pytest
from helpers import REPO, SAMPLES, import_graph

from kslm.data.formats import FORMATS, JSONL_FORMATS, format_names, read_any, read_records_with_lines, sniff_format
from kslm.errors import DataError

FORMATS_DIR = REPO / "kslm" / "data" / "formats"


def test_format_modules_import_only_the_shared_jsonl_module():
    graph = import_graph(REPO / "kslm")
    for path in sorted(FORMATS_DIR.glob("*.py")):
        if path.name == "__init__.py":
            continue
        mod = f"kslm.data.formats.{path.stem}"
        allowed = {"kslm.errors", "kslm.io"} | ({"kslm.data.formats.jsonl"} if path.stem != "jsonl" else set())
        assert graph[mod] <= allowed, f"{mod} imports {sorted(graph[mod] - allowed)}"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assert not any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tree.body), mod
    assert "kslm.data.readers" not in graph and "kslm.data.re_readers" not in graph


# ------------------------------------------------------------------------------------------- registry


def test_registry_names_tasks_and_jsonl_formats():
    assert list(FORMATS) == ["cluener", "cmeee", "bio", "duie", "cmeie", "webnlg", "canonical"]
    assert format_names("ner") == ("cluener", "cmeee", "bio", "canonical")
    assert format_names("re") == ("duie", "cmeie", "webnlg", "canonical")
    assert JSONL_FORMATS == {"cluener", "canonical", "duie", "cmeie"}
    assert FORMATS["cmeie"].reader is FORMATS["duie"].reader
    for name, fmt in FORMATS.items():
        assert fmt.tasks and set(fmt.tasks) <= {"ner", "re"}, name
        assert fmt.reader.__module__.startswith("kslm.data.formats."), name


def test_unknown_format_names_the_registered_ones():
    with pytest.raises(DataError, match=r"unknown format 'xml'; expected auto or one of \('cluener', 'cmeee', 'bio', "
                                        r"'duie', 'cmeie', 'webnlg', 'canonical'\)"):
        read_any(SAMPLES / "bio.txt", fmt="xml")


def test_cannot_sniff_names_the_registered_ones(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"sentence": "甲"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"x.jsonl:1: cannot tell the format from keys \['sentence'\]: give "
                                        r"--data.format \(one of cluener, .*canonical\)$"):
        sniff_format(f)


def test_read_records_with_lines_numbers_jsonl_lines_and_array_records(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text('\n{"text": "甲乙", "label": {}}\n\n\n{"text": "丙", "label": {"x": {"丙": [[0, 0]]}}}\n', encoding="utf-8")
    assert [(r["line"], r["text"]) for r in read_records_with_lines(f)] == [(2, "甲乙"), (5, "丙")]
    g = tmp_path / "m.json"
    g.write_text(json.dumps([{"text": "甲", "entities": []}, {"text": "乙", "entities": []}]), encoding="utf-8")
    assert [(r["line"], r["text"]) for r in read_records_with_lines(g)] == [(1, "甲"), (2, "乙")]
    recs = read_records_with_lines(SAMPLES / "webnlg.json", "webnlg", skip_unlocatable=True)
    assert [r["line"] for r in recs] == list(range(1, len(recs) + 1)) and all("triples" in r for r in recs)
