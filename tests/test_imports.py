"""kslm's import structure: no import cycles (imports inside functions counted), and the layering the README's
"What may import what" table states — arrows point down only, nn/heads/losses/optim never import lightning,
data never reads the model through the Trainer and tasks never read the data module through it."""

import ast
import re

from helpers import REPO, import_graph, modules


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




def _lightning_free(mod: str) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in ("kslm.nn", "kslm.heads", "kslm.losses", "kslm.optim"))


def test_pure_torch_floors_never_import_lightning_or_upper_floors():
    """nn/, heads/, losses.py, optim/ import torch (and kslm.errors, each other downwards) only."""
    upper = ("kslm.tasks", "kslm.data", "kslm.cli", "kslm.checkpoint", "kslm.metrics", "kslm.hf", "kslm.export",
             "kslm.inference", "kslm.serve", "kslm.io")
    for mod, path in modules(REPO / "kslm").items():
        if not _lightning_free(mod):
            continue
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(import|from)\s+(lightning|pytorch_lightning)\b", text, re.M), mod
        bad = {t for t in import_graph(REPO / "kslm")[mod] if t.startswith(upper)}
        assert not bad, f"{mod} imports {sorted(bad)}"
        if mod.startswith("kslm.nn"):
            assert not any(t.startswith(("kslm.heads", "kslm.optim", "kslm.losses"))
                           for t in import_graph(REPO / "kslm")[mod]), mod


def test_layers_point_down():
    """The README's table: who may import whom, checked on the real graph."""
    graph = import_graph(REPO / "kslm")
    never = {
        "kslm.io": ("kslm.",), "kslm.errors": ("kslm.",), "kslm.precision": ("kslm.",),
        "kslm.checkpoint": ("kslm.hf", "kslm.data", "kslm.tasks", "kslm.export", "kslm.inference", "kslm.cli"),
        "kslm.hf": ("kslm.tasks", "kslm.export", "kslm.inference", "kslm.serve", "kslm.cli"),
        "kslm.cli.connect": ("kslm.tasks", "kslm.cli.trainer", "kslm.cli.callbacks"),
        "kslm.data": ("kslm.hf", "kslm.tasks", "kslm.export", "kslm.inference", "kslm.cli"),
        "kslm.tasks": ("kslm.export", "kslm.inference", "kslm.serve", "kslm.cli"),
        "kslm.export": ("kslm.tasks", "kslm.inference", "kslm.serve", "kslm.cli"),
    }
    for mod, targets in graph.items():
        for prefix, banned in never.items():
            if mod == prefix or mod.startswith(prefix + "."):
                bad = sorted(t for t in targets if t.startswith(banned))
                assert not bad, f"{mod} imports {bad}"


def test_no_module_reaches_through_the_trainer():
    """Data flows one way (cli → tasks, data): no task reads trainer.datamodule, no data module reads
    trainer.lightning_module."""
    for folder in ("kslm/data", "kslm/tasks"):
        for path in sorted((REPO / folder).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            assert "trainer.datamodule" not in text and "trainer.lightning_module" not in text, path


def test_bench_and_experiments_do_not_import_tests():
    for path in sorted([*(REPO / "bench").glob("*.py"), *(REPO / "experiments").glob("*.py")]):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "tests" or n.startswith(("tests.", "conftest", "helpers")) for n in names), path


# ------------------------------------------------------------------------------------- the README's allow-list
def readme_allow_list() -> list:
    """[(row's modules, the kslm modules they may import)] from the README's "What may import what" table: a cell's
    backticked names (`tasks/`, `data/tokenizer`, `cli.py`, `data/*`) name modules or whole folders; "everything
    below" is every module of the rows under it; `__init__.py` is the package itself."""
    mods = set(modules(REPO / "kslm"))
    text = (REPO / "README.md").read_text(encoding="utf-8").split("**What may import what**", 1)[1]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| `")]
    rows = rows[: next(i for i, r in enumerate(rows) if r[0].startswith("`bench/`"))]

    def expand(cell: str) -> set:
        out = set()
        for name in re.findall(r"`([^`]+)`", cell):
            if name.endswith("__init__.py"):  # a package itself: `__init__.py` is kslm, `cli/__init__.py` kslm.cli
                out.add(".".join(["kslm", *name.split("/")[:-1]]))
                continue
            dotted = "kslm." + name.rstrip("/*").removesuffix(".py").replace("/", ".").rstrip(".")
            found = {m for m in mods if m == dotted or m.startswith(dotted + ".")}
            if "/" in name or name.endswith(".py") or found:
                assert found, f"the README's table names {name!r}, which is no module of kslm"
            out |= found
        return out

    table = []
    for i, (who, may) in enumerate(rows):
        allowed = expand(may) if "standard library" not in may else set()
        if "everything below" in may:
            allowed |= set().union(*(expand(w) for w, _ in rows[i + 1:]))
        table.append((expand(who), allowed))
    return table


def test_imports_follow_the_readme_allow_list():
    """Every module is in exactly one row of the table, and imports only what its row allows (or its own folder)."""
    table, graph = readme_allow_list(), import_graph(REPO / "kslm")
    rows_of = {m: [i for i, (own, _) in enumerate(table) if m in own] for m in graph}
    assert not [m for m, rows in rows_of.items() if len(rows) != 1], \
        {m: rows for m, rows in rows_of.items() if len(rows) != 1}
    wrong = {}
    for mod, targets in graph.items():
        allowed = table[rows_of[mod][0]][1] | {"kslm._version"}
        folder = mod.rpartition(".")[0] if mod.count(".") > 1 else mod
        outside = {t for t in targets - allowed if not (t == folder or t.startswith(folder + "."))}
        if outside:
            wrong[mod] = sorted(outside)
    assert not wrong, f"imports outside the README's allow-list: {wrong}"


def test_the_allow_list_check_can_fail():
    """The table's reading is not vacuous: a module in a lower row may not import one in a higher row."""
    table = readme_allow_list()
    (checkpoint_row,) = [allowed for own, allowed in table if "kslm.checkpoint" in own]
    assert "kslm.tasks.base" not in checkpoint_row and "kslm.cli.trainer" not in checkpoint_row
    (nn_row,) = [allowed for own, allowed in table if "kslm.nn.backbone" in own]
    assert not any(m.startswith(("kslm.data", "kslm.tasks", "kslm.checkpoint")) for m in nn_row)
    (hf_row,) = [allowed for own, allowed in table if "kslm.hf.reader" in own]
    assert not any(m.startswith(("kslm.tasks", "kslm.cli", "kslm.export", "kslm.inference")) for m in hf_row)
    assert not any(m.startswith("kslm.hf") for m in checkpoint_row)
    (data_row,) = [allowed for own, allowed in table if "kslm.data.tokenizer" in own]
    assert not any(m.startswith(("kslm.hf", "kslm.tasks", "kslm.cli")) for m in data_row)
