"""What a run leaves and prints: its own checkpoint folder beside its TensorBoard version (no run overwrites another's),
the `last.ckpt` link to the latest run, the final validation in the top-k, progress lines in a log file, and none of
Lightning's noise (issue 14); the run's name and plain logs (issue 24).

One subprocess (standard output and error into one file, as `kslm fit … > log 2>&1`, its own empty kslm cache) runs
seven commands in a fresh folder with the CLI's default folders: fit A (12 steps, validations at 6 and 12, monitor
val/loss, top-1), fit B (a 6-step re-run), fit C (`--ckpt_path last`: B resumed to step 9), predict D (from the link,
no config), a 2-step NER fit E named `ner-sample`, validate F (the link, no config) and validate G (E's checkpoint, no
config, its validation file)."""

import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from helpers import CLUENER, REPO, ner_args, run_cli, scalars, tiny_args

DRIVER = """
import sys, json
from kslm.cli import main
for name, args in json.loads(open(sys.argv[1]).read()):
    print(f"=== {name}", flush=True)
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    print(f"=== end {name} {code}", flush=True)
"""

NOISE = ["💡", "litlogger", "FLOPs", "No seed found", "not resumable", "dirpath has changed", "exists and is not empty",
         "site-packages", "hp_metric", "Traceback"]


def _default_folders(args):
    """tiny_args without its --checkpoint.dirpath (the CLI's per-run folders) and with its progress bar allowed."""
    i = args.index("--checkpoint.dirpath")
    args = args[:i] + args[i + 2:]
    i = args.index("--trainer.enable_progress_bar")
    return args[:i] + args[i + 2:]


