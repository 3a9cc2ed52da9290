"""`--plot` of the experiment scripts (experiments/_plots.py): the figures of the stored results, drawn again without
computing anything.

One subprocess runs every script's `--plot` into a temporary folder (matplotlib is imported once) and reports which
heavy modules it imported. Then: the figure names are exactly the committed experiments/figures/ (none missing, none
stale) and experiments/README.md shows each one; each file is a PNG that Pillow decodes, of the committed file's pixel
size, under 100 KB and not blank; drawing is deterministic (a copy of a stored JSON outside experiments/results/ gets
its figures beside it, byte-identical to the stored JSON's); neither torch nor lightning is imported.
Without matplotlib (its import blocked), `--plot` prints one line naming the extra and exits 2, and the end of an
experiment run skips its figures with one line; a missing, broken or foreign result file is one line and exit 2.
"""

import json
import os
import re
import subprocess
import sys

import pytest
from helpers import REPO

EXPERIMENTS = REPO / "experiments"
SCRIPTS = sorted(p for p in EXPERIMENTS.glob("*.py") if not p.name.startswith("_"))
COMMITTED = {p.name: p for p in (EXPERIMENTS / "figures").glob("*.png")}
COPIED = "heat_objective"  # the stored result that is also drawn from a copy outside experiments/results/

DRIVER = r"""
import json, runpy, shutil, sys
from pathlib import Path
experiments, tmp = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, str(experiments))
(tmp / "copy").mkdir()
copy = tmp / "copy" / (sys.argv[3] + ".json")
shutil.copy(experiments / "results" / copy.name, copy)
runs = [(s, ["--plot", "--figures", str(tmp / "figures")]) for s in sorted(experiments.glob("[!_]*.py"))]
runs.append((experiments / (sys.argv[3] + ".py"), ["--plot", str(copy)]))
for script, args in runs:
    sys.argv = [str(script), *args]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:
        if exc.code:
            raise
(tmp / "report.json").write_text(json.dumps({m: m in sys.modules for m in ("torch", "lightning", "transformers")}))
"""


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    pytest.importorskip("matplotlib")
    tmp = tmp_path_factory.mktemp("figures")
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(EXPERIMENTS), str(tmp), COPIED], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, proc.stdout


def test_every_stored_result_gives_the_committed_figures(drawn):
    tmp, stdout = drawn
    made = {p.name: p for p in (tmp / "figures").glob("*.png")}
    assert set(made) == set(COMMITTED), (sorted(set(made) - set(COMMITTED)), sorted(set(COMMITTED) - set(made)))
    printed = {line.rsplit("/", 1)[-1] for line in stdout.splitlines() if line.endswith(".png")}
    assert set(made) <= printed  # --plot prints one path a line
    for script in SCRIPTS:  # each script draws something from each of its stored results
        for result in (EXPERIMENTS / "results").glob(f"{script.stem}*.json"):
            if result.stem == script.stem or result.stem.startswith(script.stem + "_"):
                assert any(name.startswith(result.stem + "_") for name in made), result.name


def test_figures_are_valid_small_pngs(drawn):
    from PIL import Image

    tmp, _ = drawn
    for path in sorted((tmp / "figures").glob("*.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path.name
        assert path.stat().st_size <= 100_000, (path.name, path.stat().st_size)
        with Image.open(path) as im:
            assert im.format == "PNG"
            im.verify()
        with Image.open(path) as im, Image.open(COMMITTED[path.name]) as ref:
            assert im.size == ref.size, path.name
            assert len(im.convert("RGB").getcolors(1 << 16)) >= 8, f"{path.name} looks blank"


def test_drawing_is_deterministic_and_defaults_beside_the_json(drawn):
    tmp, _ = drawn
    beside = sorted((tmp / "copy").glob("*.png"))
    assert beside and all(p.name.startswith(COPIED + "_") for p in beside)
    for path in beside:
        assert path.read_bytes() == (tmp / "figures" / path.name).read_bytes(), path.name


def test_plot_imports_no_heavy_module(drawn):
    tmp, _ = drawn
    assert json.loads((tmp / "report.json").read_text()) == {"torch": False, "lightning": False, "transformers": False}


def test_readme_shows_every_figure():
    text = (EXPERIMENTS / "README.md").read_text(encoding="utf-8")
    shown = set(re.findall(r"\]\(figures/([\w.-]+\.png)\)", text))
    assert COMMITTED and shown == set(COMMITTED), (sorted(set(COMMITTED) - shown), sorted(shown - set(COMMITTED)))


def test_plot_without_matplotlib_is_one_line_and_exit_2(tmp_path):
    block = ("import runpy, sys; sys.modules['matplotlib'] = None; sys.path.insert(0, 'experiments'); "
             "script = sys.argv[1]; sys.argv = [script, '--plot', '--figures', sys.argv[2]]; "
             "runpy.run_path(script, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", block, f"experiments/{COPIED}.py", str(tmp_path / "out")], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "matplotlib" in lines[0] and "'.[plots]'" in lines[0], proc.stderr
    assert lines[0].startswith(f"{COPIED}.py: error: ")
    assert proc.stdout == "" and not (tmp_path / "out").exists()


def test_a_run_without_matplotlib_skips_its_figures_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    import _plots

    def render(payload):
        fig, (ax,) = _plots.figure()
        ax.plot([0, 1], [payload["y"], 1])
        yield "line", fig

    assert _plots.figures_after_run({"y": 0}, tmp_path / "result.json", render) == []
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("figures skipped: ") and "'.[plots]'" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_plot_of_a_bad_file_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    import _plots

    def render(payload):
        yield "x", payload["runs"][0]["final_val"]

    (tmp_path / "other.json").write_text('{"runs": [{"norm": "pre"}]}')
    (tmp_path / "broken.json").write_text('{"runs": [')
    for name, says in (("missing.json", "FileNotFoundError"), ("broken.json", "JSONDecodeError"),
                       ("other.json", "not a result file of this script (KeyError: 'final_val')")):
        with pytest.raises(SystemExit) as exc:
            _plots.plot_stored([tmp_path / name], [], render, tmp_path / "figures")
        assert exc.value.code == 2
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1 and name in err and says in err, err
    assert not (tmp_path / "figures").exists()
