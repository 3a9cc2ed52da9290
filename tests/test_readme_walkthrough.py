"""scripts/readme_walkthrough.py (issue 24's acceptance: the README top to bottom in a fresh clone, every command
working). The fast tests read README.md: every command it holds meets a named rule, one it does not know stops the
walk, the inputs its commands read are made by earlier commands, and shown output is matched on its stable parts.
The slow test runs the whole walk (4–10 min on 2 CPU cores, by their load)."""

import importlib.util
import re
import subprocess
import sys

import pytest
from helpers import REPO

SCRIPT = REPO / "scripts" / "readme_walkthrough.py"
_spec = importlib.util.spec_from_file_location("readme_walkthrough", SCRIPT)
walk = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = walk  # dataclasses look their module up
_spec.loader.exec_module(walk)


def readme_plan():
    steps, problems = walk.plan((REPO / "README.md").read_text(encoding="utf-8"))
    assert problems == []
    return steps


def test_every_readme_command_meets_a_rule():
    steps = readme_plan()
    by_action = {}
    for step in steps:
        by_action.setdefault(step.rule.action, []).append(step.command)
    assert by_action["fit"][0] == "kslm fit --config configs/lm/gau.yaml"  # the quick start comes first
    assert "kslm fit --config configs/lm/gau.yaml --ckpt_path checkpoints/gau/last.ckpt" in by_action["fit"]
    assert [c.split()[:2] for c in by_action["serve"]] == [["kslm", "serve"]]
    assert len(by_action["python"]) == 1 and "kslm.load(" in by_action["python"][0]
    assert any(c.startswith("kslm export ") for c in by_action["run"])
    assert any("experiments/" in c for c in by_action["help"]) and any("bench/" in c for c in by_action["help"])
    assert {s.rule.name for s in steps if s.rule.action == "skip"} == {"install", "test suite", "several GPUs"}
    shell = [s.command for s in steps if s.kind != "python"]
    assert not [c for c in shell if re.search(r"\\ |\\$|\s#", c)]  # continuations joined, comments cut


def test_readme_output_is_attached_to_its_command():
    steps = readme_plan()
    quick = steps[[s.rule.action for s in steps].index("fit")]
    assert any(line.startswith("kslm: fit gau/version_0 (a new run)") for line in quick.expect)
    assert any(line.startswith("`Trainer.fit` stopped") for line in quick.expect)  # the second block: the log's end
    error = [s for s in steps if walk.expected_code(s) == 2]
    assert [s.rule.name for s in error] == ["README error"] and error[0].expect[0].startswith("kslm: error: unknown option")
    export = next(s for s in steps if s.command.startswith("kslm export"))
    assert export.expect and export.expect[0].startswith("kslm: exported LanguageModel")
    nbce = next(s for s in steps if "configs/nbce/kslm-lm.yaml" in s.command)
    assert nbce.expect == ["kslm: wrote N predictions to out.jsonl"]  # said in prose (PROSE_OUTPUT)
    assert all(not s.expect for s in steps if s.section == "Layout")


def test_the_inputs_readme_commands_read_are_made_by_earlier_commands():
    written = set()
    for step in readme_plan():
        for name in re.findall(r"--data\.predict_file (\S+)", step.command):
            assert (REPO / name).exists() or name in written, f"README.md:{step.line}: nothing makes {name}"
        written |= set(re.findall(r"> ?(\S+)$", step.command))
    assert {"prompts.txt", "in.jsonl"} <= written


@pytest.mark.parametrize("readme, unknown", [
    ("```bash\nkslm fit --config configs/lm/gau.yaml\nmake everything   # new\n```\n", "make everything"),
    ("```\n$ kslm frobnicate --all\n```\n", "kslm frobnicate --all"),
    ("```bash\nkslm fit --config configs/new/x.yaml\n```\n", "configs/new/x.yaml"),  # no shrink rule for it
    ("```console\n$ kslm --help\n```\n", "```console"),
    ("```\nkslm: wrote 3 predictions\n$ kslm export --ckpt_path a --out b\n```\n", "before any `$` line"),
])
def test_an_unknown_readme_command_stops_the_walk(tmp_path, capsys, readme, unknown):
    steps, problems = walk.plan("# kslm\n\n## Somewhere\n\n" + readme)
    assert len(problems) == 1 and unknown in problems[0]
    fake = tmp_path / "README.md"
    fake.write_text("# kslm\n\n## Somewhere\n\n" + readme, encoding="utf-8")
    assert walk.main(["--list", "--readme", str(fake)]) == 1
    assert unknown in capsys.readouterr().err


