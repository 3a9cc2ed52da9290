"""The front door (issue 24, item 3): one verb table behind `kslm --help`, `kslm --version`, did-you-mean for a verb,
a short `kslm VERB --help` whose every option exists (the full list one flag away, `--help-all`), all answered
without importing torch or Lightning; Lightning's `--optimizer` / `--lr_scheduler` are not offered."""

import json
import os
import re
import subprocess
import sys

import pytest
from bad_inputs import cli, one_error_line
from helpers import REPO

GAU = str(REPO / "configs" / "lm" / "gau.yaml")

LIGHT = """
import contextlib, io, json, sys
from kslm.cli import main
out = {}
for args in json.loads(sys.argv[1]):
    buf, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
            main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out[" ".join(args)] = [code, buf.getvalue(), err.getvalue()]
out["heavy"] = sorted(m for m in ("torch", "lightning", "jsonargparse", "datasets") if m in sys.modules)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def light():
    """The answers that must come without torch or Lightning, from one fresh Python."""
    commands = [[], ["--help"], ["--version"], ["exprot"], ["--config"], *([v, "--help"] for v in
                                                                             ("fit", "validate", "test", "predict", "score",
                                                                              "export", "consolidate", "serve"))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", LIGHT, json.dumps(commands)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_help_version_and_a_misspelt_verb_import_neither_torch_nor_lightning(light):
    assert light.pop("heavy") == [], "kslm --help / --version / VERB --help imported a heavy package"
    from kslm.cli import VERBS

    code, out, _ = light["--help"]
    assert code == 0 and light[""] == light["--help"]  # bare `kslm` prints the same list
    listed = [line.split()[0] for line in out.split("verbs:\n")[1].split("\n\n")[0].splitlines()]
    assert listed == [v.name for v in VERBS] == ["fit", "validate", "test", "predict", "score", "export", "consolidate",
                                                "serve"]
    for v in VERBS:
        assert f"  {v.name}" in out and v.summary in out
    code, out, _ = light["--version"]
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(encoding="utf-8"), re.M).group(1)
    assert code == 0 and out.startswith(f"kslm {version} (torch ") and "lightning " in out
    code, _, err = light["exprot"]
    assert code == 2 and err.strip() == ("kslm: error: kslm exprot: no such command (one of fit, validate, test, "
                                         "predict, score, export, consolidate, serve; did you mean kslm export?)")
    code, _, err = light["--config"]
    assert code == 2 and err.startswith("kslm: error: --config: the verb comes first") and len(err.splitlines()) == 1


def test_every_verb_runs_its_entry():
    """Each row of the table names a function that exists (a verb added later is one row: serve)."""
    import importlib

    from kslm.cli import VERBS

    for v in VERBS:
        module, _, function = v.entry.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), v
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^\[project\.scripts\]\nkslm = "kslm\.cli:main"\n', pyproject, re.M)  # the console script


def _options(text: str) -> set:
    return set(re.findall(r"(?<![\w.-])(--[a-z_]+(?:\.[a-z_]+)*)", text))


TASKS = ("LanguageModel", "EntityExtraction", "RelationExtraction", "NBCE")
DATA = ("LMDataModule", "NERDataModule", "REDataModule", "NBCEDataModule")


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """Every option the parsers know: Lightning's full help of each verb, and each task's and data module's."""
    import contextlib
    import io

    from kslm.cli import main

    os.chdir(tmp_path_factory.mktemp("help"))
    out = {}
    for args in ([[v, "--help-all"] for v in ("fit", "validate", "test", "predict")] +
                 [["predict", "--model.help", t] for t in TASKS] + [["predict", "--data.help", d] for d in DATA]):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            try:
                main(args)
            except SystemExit as exc:
                assert exc.code in (0, None), args
        out[" ".join(args)] = buf.getvalue()
    os.chdir(REPO)
    return out


