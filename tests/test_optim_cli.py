"""Amos / Amos-AdamW / EG-AdamW and the gradient penalties through `kslm fit` on the LM and NER tasks."""

from pathlib import Path

import pytest
import torch
from helpers import REPO, ner_args, run_cli, tiny_args


def series(logdir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = []
    for events in sorted(Path(logdir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            values += [s.value for s in acc.Scalars(tag)]
    return values


GAU = "configs/lm/gau.yaml"


@pytest.mark.parametrize("optimizer,extra", [
    ("amos", []),
    ("amos_adamw", ["--model.optim.lr", "0.02", "--model.optim.options.decay", "constant_rate"]),
    ("eg_adamw", ["--model.optim.options.gain_lr", "0.02"]),
])
def test_optimizer_trains_and_resumes_identically(small_corpus, workdir, capsys, optimizer, extra):
    """Loss falls; the optimiser's slots (Amos v/b, EG gains and scale) are in the checkpoint, so a run resumed
    at step 4 ends bit-identical to the uninterrupted one."""
    common = ["--model.optim.name", optimizer, "--model.optim.total_steps", "8", "--trainer.val_check_interval", "4",
              "--model.backbone.dropout", "0.1", "--trainer.log_every_n_steps", "1", *extra]
    assert run_cli(["fit", *tiny_args(small_corpus, workdir / "a", *common, steps=8, config=GAU)], capsys)[0] == 0
    loss = series(workdir / "logs", "train/loss")
    assert len(loss) == 8 and sum(loss[-3:]) < sum(loss[:3]) - 0.1, loss
    assert run_cli(["fit", *tiny_args(small_corpus, workdir / "b", *common, steps=4, config=GAU)], capsys)[0] == 0
    rest = tiny_args(small_corpus, workdir / "b", *common, "--ckpt_path", str(workdir / "b" / "ckpt" / "last.ckpt"),
                     steps=8, config=GAU)
    assert run_cli(["fit", *rest], capsys)[0] == 0
    a = torch.load(workdir / "a" / "ckpt" / "last.ckpt", weights_only=True)
    b = torch.load(workdir / "b" / "ckpt" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 8 and a["kslm"]["settings"]["optim"]["name"] == optimizer
    assert a["optimizer_states"][0]["state"]
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k


@pytest.mark.parametrize("penalty", ["input", "parameter"])
def test_penalty_trains_and_is_logged_separately(small_corpus, workdir, capsys, penalty):
    args = tiny_args(small_corpus, workdir, "--model.penalty.kind", penalty, "--model.penalty.weight", "0.1",
                     "--trainer.log_every_n_steps", "1", "--model.optim.lr", "3e-3", steps=8, config=GAU)
    code, err = run_cli(["fit", *args], capsys)
    assert code == 0, err
    loss, penalties = series(workdir / "logs", "train/loss"), series(workdir / "logs", "train/penalty")
    assert len(loss) == 8 and sum(loss[-3:]) < sum(loss[:3]) - 0.1, loss
    assert len(penalties) == 8 and all(p > 0 for p in penalties)


@pytest.mark.parametrize("optimizer,penalty", [("amos", "input"), ("eg_adamw", "parameter")])
def test_ner_takes_the_same_options(workdir, capsys, optimizer, penalty):
    code, err = run_cli(["fit", *ner_args(workdir, "--model.optim.name", optimizer, "--model.penalty.kind", penalty,
                                          steps=2)], capsys)
    assert code == 0, err
    ckpt = torch.load(workdir / "ckpt" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


@pytest.mark.parametrize("extra,needle", [
    (["--model.optim.name", "lion"], "model.optim.name"),
    (["--model.optim.name", "amos", "--model.optim.options.betta", "0.9"], "betta"),
    (["--model.penalty.kind", "hessian"], "model.penalty.kind"),
    (["--model.optim.warmup_steps", "-1"], "model.optim.warmup_steps"),
    (["--model.optim.min_lr_ratio", "0"], "model.optim.min_lr_ratio"),
    (["--model.penalty.weight", "-1"], "model.penalty.weight"),
])
def test_bad_optimizer_options_are_one_line_errors(small_corpus, workdir, capsys, extra, needle):
    code, err = run_cli(["fit", *tiny_args(small_corpus, workdir, *extra)], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("kslm: error:") and needle in lines[0], err


def test_readme_documents_every_optimizer_and_penalty():
    text = (REPO / "docs" / "reference.md").read_text(encoding="utf-8")  # the README's options section moved there
    for word in ("--model.optim.name amos", "amos_adamw", "eg_adamw", "--model.penalty.kind input",
                 "--model.penalty.kind parameter", "--model.penalty.weight"):
        assert word in text, word