def test_bash_lines_join_continuations_and_lose_comments_not_quoted_hashes():
    steps, problems = walk.extract("```bash\nkslm predict --ckpt_path a \\\n    --data.predict_file in.jsonl   # note\n"
                                   "printf '%s\\n' '# not a comment' > p.txt  # a comment\n```\n")
    assert problems == [] and [s.command for s in steps] == [
        "kslm predict --ckpt_path a --data.predict_file in.jsonl", "printf '%s\\n' '# not a comment' > p.txt"]
    assert [s.line for s in steps] == [2, 4]


def test_shown_output_matches_on_its_stable_parts(tmp_path):
    cache = tmp_path / "cache"
    step = walk.Step("bash", "kslm fit --config configs/lm/gau.yaml", 1, "Quick start", expect=[
        "LM data: tokenized 1.6 MB of text in 1.6 s (0.97 MB/s, 1 processes) into 2943 blocks at "
        "~/.cache/kslm/lm-blocks/c5419249ef5910fce1a3",
        "kslm: fit gau/version_0 (a new run): checkpoints in checkpoints/gau/version_0/",
        "step 290/300 | loss 4.801 | lr 1.0e-04 | 2,133 tok/s | ETA 11s",
        "step 300/300 | loss 4.89 | lr 1.0e-04 | 2,214 tok/s | ETA 0s"])
    printed = (f"GPU available: False, used: False\nLM data: tokenized 1.6 MB of text in 1.0 s (1.62 MB/s, 1 processes) "
               f"into 2943 blocks at {cache}/lm-blocks/a8e63091cfb93bc3e693\n"
               "kslm: fit gau/version_0 (a new run): checkpoints in checkpoints/gau/version_0/\n"
               "step 10/20 | loss 8.388 | lr 5.5e-04 | 2,868 tok/s | ETA 7s\nstep 20/20 | loss 7.228 | lr 1.0e-04 | 12 tok/s | ETA 0s\n")
    assert walk.check_output(step, printed, 0, cache) == ""
    assert "exit code 1" in walk.check_output(step, printed, 1, cache)
    assert "version_0" in walk.check_output(step, printed.replace("version_0", "version_1"), 0, cache)
    assert "a new run" in walk.check_output(step, printed.replace("a new run", "resumed"), 0, cache)
    assert "step 300/300" in walk.check_output(step, printed.replace("step 20/20", "done"), 0, cache)  # two step lines
    assert "lm-blocks" in walk.check_output(step, printed.replace(str(cache), "/elsewhere"), 0, cache)


def test_a_readme_error_is_exactly_its_line_and_exit_code_2(tmp_path):
    line = "kslm: error: unknown option --model.backbone.nrom (did you mean --model.backbone.norm?)"
    step = walk.Step("$", "kslm fit --config configs/lm/transformer.yaml --model.backbone.nrom post", 1, "Errors",
                     expect=[line])
    assert walk.check_output(step, line + "\n", 2, tmp_path) == ""
    assert "exit code 0" in walk.check_output(step, line + "\n", 0, tmp_path)
    assert "printed" in walk.check_output(step, "Traceback (most recent call last):\n" + line + "\n", 2, tmp_path)


@pytest.mark.slow
def test_the_readme_walkthrough_passes():
    done = subprocess.run([sys.executable, str(SCRIPT), "--working-tree"], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=3600)
    assert done.returncode == 0, done.stdout[-6000:]
    assert re.search(r"readme walkthrough: (\d+)/\1 ok", done.stdout)