@pytest.mark.parametrize("verb", ["fit", "validate", "test", "predict"])
def test_verb_help_is_short_and_every_option_in_it_exists(light, full, verb):
    code, short, _ = light[f"{verb} --help"]
    assert code == 0 and short.startswith(f"usage: kslm {verb}") and len(short.splitlines()) <= 60, short
    assert f"kslm {verb} --help-all" in short and "--name NAME" in short and "--model.help CLASS" in short
    whole = full[f"{verb} --help-all"]  # Lightning's whole list
    assert len(whole.splitlines()) > 300 and whole.startswith("usage: kslm ")
    assert "Lightning Trainer command line tool" not in whole
    assert "--optimizer" not in _options(whole) and "--lr_scheduler" not in _options(whole)
    known = _options(" ".join(full.values()))
    named = {o for o in _options(short) if not o.endswith((".KEY", ".help"))} - {"--help-all", "--help"}
    assert named and named <= known, sorted(named - known)
    for cls in (*TASKS, *DATA):  # the classes it names are kslm's
        assert cls in short


def test_lightnings_optimizer_options_are_gone(workdir, capsys):
    for option in (["--optimizer", "Adam"], ["--lr_scheduler", "StepLR"], ["--optimizer.lr", "0.1"]):
        code, err = cli(["fit", "--config", GAU, *option], capsys)
        one_error_line(code, err, f"unknown option {option[0]}", "--model.optim")


def test_validate_and_test_from_a_checkpoint_without_config(ckpts, workdir, capsys):
    """validate / test take the task, settings and tokenizer from --ckpt_path, as predict does; the data files,
    which a checkpoint does not hold, come from the command line (NER / RE wanted --data.train_file)."""
    from helpers import CANONICAL, CLUENER

    for task, data in (("ner", CLUENER), ("re", CANONICAL)):
        code, err = cli(["validate", "--ckpt_path", str(ckpts[task]), "--data.val_file", str(data)], capsys)
        assert code == 0 and re.search(r"^kslm: validate: val/loss [\d.]+ \| val/f1 \d+\.\d% ", err, re.M), err
        code, err = cli(["test", "--ckpt_path", str(ckpts[task]), "--data.val_file", str(data)], capsys)
        assert code == 0 and "kslm: note: no --data.test_file: kslm test evaluates the validation split" in err, err
        assert re.search(r"^kslm: test: test/loss [\d.]+ \| test/f1 \d+\.\d% ", err, re.M), err
        code, err = cli(["validate", "--ckpt_path", str(ckpts[task])], capsys)
        one_error_line(code, err, "kslm validate needs labelled records: --data.val_file FILE", "data.val_file")
    code, err = cli(["validate", "--ckpt_path", str(ckpts["lm"]), "--trainer.limit_val_batches", "1"], capsys)
    assert code == 0 and "kslm: note: a checkpoint holds no data paths: without --config, kslm validate reads the " \
                         "embedded corpus" in err, err


def test_last_without_a_config_names_the_run(ckpts, workdir, capsys):
    """`--ckpt_path last` means the latest run's last.ckpt; without a config the run is --name's, and a verb without
    a model says how to give one (a checkpoint, for validate / test / predict)."""
    import shutil

    from helpers import CLUENER

    code, err = cli(["validate", "--ckpt_path", "last", "--data.val_file", str(CLUENER)], capsys)
    one_error_line(code, err, "--ckpt_path last without --config", "--name NAME")
    code, err = cli(["validate", "--ckpt_path", "last", "--name", "nerrun"], capsys)
    one_error_line(code, err, "checkpoints/nerrun/last.ckpt: checkpoint not found", "ckpt_path")
    (workdir / "checkpoints" / "nerrun").mkdir(parents=True)
    shutil.copyfile(ckpts["ner"], workdir / "checkpoints" / "nerrun" / "last.ckpt")
    code, err = cli(["validate", "--ckpt_path=last", "--name", "nerrun", "--data.val_file", str(CLUENER)], capsys)
    assert code == 0 and re.search(r"^kslm: validate: val/loss [\d.]+ \| val/f1 ", err, re.M), err[-2000:]
    for verb in ("validate", "test", "predict"):
        code, err = cli([verb], capsys)
        one_error_line(code, err, f"{verb}.model", "--ckpt_path FILE")
    code, err = cli(["fit"], capsys)
    one_error_line(code, err, "fit.model", "kslm fit --config")


@pytest.mark.parametrize("args", [["consolidate"], ["export", "--out", "x"], ["score", "--gold", "g"],
                                  ["serve"], ["serve", "--ckpt_path", "x", "--port", "80"], ["serve", "--ckpt_path", "x", "--bogus", "1"]])
def test_every_other_verbs_mistake_is_one_line(args, workdir, capsys):
    code, err = cli(args, capsys)
    one_error_line(code, err, f"kslm {args[0]}:")