@pytest.fixture(scope="module")
def runs(small_corpus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    (tmp / "prompts.txt").write_text("The class\n", encoding="utf-8")
    base = _default_folders(tiny_args(small_corpus, tmp))
    commands = [
        ("A", ["fit", *base, "--trainer.max_steps", "12", "--trainer.val_check_interval", "6",
               "--trainer.log_every_n_steps", "3", "--checkpoint.monitor", "val/loss", "--checkpoint.save_top_k", "1",
               "--trainer.enable_model_summary", "true"]),
        ("B", ["fit", *base, "--trainer.max_steps", "6", "--trainer.val_check_interval", "6"]),
        ("C", ["fit", *base, "--trainer.max_steps", "9", "--trainer.val_check_interval", "6",
               "--trainer.log_every_n_steps", "1", "--ckpt_path", "last"]),
        ("D", ["predict", "--ckpt_path", "checkpoints/transformer/last.ckpt", "--data.predict_file", "prompts.txt",
               "--model.max_new_tokens", "2", "--predictions.path", "out.jsonl"]),
        ("E", ["fit", *_default_folders(ner_args(tmp, steps=2)), "--name", "ner-sample"]),  # an extraction task
        ("F", ["validate", "--ckpt_path", "checkpoints/transformer/last.ckpt", "--data.data_files", str(small_corpus),
               "--data.val_fraction", "0.05", "--trainer.limit_val_batches", "2"]),
        ("G", ["validate", "--ckpt_path", "checkpoints/ner-sample/last.ckpt", "--data.val_file", str(CLUENER)]),
    ]
    (tmp / "commands.json").write_text(json.dumps(commands), encoding="utf-8")
    (tmp / "driver.py").write_text(DRIVER, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "KSLM_CACHE": str(tmp / "cache")}  # a first run: the corpus is tokenized (datasets' progress, if any, shows)
    with open(tmp / "log", "w") as log:
        proc = subprocess.run([sys.executable, "-u", "driver.py", "commands.json"], cwd=tmp, env=env, stdout=log,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=600)
    text = (tmp / "log").read_text(encoding="utf-8", errors="replace")
    assert proc.returncode == 0, text[-3000:]
    outputs = {}
    for name, _ in commands:
        start, end = text.index(f"=== {name}\n"), text.index(f"=== end {name} ")
        outputs[name] = text[start:end]
        assert text[end:].startswith(f"=== end {name} 0"), text[start:][:3000]
    return SimpleNamespace(tmp=tmp, out=outputs, log=text, ckpt=tmp / "checkpoints" / "transformer",
                           logs=tmp / "logs" / "transformer")


def _step(path):
    return torch.load(path, weights_only=True)["global_step"]


def test_each_run_has_its_own_folder_and_last_links_the_latest(runs):
    assert sorted(p.name for p in runs.ckpt.iterdir()) == ["last.ckpt", "version_0", "version_1"]
    logs = sorted(p.name for p in runs.logs.iterdir())  # the same N as the checkpoints; validate F takes no number
    assert [n for n in logs if n.startswith("version_")] == ["version_0", "version_1"]
    assert len(logs) == 3 and re.fullmatch(r"validate-\d{8}-\d{6}", [n for n in logs if "validate" in n][0]), logs
    link = runs.ckpt / "last.ckpt"
    assert link.is_symlink() and os.readlink(link) == os.path.join("version_1", "last.ckpt")  # relative
    # A is untouched by B and C: its final checkpoint and its best stay, next to no one else's
    assert sorted(p.name for p in (runs.ckpt / "version_0").iterdir()) == ["epoch=0-step=12.ckpt", "last.ckpt"]
    assert _step(runs.ckpt / "version_0" / "last.ckpt") == 12
    # C resumed B in B's folders (version_1): its last.ckpt is C's end, no version_2 anywhere
    assert _step(link) == 9 and _step(runs.ckpt / "version_1" / "last.ckpt") == 9
    assert len(list((runs.logs / "version_1").glob("events.out.tfevents.*"))) == 2  # B's and C's events
    assert "Restoring states from the checkpoint path at checkpoints/transformer/last.ckpt" in runs.out["C"]


def test_the_final_validation_is_in_the_top_k(runs):
    """A's validations at steps 6 and 12: its loss fell, so the kept top-1 is step 12's (it was step 6's)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (runs.logs / "version_0").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    val = {e.step: e.value for e in acc.Scalars("val/loss")}
    assert sorted(val) == [5, 11] and val[11] < val[5], val  # (Lightning's logging step is global_step - 1)
    best = [p for p in (runs.ckpt / "version_0").iterdir() if p.name != "last.ckpt"]
    assert [p.name for p in best] == ["epoch=0-step=12.ckpt"]
    assert _step(best[0]) == 12


def test_progress_lines_in_a_log_file(runs):
    lines = [line for line in runs.out["A"].splitlines() if line.startswith("step ")]
    assert [line.split(" | ")[0] for line in lines] == ["step 3/12", "step 6/12", "step 9/12", "step 12/12"]
    for line in lines:
        fields = line.split(" | ")
        assert fields[1].startswith("loss ") and float(fields[1].split()[1]) > 0
        assert fields[2].startswith("lr ") and fields[-1].startswith("ETA ") and "tok/s" in fields[3], line
    vals = [line for line in runs.out["A"].splitlines() if line.startswith("validation ")]
    assert [v.split(":")[0] for v in vals] == ["validation step 6", "validation step 12"]
    assert all("val/loss " in v and "val/ppl " in v for v in vals), vals
    # the resumed run counts from its resumed step toward its own max_steps
    steps = [line.split(" | ")[0] for line in runs.out["C"].splitlines() if line.startswith("step ")]
    assert steps == ["step 7/9", "step 8/9", "step 9/9"]
    assert "━" not in runs.log and "it/s" not in runs.log  # no bar frames in a file
    (val,) = [line for line in runs.out["E"].splitlines() if line.startswith("validation ")]
    assert val.startswith("validation step 2: val/loss ") and " | val/f1 " in val, val


def test_no_noise_and_the_intended_tensorboard_tags(runs):
    for noise in NOISE:
        assert noise not in runs.log, (noise, runs.log[-4000:])
    assert "parameters" in runs.out["A"] and "modules: " in runs.out["A"]  # the summary, in one line
    # predict D logs nothing (it would make logs/default/version_0); E's name is its own, not the config's
    assert sorted(p.name for p in (runs.tmp / "logs").iterdir()) == ["ner-sample", "transformer"]
    assert sorted(p.name for p in (runs.tmp / "checkpoints").iterdir()) == ["ner-sample", "transformer"]
    tags = set(scalars(runs.logs / "version_0"))
    assert tags == {"lr-AdamW", "train/loss", "train/tokens_per_sec", "train/flops_per_sec", "val/loss", "val/ppl",
                    "epoch"}, tags
    hparams = (runs.logs / "version_0" / "hparams.yaml").read_text(encoding="utf-8")
    for key in ("backbone:", "  d_model: 32", "optim:", "penalty:"):
        assert f"\n{key}" in hparams, hparams
    assert "_instantiator" not in hparams


def test_a_fit_says_where_its_run_goes_and_logs_plain_lines(runs):
    a = runs.out["A"]
    assert ("kslm: fit transformer/version_0 (a new run): checkpoints in checkpoints/transformer/version_0/, "
            "checkpoints/transformer/last.ckpt links to the latest") in a
    assert "kslm: logs in logs/transformer/version_0/ (tensorboard --logdir logs)" in a
    assert "kslm: fit transformer/version_1 (resumed in its folders)" in runs.out["C"]
    assert "kslm: fit ner-sample/version_0 (a new run)" in runs.out["E"]
    # kslm's own data lines (they were never shown), and no carriage return of a progress bar in the log file
    assert re.search(r"^LM data: tokenized [\d.]+ MB of text in .* into \d+ blocks at ", a, re.M), a[:3000]
    assert a.count("LM data: ") == 2, a[:3000]  # the tokenizing (once), then the train / val split
    assert "LM data: reusing the token cache" in runs.out["B"]
    assert re.search(r"^ner data: \d+ train windows, \d+ val records", runs.out["E"], re.M)
    assert "\r" not in runs.log


def test_validate_prints_one_results_table_in_the_readmes_units(runs):
    f, g = runs.out["F"], runs.out["G"]
    for out in (f, g):
        assert "┏" not in out and "Validate metric" not in out, out  # Lightning's table is not printed too
    assert "kslm: validate transformer: logs in logs/transformer/validate-" in f  # (the name from the path)
    (line,) = [x for x in f.splitlines() if x.startswith("kslm: validate: ")]
    assert re.fullmatch(r"kslm: validate: val/loss [\d.]+ \| val/ppl [\d.]+", line), line
    # E's checkpoint without its config, on its validation file: the per-type table, then one line whose F1 (in %)
    # is the one E's last validation printed
    assert "kslm: val scores per entity type (precision, recall, F1 in %)" in g
    (line,) = [x for x in g.splitlines() if x.startswith("kslm: validate: ")]
    f1 = re.search(r" val/f1 (\d+\.\d%) ", line + " ").group(1)
    (fit,) = [x for x in runs.out["E"].splitlines() if x.startswith("validation step 2:")]
    assert f" val/f1 {f1} " in fit + " ", (line, fit)


# --------------------------------------------------------------------------------------------- kslm.cli.folders
def test_next_and_resumed_version(tmp_path):
    from kslm.cli.folders import next_version, resumed_version

    logs, ckpts = tmp_path / "logs", tmp_path / "ckpts"
    assert next_version(logs, ckpts) == 0
    (logs / "version_3").mkdir(parents=True)
    (ckpts / "version_5").mkdir(parents=True)
    (ckpts / "version_9.txt").write_text("")  # not a folder
    assert next_version(logs, ckpts) == 6
    (ckpts / "version_5" / "last.ckpt").write_bytes(b"x")
    (ckpts / "version_5" / "epoch=0-step=1.ckpt").write_bytes(b"x")
    (ckpts / "last.ckpt").symlink_to("version_5/last.ckpt")
    assert resumed_version(ckpts / "last.ckpt", ckpts) == 5
    assert resumed_version(ckpts / "version_5" / "last.ckpt", ckpts) == 5
    assert resumed_version(ckpts / "version_5" / "epoch=0-step=1.ckpt", ckpts) is None  # an earlier state: a new run
    assert resumed_version(tmp_path / "elsewhere" / "last.ckpt", ckpts) is None
    assert resumed_version(None, ckpts) is None


def test_point_link_replaces_atomically_and_keeps_an_old_file(tmp_path):
    from kslm.cli.folders import point_link

    for n in (0, 1):
        (tmp_path / f"version_{n}").mkdir()
        (tmp_path / f"version_{n}" / "last.ckpt").write_bytes(b"run %d" % n)
    link = tmp_path / "last.ckpt"
    link.write_bytes(b"old kslm")  # a last.ckpt file written before run folders
    assert point_link(link, tmp_path / "version_0" / "last.ckpt") == (True, tmp_path / "last-unversioned.ckpt")
    assert (tmp_path / "last-unversioned.ckpt").read_bytes() == b"old kslm"
    assert link.read_bytes() == b"run 0" and os.readlink(link) == os.path.join("version_0", "last.ckpt")
    assert point_link(link, tmp_path / "version_1" / "last.ckpt") == (True, None)
    assert link.read_bytes() == b"run 1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last-unversioned.ckpt", "last.ckpt", "version_0", "version_1"]


def test_step_bar_counts_the_run_from_the_resumed_step():
    from kslm.cli.progress import LogProgress, StepProgressBar, progress_bar

    bar = StepProgressBar()
    trainer = SimpleNamespace(global_step=32, estimated_stepping_batches=300, current_epoch=2)
    bar.on_train_start(trainer, None)
    tq = bar.train_progress_bar
    assert (tq.n, tq.total, tq.initial) == (32, 300, 32) and tq.desc.startswith("Epoch 2")
    tq.close()
    assert isinstance(progress_bar(SimpleNamespace(isatty=lambda: True)), StepProgressBar)
    assert isinstance(progress_bar(SimpleNamespace(isatty=lambda: False)), LogProgress)


def test_run_names_and_evaluation_folders(tmp_path):
    from kslm.cli.folders import eval_version, name_error

    for good in ("gau", "weibo-egp", "cluener_egp.v2", "run+1"):
        assert name_error(good) is None, good
    for bad in ("", ".", "..", "../x", "a/b", "-x", ".hidden", "two words"):
        assert name_error(bad) is not None and "--name" in name_error(bad), bad
    first = eval_version(tmp_path, "validate")
    assert re.fullmatch(r"validate-\d{8}-\d{6}", first)
    (tmp_path / first).mkdir()
    second = eval_version(tmp_path, "validate")  # within the same second: a suffix, never a version number
    assert second != first and not second.startswith("version_")


def test_a_new_run_removes_the_link_and_a_run_stopped_before_its_first_step_leaves_nothing(tmp_path):
    from kslm.cli.folders import discard_run, start_run

    base = tmp_path / "checkpoints" / "gau"
    (base / "version_0").mkdir(parents=True)
    (base / "version_0" / "last.ckpt").write_bytes(b"run 0")
    link = base / "last.ckpt"
    link.symlink_to("version_0/last.ckpt")
    old = start_run(link)
    assert old == "version_0/last.ckpt" and not link.exists() and not link.is_symlink()
    # run 1 wrote its startup files only, then stopped: its folders go, the link comes back
    logs = tmp_path / "logs" / "gau" / "version_1"
    logs.mkdir(parents=True)
    (logs / "config.yaml").write_text("x")
    (logs / "events.out.tfevents.1.host").write_bytes(b"")
    (base / "version_1").mkdir()
    assert discard_run(base / "version_1", logs, link, old)
    assert not logs.exists() and not (base / "version_1").exists() and link.read_bytes() == b"run 0"
    # a run that saved something keeps everything
    (base / "version_2").mkdir()
    (base / "version_2" / "last.ckpt").write_bytes(b"run 2")
    assert not discard_run(base / "version_2", tmp_path / "logs" / "gau" / "version_2", link, None)
    assert (base / "version_2" / "last.ckpt").exists()
    # a file that is not a link (a kslm from before run folders) is not touched at the start
    (base / "last.ckpt").unlink()
    (base / "last.ckpt").write_bytes(b"old")
    assert start_run(base / "last.ckpt") is None and (base / "last.ckpt").read_bytes() == b"old"


def test_last_never_names_the_previous_run_once_a_new_one_trains(small_corpus, workdir, capsys, monkeypatch):
    """Fit A; fit B fails in its data setup (its log folder made): one line, no folders left, the link still on A, no
    number taken; fit C: while it trains before its first checkpoint there is no link (A's would be resumed by
    `--ckpt_path last`), then the link names C's."""
    import kslm.cli.interrupt

    base = _default_folders(tiny_args(small_corpus, workdir, "--trainer.enable_progress_bar", "false"))
    assert run_cli(["fit", *base, "--trainer.max_steps", "2"], capsys)[0] == 0
    link = workdir / "checkpoints" / "transformer" / "last.ckpt"
    assert os.readlink(link) == os.path.join("version_0", "last.ckpt")
    code, err = run_cli(["fit", *base, "--data.batch_size", "100000"], capsys)  # not one training batch: setup fails
    lines = [line for line in err.splitlines() if line.startswith("kslm:")]  # (before the run's own lines)
    assert code == 2 and len(lines) == 1 and "data.batch_size" in lines[0], err
    assert os.readlink(link) == os.path.join("version_0", "last.ckpt")
    assert sorted(p.name for p in link.parent.iterdir()) == ["last.ckpt", "version_0"]
    assert sorted(p.name for p in (workdir / "logs" / "transformer").iterdir()) == ["version_0"]
    seen = []

    def requested(trainer):  # (asked after each batch or validation: no stop, the link's state recorded)
        seen.append((trainer.global_step, link.is_symlink()))
        return 0

    monkeypatch.setattr(kslm.cli.interrupt, "requested", requested)
    code, err = run_cli(["fit", *base, "--trainer.max_steps", "3", "--trainer.val_check_interval", "2"], capsys)
    assert code == 0 and "kslm: fit transformer/version_1 (a new run)" in err, err
    assert seen == [(1, False), (2, True)], seen  # none at step 1; C's own after step 2's validation saved
    assert os.readlink(link) == os.path.join("version_1", "last.ckpt")
