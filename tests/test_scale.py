"""Scale-out paths: 2-rank CPU DDP (gloo) in a subprocess running the real CLI, and bf16-mixed."""

import os
import subprocess
import sys

import torch
from conftest import run_cli, tiny_args


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


def test_bf16_mixed_few_steps(small_corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for block in ("transformer", "gau"):
        code, err = run_cli(["fit", *tiny_args(small_corpus, tmp_path / block, "--trainer.precision", "bf16-mixed",
                                               "--model.backbone.block", block, steps=2)], capsys)
        assert code == 0, err
        ckpt = torch.load(tmp_path / block / "ckpt" / "last.ckpt", weights_only=True)
        assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in ckpt["state_dict"].values())


