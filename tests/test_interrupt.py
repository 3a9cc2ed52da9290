"""Ctrl-C keeps the work (issue 24, item 1): a fit stopped by SIGINT finishes its step, saves a resumable last.ckpt,
points the run's link at it, says `kslm: interrupted at step N — resume with --ckpt_path …` and exits 130; resumed
from there it ends with the weights of an uninterrupted run. One real SIGINT to a `kslm fit` subprocess; the stop
at a training step and at a validation in this process (kslm.cli.interrupt.requested answering as a signal would)."""

import os
import re
import signal
import subprocess
import sys

import pytest
import torch
from helpers import REPO, run_cli, tiny_args

COMMON = ["--model.backbone.dropout", "0.1", "--trainer.val_check_interval", "3", "--model.optim.total_steps", "40",
          "--trainer.log_every_n_steps", "1"]


def _run_folders(args):
    """tiny_args without --checkpoint.dirpath: the CLI's own run folders and link."""
    i = args.index("--checkpoint.dirpath")
    return args[:i] + args[i + 2:]


def _weights(path):
    return torch.load(path, weights_only=True)


def _same_weights(a, b):
    a, b = _weights(a), _weights(b)
    assert a["global_step"] == b["global_step"]
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k


def _uninterrupted(corpus, folder, steps, monkeypatch, capsys):
    folder.mkdir(exist_ok=True)
    monkeypatch.chdir(folder)
    code, err = run_cli(["fit", *tiny_args(corpus, folder, *COMMON, steps=steps)], capsys)
    assert code == 0, err
    return folder / "ckpt" / "last.ckpt"


@pytest.mark.parametrize("stop", [4, 3], ids=["between-validations", "at-a-validation"])
def test_an_interrupted_fit_saves_and_resumes_exactly(small_corpus, workdir, capsys, monkeypatch, stop):
    import kslm.cli.interrupt

    run = workdir / "run"
    run.mkdir()
    monkeypatch.chdir(run)
    asked = []

    def requested(trainer):  # a Ctrl-C during step `stop` (at step 3 a validation follows: it stops at its end)
        asked.append((trainer.global_step, trainer.validating))
        return int(signal.SIGINT) if trainer.global_step == stop else 0

    monkeypatch.setattr(kslm.cli.interrupt, "requested", requested)
    code, err = run_cli(["fit", *_run_folders(tiny_args(small_corpus, run, *COMMON, steps=9))], capsys)
    assert code == 130, err
    link = run / "checkpoints" / "transformer" / "last.ckpt"
    line = f"kslm: interrupted at step {stop} — resume with --ckpt_path checkpoints/transformer/last.ckpt"
    assert err.strip().splitlines()[-1] == line and "Traceback" not in err
    assert os.readlink(link) == os.path.join("version_0", "last.ckpt") and _weights(link)["global_step"] == stop
    assert (stop, stop == 3) in asked  # (a validation's end asked at step 3)
    monkeypatch.undo()
    monkeypatch.chdir(run)
    code, err = run_cli(["fit", *_run_folders(tiny_args(small_corpus, run, *COMMON, "--ckpt_path", "last", steps=9))],
                        capsys)
    assert code == 0, err
    assert sorted(p.name for p in (run / "checkpoints" / "transformer").iterdir()) == ["last.ckpt", "version_0"]
    _same_weights(link, _uninterrupted(small_corpus, workdir / "whole", 9, monkeypatch, capsys))


