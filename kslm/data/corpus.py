"""The embedded default corpus: natural English text that ships with every CPython, so `kslm fit` runs on a
fresh machine with no download.

It is the text of Python's own documentation topics (`pydoc_data.topics`, the reference manual's sections
as shown by `help()`) followed by the docstrings of the standard library's modules, classes and functions,
in sorted file order, until at least `min_chars` characters (default 1.5 M). Paragraphs are separated by a
blank line. The file is written once (atomically) into the cache directory; its content depends only on
the Python version.
"""

import ast
import sys
import sysconfig
from pathlib import Path

from kslm.io import write_text


def _docstrings(path: Path):
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) > 200:
                yield doc


def build_corpus(min_chars: int = 1_500_000) -> str:
    parts, total = [], 0
    try:
        from pydoc_data.topics import topics

        for key in sorted(topics):
            text = topics[key].strip()
            parts.append(text)
            total += len(text)
    except ImportError:  # some distributions split pydoc_data out; the docstrings alone suffice
        pass
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        if total >= min_chars:
            break
        if "test" in path.parts or "site-packages" in path.parts or "idlelib" in path.parts:
            continue
        for doc in _docstrings(path):
            parts.append(doc)
            total += len(doc)
    return "\n\n".join(parts) + "\n"


def embedded_corpus_path(cache_dir: Path) -> Path:
    path = Path(cache_dir) / f"embedded-corpus-py{sys.version_info.major}.{sys.version_info.minor}.txt"
    if not path.is_file():
        write_text(path, build_corpus())
    return path
