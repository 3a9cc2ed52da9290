"""Smoke test of every bench/ and experiments/ script, which nothing else runs: `python SCRIPT --table` re-prints the
markdown table of the script's stored results (bench/results/, experiments/results/) without computing anything.

Per script: exit status 0; table rows ("| … |") that show numbers of each stored JSON file; and neither torch,
lightning nor transformers imported (`-X importtime`), which keeps the whole file at a few seconds.
"""

import json
import os
import re
import subprocess
import sys

import pytest
from helpers import REPO

GENERATORS = {"make_corpus.py",  # writes input data, keeps no results (tested below)
              "gpu_facts.py", "gpu_fit.py"}  # phases bench/gpu_check.py runs: their results are gpu_check.json's
SCRIPTS = sorted(p.relative_to(REPO).as_posix() for folder in ("bench", "experiments") for p in (REPO / folder).glob("*.py")
                 if 'if __name__ == "__main__":' in p.read_text(encoding="utf-8") and p.name not in GENERATORS)
HEAVY = re.compile(r"\|\s+(torch|lightning|transformers)(\.|\s*$)")  # a -X importtime line importing one of them
DECIMAL = re.compile(r"-?\d+\.\d*[1-9]")  # a printed decimal that says something: "0.985", "2.3143"; not "1.00"


def stored_results(script: str) -> list:
    """The script's stored result files: results/<name>.json and results/<name>_*.json beside it."""
    path = REPO / script
    results = path.parent / "results"
    return sorted(results.glob(f"{path.stem}.json")) + sorted(results.glob(f"{path.stem}_*.json"))


def floats(obj):
    if isinstance(obj, float):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from floats(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from floats(v)


def renderings(payload) -> set:
    """The ways a table prints the stored floats (fixed decimals, 3 significant digits, percent)."""
    out = set()
    for x in floats(payload):
        for s in (*(f"{x:.{n}f}" for n in range(1, 5)), f"{x:.3g}", f"{100 * x:.1f}"):
            if DECIMAL.fullmatch(s):
                out.add(s)
    return out


def shown(numbers: set, rows: list) -> list:
    """The numbers that appear as a whole number (not inside a longer one) in one of the table rows."""
    text = "\n".join(rows)
    return [s for s in numbers if re.search(rf"(?<![\d.]){re.escape(s)}(?!\d)", text)]


def test_every_script_is_covered():
    assert len(SCRIPTS) >= 17, SCRIPTS  # bench: 5, experiments: 12
    assert "experiments/_common.py" not in SCRIPTS and "bench/machine.py" not in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_table_reprints_stored_results(script):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-X", "importtime", script, "--table"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    imports = [line for line in proc.stderr.splitlines() if line.startswith("import time:")]
    errors = "\n".join(line for line in proc.stderr.splitlines() if not line.startswith("import time:"))
    assert proc.returncode == 0, errors
    heavy = [line for line in imports if HEAVY.search(line)]
    assert not heavy, f"--table imported heavy modules: {heavy[:3]}"
    stored = stored_results(script)
    if not stored:  # nothing kept: one clear line
        assert len(proc.stdout.strip().splitlines()) == 1 and "no stored results" in proc.stdout
        return
    rows = [line for line in proc.stdout.splitlines() if line.startswith("|") and line.rstrip().endswith("|")]
    assert rows, f"no markdown table in:\n{proc.stdout}"
    for path in stored:
        numbers = renderings(json.loads(path.read_text(encoding="utf-8")))
        assert shown(numbers, rows), f"no number of {path.name} in the table:\n{proc.stdout}"


def test_make_corpus_writes_shuffled_paragraphs(tmp_path):
    """bench/make_corpus.py: a corpus of the size asked, in paragraphs of 4-24 lines, from the shared datasets."""
    data = REPO.parent / "shared" / "data"
    if not (data / "chinese_poetry").is_dir():
        pytest.skip("../shared/data is not beside the repository")
    out = tmp_path / "c.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "bench/make_corpus.py", str(out), "--mb", "0.2"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text(encoding="utf-8")
    assert 200_000 <= len(text.encode("utf-8")) < 200_000 + 24 * 2_000
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    assert all(1 <= len(p.splitlines()) <= 24 for p in paragraphs) and len(paragraphs) > 10
    assert [f.name for f in tmp_path.iterdir()] == ["c.txt"]  # no temporary file left
