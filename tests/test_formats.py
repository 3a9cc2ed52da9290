"""kslm.data.formats: the registry, read_records_with_lines, and the import structure (no cycles anywhere in kslm;
format modules import only the shared formats.jsonl and kslm.errors). The readers' records and error messages are
tested in test_spans.py."""

import ast
import json
from pathlib import Path

import pytest

from kslm.data.formats import FORMATS, JSONL_FORMATS, format_names, read_any, read_records_with_lines, sniff_format
from kslm.errors import DataError

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples"
FORMATS_DIR = REPO / "kslm" / "data" / "formats"


# ------------------------------------------------------------------------------------------- import graph


def modules(package_dir: Path) -> dict[str, Path]:
    """Dotted module name → file, for every .py under `package_dir` (a package's __init__.py is the package)."""
    out = {}
    for p in sorted(package_dir.rglob("*.py")):
        parts = p.relative_to(package_dir.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module → the package's modules it imports, at module level or inside functions / classes / conditionals
    (every Import / ImportFrom node of its AST), absolute or relative. `from a.b import c` is an edge to the module
    a.b.c if there is one, else to a.b; an import names the module it names, not the packages above it."""
    mods = modules(package_dir)

    def known(name):
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets |= {known(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: level 1 is this module's package, 2 its parent, …
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] +
                                    ([node.module] if node.module else []))
                else:
                    base = node.module
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in mods else known(base) for a in node.names}
        graph[mod] = targets - {None, mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a → … → a) through each strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, comps = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    found = []
    for comp in comps:  # the shortest way back to the component's first module (breadth first inside it)
        start = min(comp)
        prev, queue, last = {start: None}, [start], None
        for v in queue:
            if start in graph[v]:
                last = v
                break
            for w in sorted(graph[v] & comp):
                if w not in prev:
                    prev[w] = v
                    queue.append(w)
        path = []
        while last is not None:
            path.append(last)
            last = prev[last]
        found.append(path[::-1] + [start])
    return sorted(found)


def test_import_graph_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .b import g\n")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n    return b\n")
    (pkg / "sub" / "b.py").write_text("import json\n\ndef g():\n    from ..a import f\n")
    (pkg / "c.py").write_text("from pkg.sub import g\n")
    graph = import_graph(pkg)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.sub.b"}, "pkg.sub": {"pkg.sub.b"}, "pkg.sub.b": {"pkg.a"},
                     "pkg.c": {"pkg.sub"}}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.a"]]


def test_no_import_cycles_in_kslm():
    """No kslm module imports one that (directly or through others) imports it back, counting imports inside
    functions: a cycle works only while the import order happens to suit it."""
    found = cycles(import_graph(REPO / "kslm"))
    assert not found, "import cycles: " + "; ".join(" → ".join(c) for c in found)


def test_format_modules_import_only_the_shared_jsonl_module():
    graph = import_graph(REPO / "kslm")
    for path in sorted(FORMATS_DIR.glob("*.py")):
        if path.name == "__init__.py":
            continue
        mod = f"kslm.data.formats.{path.stem}"
        allowed = {"kslm.errors"} | ({"kslm.data.formats.jsonl"} if path.stem != "jsonl" else set())
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
    with pytest.raises(DataError, match=r"x.jsonl:1: cannot tell the format from keys \['sentence'\]; pass fmt= "
                                        r"\(one of \('cluener', .*'canonical'\)\)"):
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
