"""Scale-out paths: 2-rank CPU DDP (gloo) in a subprocess running the real CLI, and bf16-mixed."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_cli, tiny_args


def test_ddp_two_cpu_ranks(small_corpus, tmp_path):
    args = tiny_args(small_corpus, tmp_path, "--trainer.devices", "2", "--trainer.strategy", "ddp",
                     "--trainer.accelerator", "cpu", steps=3)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "kslm.cli", "fit", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3
    # Lightning announces both gloo ranks
    assert "MEMBER: 2/2" in proc.stderr or "distributed_backend=gloo" in proc.stderr


@pytest.mark.parametrize("extra", [
    ["--model.penalty.kind", "parameter", "--model.penalty.weight", "0.5", "--model.optim.name", "eg_adamw"],
    ["--model.penalty.kind", "input", "--model.optim.name", "amos"],
], ids=["parameter-penalty+eg", "input-penalty+amos"])
def test_ddp_ranks_stay_in_sync_with_penalties_and_optimisers(small_corpus, tmp_path, extra):
    """Under 2-rank DDP the parameter penalty's surrogate backward (and the input penalty's double backward) must
    still all-reduce the gradients, and EG / Amos state must follow: after training every rank holds the same
    parameters and optimiser state (gathered by tests/ddp_sync_check.py)."""
    out = tmp_path / "sync.json"
    callbacks = json.dumps([{"class_path": "ddp_sync_check.RankSyncCheck", "init_args": {"out": str(out)}}])
    args = tiny_args(small_corpus, tmp_path, "--trainer.devices", "2", "--trainer.strategy", "ddp",
                     "--trainer.accelerator", "cpu", "--trainer.callbacks", callbacks, *extra, steps=3)
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "kslm.cli", "fit", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sync = json.loads(out.read_text(encoding="utf-8"))
    assert sync["world_size"] == 2 and sync["numel"] > 1000
    assert sync["max_abs_diff"] == {"params": 0.0, "optimizer_state": 0.0}, sync


def test_surviving_rank_reports_the_lost_rank_in_one_line(small_corpus, tmp_path):
    """Rank 0 killed (SIGKILL) mid-training: rank 1's next collective fails in gloo; it says so in one line naming
    both ranks — no traceback — and ends within seconds."""
    marker = tmp_path / "training"
    callbacks = json.dumps([{"class_path": "ddp_sync_check.MarkWhenTraining", "init_args": {"path": str(marker)}}])
    args = tiny_args(small_corpus, tmp_path, "--trainer.devices", "2", "--trainer.strategy", "ddp",
                     "--trainer.accelerator", "cpu", "--trainer.callbacks", callbacks, "--trainer.limit_val_batches", "0",
                     steps=100_000)
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "kslm.cli", "fit", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not all(Path(f"{marker}.{r}").exists() for r in (0, 1)) and proc.poll() is None:
        assert time.monotonic() < deadline, "the ranks did not start training"
        time.sleep(0.5)
    survivor = int(Path(f"{marker}.1").read_text())
    proc.kill()  # rank 0, the launcher
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=120)  # returns once rank 1, which shares the pipe, has ended
    assert time.monotonic() - t0 < 60
    lines = [line for line in err.splitlines() if line.startswith("kslm: error")]
    assert len(lines) == 1 and "DDP rank 1 of 2: rank 0 stopped" in lines[0], err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    stat = Path(f"/proc/{survivor}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"  # ended (a zombie, if unreaped)


def test_bf16_mixed_few_steps(small_corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for block in ("transformer", "gau"):
        code, err = run_cli(["fit", *tiny_args(small_corpus, tmp_path / block, "--trainer.precision", "bf16-mixed",
                                               "--model.backbone.block", block, steps=2)], capsys)
        assert code == 0, err
        ckpt = torch.load(tmp_path / block / "ckpt" / "last.ckpt", weights_only=True)
        assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in ckpt["state_dict"].values())


