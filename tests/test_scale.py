"""Scale-out paths: 2-rank CPU DDP (gloo) in subprocesses running the real CLI, and bf16-mixed.

The DDP runs are the suite's most expensive tests: each starts `kslm fit --trainer.devices 2`, whose rank 1 Lightning
launches only once rank 0 has imported and set everything up, so a run is mostly one process working while the other
waits. The two runs that cover both gradient penalties and both EG / Amos optimisers are therefore started together
(one module fixture, both cores busy) at the fewest steps that carry optimiser state from one update into the next,
and every DDP check below reads their outputs."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO, run_cli, tiny_args

DDP_STEPS = 2
DDP_MODEL = ["--model.backbone.n_layers", "1"]  # tiny_args' 2 layers halved: still >1000 parameters to compare
DDP_RUNS = {  # every run also gathers parameters and optimiser state of both ranks (tests/ddp_sync_check.py)
    # this one in the CLI's own run folders, with progress lines (checkpoints/transformer/version_0, one printer)
    "parameter-penalty+eg": ["--model.penalty.kind", "parameter", "--model.penalty.weight", "0.5",
                             "--model.optim.name", "eg_adamw", "--checkpoint.dirpath", "null",
                             "--trainer.enable_progress_bar", "true"],
    "input-penalty+amos": ["--model.penalty.kind", "input", "--model.optim.name", "amos"],
}


def free_ports(n):
    """n distinct free TCP ports (held open together, so no two are the same)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="module")
def ddp_runs(small_corpus, tmp_path_factory):
    """Every DDP_RUNS entry as `python -m kslm.cli fit` with 2 CPU ranks (gloo), all started at once, each on its own
    MASTER_PORT, in its own folder → {name: (folder, exit code, stderr)}."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")]))}
    procs = {}
    for (name, extra), port in zip(DDP_RUNS.items(), free_ports(len(DDP_RUNS)), strict=True):
        tmp = tmp_path_factory.mktemp(name)
        callbacks = json.dumps([{"class_path": "ddp_sync_check.RankSyncCheck",
                                 "init_args": {"out": str(tmp / "sync.json")}}])
        args = tiny_args(small_corpus, tmp, "--trainer.devices", "2", "--trainer.strategy", "ddp",
                         "--trainer.accelerator", "cpu", "--trainer.callbacks", callbacks, *DDP_MODEL, *extra,
                         steps=DDP_STEPS)
        with open(tmp / "stderr.txt", "w") as err:
            procs[name] = tmp, subprocess.Popen(
                [sys.executable, "-m", "kslm.cli", "fit", *args], cwd=tmp, env={**env, "MASTER_PORT": str(port)},
                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    deadline = time.monotonic() + 420
    runs = {}
    try:
        for name, (tmp, proc) in procs.items():
            code = proc.wait(timeout=max(deadline - time.monotonic(), 1))
            runs[name] = tmp, code, (tmp / "stderr.txt").read_text(encoding="utf-8", errors="replace")
    finally:
        for _, proc in procs.values():  # after a timeout: the run and the rank it launched
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return runs


def test_ddp_two_cpu_ranks(ddp_runs):
    tmp, code, stderr = ddp_runs["parameter-penalty+eg"]
    assert code == 0, stderr[-3000:]
    # both ranks agree on the run's folder; rank 0 alone writes, links and prints progress
    runs = tmp / "checkpoints" / "transformer"
    assert sorted(p.name for p in runs.iterdir()) == ["last.ckpt", "version_0"]
    assert os.readlink(runs / "last.ckpt") == os.path.join("version_0", "last.ckpt")
    assert sorted(p.name for p in (tmp / "logs" / "transformer").iterdir()) == ["version_0"]
    ckpt = torch.load(runs / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == DDP_STEPS
    assert stderr.count(f"step {DDP_STEPS}/{DDP_STEPS} | loss ") == 1, stderr[-3000:]
    # Lightning announces both gloo ranks
    assert "MEMBER: 2/2" in stderr or "distributed_backend=gloo" in stderr


@pytest.mark.parametrize("name", DDP_RUNS)
def test_ddp_ranks_stay_in_sync_with_penalties_and_optimisers(ddp_runs, name):
    """Under 2-rank DDP the parameter penalty's surrogate backward (and the input penalty's double backward) must
    still all-reduce the gradients, and EG / Amos state must follow: after training every rank holds the same
    parameters and optimiser state (gathered by tests/ddp_sync_check.py)."""
    tmp, code, stderr = ddp_runs[name]
    assert code == 0, stderr[-3000:]
    sync = json.loads((tmp / "sync.json").read_text(encoding="utf-8"))
    assert sync["world_size"] == 2 and sync["numel"] > 1000
    assert sync["max_abs_diff"] == {"params": 0.0, "optimizer_state": 0.0}, sync
    # the checkpoint keeps each rank's random state (they differ: rank 1 draws more), so a resume restores each its own
    last = next(tmp.rglob("last.ckpt"))
    rngs = torch.load(last, weights_only=True)["kslm"]["rngs"]
    assert [r["cpu"].tolist() for r in rngs] == sync["saved_rng"] and sync["saved_rng"][0] != sync["saved_rng"][1]


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


def test_each_rank_resumes_with_its_own_random_state():
    from kslm.checkpoint import Payload
    from kslm.tasks.random_state import own_random_state

    states = [{"cpu": torch.tensor([r], dtype=torch.uint8)} for r in range(2)]
    p = Payload(task="LanguageModel", tokenizer="{}", rng=states[0]["cpu"], rngs=states)
    assert own_random_state(p, 1, 2) is states[1] and own_random_state(p, 0, 2) is states[0]
    assert own_random_state(p, 2, 4)["cpu"] is states[0]["cpu"]  # another number of ranks: rank 0's
    old = Payload(task="LanguageModel", tokenizer="{}", rng=states[0]["cpu"])  # written before rngs existed
    assert own_random_state(old, 1, 2)["cpu"] is states[0]["cpu"]
    assert own_random_state(Payload(task="LanguageModel", tokenizer="{}"), 0, 1) is None