def test_ctrl_c_to_a_running_fit(small_corpus, workdir, capsys, monkeypatch, single_thread):
    """A real SIGINT, as from a terminal, to `kslm fit` in a subprocess (one thread, as the runs in this process)."""
    args = _run_folders(tiny_args(small_corpus, workdir, *COMMON, steps=200))
    i = args.index("--trainer.enable_progress_bar")
    args = args[:i] + args[i + 2:]  # its progress lines tell when training runs
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    # pytest-xdist's workers ignore SIGINT and an ignored SIGINT is inherited: the child starts with the default
    proc = subprocess.Popen([sys.executable, "-m", "kslm.cli", "fit", *args], cwd=workdir, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("step 2/200"):
                proc.send_signal(signal.SIGINT)
                break
        out = "".join(seen) + proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
    assert proc.returncode == 130, out[-3000:]
    m = re.search(r"^kslm: interrupted at step (\d+) — resume with --ckpt_path (\S+)$", out, re.M)
    assert m and m.group(2) == "checkpoints/transformer/last.ckpt", out[-3000:]
    step = int(m.group(1))
    assert 2 <= step < 40 and "Traceback" not in out and "attempting graceful shutdown" not in out, out[-3000:]
    assert "kslm: Ctrl-C: stopping after this step" in out
    link = workdir / "checkpoints" / "transformer" / "last.ckpt"
    assert _weights(link)["global_step"] == step and not list(link.parent.rglob("*.tmp"))
    code, err = run_cli(["fit", *_run_folders(tiny_args(small_corpus, workdir, *COMMON, "--ckpt_path", "last",
                                                        steps=step + 2))], capsys)
    assert code == 0, err
    _same_weights(link, _uninterrupted(small_corpus, workdir / "whole", step + 2, monkeypatch, capsys))


def test_a_second_signal_stops_at_once_and_the_handlers_come_back():
    import kslm.cli.interrupt as interrupt
    from kslm.io import Terminated

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    interrupt.arm()
    try:
        assert signal.getsignal(signal.SIGINT) is interrupt._on_signal
        interrupt._on_signal(signal.SIGINT, None)  # the first: a request
        trainer = type("T", (), {"world_size": 1, "received_sigterm": False})()
        assert interrupt.requested(trainer) == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            interrupt._on_signal(signal.SIGINT, None)
        with pytest.raises(Terminated):
            interrupt._on_signal(signal.SIGTERM, None)
    finally:
        interrupt.disarm()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    interrupt.arm()
    interrupt.disarm()
    sigterm = type("T", (), {"world_size": 1, "received_sigterm": True})()  # Lightning's own SIGTERM flag
    assert interrupt.requested(sigterm) == signal.SIGTERM
    stopped = interrupt.Interrupted(signal.SIGTERM, 7, "checkpoints/x/last.ckpt")
    assert stopped.code == 143 and str(stopped) == "stopped by SIGTERM at step 7 — resume with --ckpt_path " \
                                                    "checkpoints/x/last.ckpt"


def test_ctrl_c_outside_training_is_kslms_line_and_130(ckpts, workdir, capsys, monkeypatch):
    """Lightning turns a KeyboardInterrupt inside Trainer.validate into its own line and exit code 1."""
    from kslm.tasks.lm import LanguageModel

    def pressed(*args, **kwargs):
        raise KeyboardInterrupt

    before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(LanguageModel, "validation_step", pressed)
    code, err = run_cli(["validate", "--ckpt_path", str(ckpts["lm"])], capsys)
    assert code == 130 and err.strip().splitlines()[-1] == "kslm: interrupted", err
    assert "attempting graceful shutdown" not in err and "Traceback" not in err
    assert signal.getsignal(signal.SIGINT) == before  # (Lightning left it ignored)


def test_ctrl_c_to_rank_0_of_a_ddp_fit_stops_both_ranks_at_one_step(small_corpus, tmp_path):
    """2 CPU ranks (gloo); SIGINT to rank 0 only: rank 1 learns it through the step's all-reduce, both save the same
    step (the save is collective: ranks stopping at different steps would hang), one line, exit 130."""
    import json
    import time
    from pathlib import Path

    marker = tmp_path / "training"
    callbacks = json.dumps([{"class_path": "ddp_sync_check.MarkWhenTraining", "init_args": {"path": str(marker)}}])
    args = _run_folders(tiny_args(small_corpus, tmp_path, "--trainer.devices", "2", "--trainer.strategy", "ddp",
                                  "--trainer.accelerator", "cpu", "--trainer.callbacks", callbacks,
                                  "--trainer.limit_val_batches", "0", "--model.backbone.n_layers", "1", steps=100_000))
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "kslm.cli", "fit", *args], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        while not all(Path(f"{marker}.{r}").exists() for r in (0, 1)) and proc.poll() is None:
            assert time.monotonic() < deadline, "the ranks did not start training"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)  # rank 0, the launcher
        _, err = proc.communicate(timeout=120)  # (returns once rank 1, which shares the pipe, has ended too)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("kslm: interrupted")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    step = int(re.match(r"kslm: interrupted at step (\d+) — resume with --ckpt_path "
                        r"checkpoints/transformer/last\.ckpt$", lines[0]).group(1))
    assert _weights(tmp_path / "checkpoints" / "transformer" / "last.ckpt")["global_step"] == step >= 1
