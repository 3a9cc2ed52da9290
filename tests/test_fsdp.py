"""`--trainer.strategy fsdp2` with 2 CPU ranks (gloo), through the CLI in subprocesses (as tests/test_scale.py runs
DDP): sharded checkpoints, exact resume, consolidation, prediction from the consolidated file.

One module fixture runs, two at a time: an uninterrupted 4-step run and a 2-step run, then the 2-step run resumed
to step 4 from its sharded last.ckpt. Every check reads those outputs."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import REPO, run_cli, tiny_args
from test_scale import free_ports

from kslm.errors import CheckpointError

STEPS, STOP = 4, 2
COMMON = ["--trainer.devices", "2", "--trainer.strategy", "fsdp2", "--trainer.accelerator", "cpu",
          "--model.backbone.n_layers", "1", "--model.backbone.dropout", "0.1", "--model.optim.total_steps", str(STEPS),
          "--trainer.val_check_interval", str(STOP),
          # Amos with its default ξ = 1/√(batches per epoch): the sharded optimiser state, and a training loader built
          # during setup (to count the batches) before fsdp2 reads the checkpoint — it must still resume in place
          "--model.optim.name", "amos"]


def _start(corpus, folder, steps, port, *extra):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MASTER_PORT": str(port)}
    err = open(folder / f"stderr-{steps}.txt", "w")
    args = tiny_args(corpus, folder, *COMMON, *extra, steps=steps)
    return subprocess.Popen([sys.executable, "-m", "kslm.cli", "fit", *args], cwd=folder, env=env,
                            stdout=subprocess.DEVNULL, stderr=err, start_new_session=True), err


def _wait(procs, deadline):
    try:
        for proc, err in procs:
            code = proc.wait(timeout=max(deadline - time.monotonic(), 1))
            err.close()
            assert code == 0, open(err.name, encoding="utf-8", errors="replace").read()[-3000:]
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="module")
def fsdp_runs(small_corpus, tmp_path_factory):
    full, half = tmp_path_factory.mktemp("fsdp-full"), tmp_path_factory.mktemp("fsdp-half")
    ports = free_ports(3)
    deadline = time.monotonic() + 480
    _wait([_start(small_corpus, full, STEPS, ports[0]), _start(small_corpus, half, STOP, ports[1])], deadline)
    sharded = torch.load(half / "ckpt" / "last.ckpt" / "meta.pt", weights_only=True)  # before the resume rewrites it
    _wait([_start(small_corpus, half, STEPS, ports[2], "--ckpt_path", str(half / "ckpt" / "last.ckpt"))], deadline)
    return full, half, sharded


def test_fsdp2_checkpoint_is_sharded_and_resumes_exactly(fsdp_runs):
    full, half, first = fsdp_runs
    assert first["global_step"] == STOP and "state_dict" not in first  # the weights are in the rank files
    last = half / "ckpt" / "last.ckpt"
    assert last.is_dir() and sorted(p.name for p in last.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    a = torch.load(full / "ckpt" / "last.consolidated.ckpt", weights_only=True)
    b = torch.load(half / "ckpt" / "last.consolidated.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == STEPS
    assert a["state_dict"].keys() == b["state_dict"].keys() and len(a["state_dict"]) > 5
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    # each rank wrote its own half of each weight: the embedding [400, 32] as two dim-0 chunks of 200 rows
    from torch.distributed.checkpoint import FileSystemReader

    meta = FileSystemReader(str(last)).read_metadata().state_dict_metadata["state_dict.backbone.embed.weight"]
    assert sorted(tuple(c.offsets) for c in meta.chunks) == [(0, 0), (200, 0)] and tuple(meta.size) == (400, 32)
    assert a["state_dict"]["backbone.embed.weight"].shape == (400, 32)
    assert "kslm: consolidated the sharded" in (full / f"stderr-{STEPS}.txt").read_text(encoding="utf-8")


def test_fsdp2_consolidated_checkpoint_predicts_and_consolidate_verb(fsdp_runs, tmp_path, capsys, monkeypatch):
    full, _, _ = fsdp_runs
    monkeypatch.chdir(tmp_path)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The module\nA class\n", encoding="utf-8")
    out = tmp_path / "gen.jsonl"
    code, err = run_cli(["predict", "--ckpt_path", str(full / "ckpt" / "last.consolidated.ckpt"), "--data.predict_file",
                         str(prompts), "--predictions.path", str(out), "--model.max_new_tokens", "3"], capsys)
    assert code == 0, err
    assert len(out.read_text(encoding="utf-8").splitlines()) == 2
    # the sharded folder itself: one line pointing at the consolidated file
    code, err = run_cli(["predict", "--ckpt_path", str(full / "ckpt" / "last.ckpt"), "--data.predict_file", str(prompts)],
                        capsys)
    assert code == 2 and "a sharded checkpoint (folder)" in err and "kslm consolidate" in err, err
    # `kslm consolidate` writes the same weights as the end of fit did
    code, err = run_cli(["consolidate", str(full / "ckpt" / "last.ckpt"), str(tmp_path / "c.ckpt")], capsys)
    assert code == 0, err
    a = torch.load(full / "ckpt" / "last.consolidated.ckpt", weights_only=True)
    c = torch.load(tmp_path / "c.ckpt", weights_only=True)
    assert all(torch.equal(a["state_dict"][k], c["state_dict"][k]) for k in a["state_dict"])
    assert "optimizer_states" not in c and c["kslm"]["task"] == "LanguageModel"


def test_consolidate_refuses_a_plain_file(fsdp_runs):
    from kslm.checkpoint import consolidate

    full, _, _ = fsdp_runs
    with pytest.raises(CheckpointError, match="not a sharded checkpoint folder"):
        consolidate(full / "ckpt" / "last.consolidated.ckpt")


def test_fsdp_on_cpu_is_one_line(small_corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(["fit", *tiny_args(small_corpus, tmp_path, "--trainer.strategy", "fsdp",
                                           "--trainer.accelerator", "cpu")], capsys)
    assert code == 2 and "--trainer.strategy fsdp2" in err and "Traceback" not in err, err


@pytest.mark.parametrize("name", ["amos", "eg_adamw"])
def test_optimiser_on_sharded_parameters_equals_it_unsharded(tmp_path, name):
    """tests/fsdp_optim_check.py in 2 gloo processes: Amos (an unevenly sharded embedding, row, column, scalar and full
    slots, momentum) and EG-AdamW (a global scale and RMS-normalised gains: sums over the whole tensor) on FSDP2
    DTensors leave the same parameters after 3 steps as on an unsharded copy, and a copy resumed from their sharded
    state (torch.distributed.checkpoint, as fsdp2 checkpoints are written) continues identically."""
    out, port = tmp_path / "optim.json", free_ports(1)[0]
    procs = [subprocess.Popen([sys.executable, str(REPO / "tests" / "fsdp_optim_check.py"), name, str(out)],
                              env={**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(r),
                                   "LOCAL_RANK": str(r), "WORLD_SIZE": "2"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    logs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["moved"] > 1e-3 and result["max_abs_diff"] <= 1e-6, result
    assert result["slot_placements"] == ["S(0)"]  # the embedding's slot stays sharded like its rows
    assert result["resumed_diff"] == 0, result  # its state survives torch.distributed.checkpoint exactly
    if name == "eg_adamw":
        assert result["scale"][0] == pytest.approx(result["scale"][1], rel=1e-6) and result["scale"][0] != 1.0, result


@pytest.mark.parametrize("option,says", [
    (["--model.penalty.kind", "input"], "model.penalty.kind input"),
    (["--model.penalty.kind", "parameter"], "model.penalty.kind parameter"),
], ids=["input-penalty", "parameter-penalty"])
def test_fsdp2_refuses_what_it_cannot_shard_in_one_line(small_corpus, tmp_path, capsys, monkeypatch, option, says):
    """A gradient penalty (a second backward through blocks FSDP2 has resharded: a segmentation fault in gloo) stops
    before any rank starts, naming the option."""
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(["fit", *tiny_args(small_corpus, tmp_path, "--trainer.strategy", "fsdp2", "--trainer.devices", "2",
                                           "--trainer.accelerator", "cpu", *option)], capsys)
    assert code == 2 and says in err and "trainer.strategy fsdp2" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_mixed_precision_policy_only_for_bf16_on_a_bf16_device(monkeypatch):
    from kslm.tasks.fsdp import mixed_precision

    assert mixed_precision("cpu", "bf16-mixed") is None  # CPU: fp32 throughout
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert mixed_precision("cuda", "32-true") is None  # fp32 asked for
    policy = mixed_precision("cuda", "bf16-mixed")
    assert policy.param_dtype == torch.bfloat16 and policy.reduce_dtype == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert mixed_precision("cuda", "bf16-mixed") is None
