"""The LM pretraining job end to end through `kslm …` (in-process: one Python, one lightning import)."""

import itertools
import math

import pytest
import torch
from helpers import read_jsonl, run_cli, scalars, tiny_args


def test_fit_writes_tensorboard_and_self_contained_checkpoint(small_corpus, workdir, capsys):
    code, err = run_cli(["fit", *tiny_args(small_corpus, workdir, "--trainer.log_every_n_steps", "1", steps=12)], capsys)
    assert code == 0, err
    events = list((workdir / "logs" / "transformer").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    assert (events[0].parent / "config.yaml").is_file()  # the run's resolved config beside its logs
    assert not (workdir / "config.yaml").exists()
    ckpt = torch.load(workdir / "ckpt" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 12
    assert ckpt["kslm"]["backbone"]["d_model"] == 32 and ckpt["kslm"]["backbone"]["vocab_size"] > 100
    assert '"model"' in ckpt["kslm"]["tokenizer"]
    assert "tokens/s" in err

    tags = set(scalars(workdir / "logs"))
    assert {"train/loss", "val/loss", "val/ppl"} <= tags
    assert any(t.startswith("lr-") for t in tags)
    assert {"train/tokens_per_sec", "train/flops_per_sec"} <= tags, tags


def test_save_load_gives_identical_logits(small_corpus, workdir, capsys):
    """The checkpoint alone rebuilds the model: through the task (Lightning's loader) and through
    kslm.checkpoint (pure torch, weights_only) the reloaded logits are identical."""
    from kslm.checkpoint import load_backbone
    from kslm.nn import Backbone
    from kslm.tasks.lm import LanguageModel

    assert run_cli(["fit", *tiny_args(small_corpus, workdir, config="configs/lm/gau.yaml")], capsys)[0] == 0
    path = workdir / "ckpt" / "last.ckpt"
    cfg, state, tok = load_backbone(path)
    assert cfg.block == "gau" and cfg.vocab_size == tok.get_vocab_size()
    plain = Backbone(cfg).eval()
    plain.load_state_dict(state)
    task = LanguageModel.load_from_checkpoint(path, weights_only=True).eval()
    assert task.tokenizer.to_str() == tok.to_str()
    ids = torch.tensor([tok.encode("The class statement defines a class.").ids])
    with torch.no_grad():
        a = plain.logits(plain(ids))
        b = task.backbone.logits(task.backbone(ids))
    assert torch.equal(a, b)
    fresh = Backbone(cfg).eval()  # and the weights are not just the init
    with torch.no_grad():
        assert not torch.allclose(fresh.logits(fresh(ids)), a)


COMBOS = list(itertools.product(["transformer", "gau"], ["pre", "post", "deepnorm"], ["softmax", "softmax_plus", "relu2"]))


@pytest.mark.parametrize("block,norm,attention", COMBOS)
def test_every_block_norm_attention_trains(small_corpus, workdir, capsys, block, norm, attention):
    args = tiny_args(small_corpus, workdir, "--model.backbone.block", block, "--model.backbone.norm", norm,
                     "--model.backbone.attention", attention, "--model.optim.lr", "3e-3", steps=4)
    code, err = run_cli(["fit", *args], capsys)
    assert code == 0, err
    ckpt = torch.load(workdir / "ckpt" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


@pytest.mark.parametrize("mask", ["prefix", "bidirectional"])
def test_prefix_and_masked_lm_objectives_train(small_corpus, workdir, capsys, mask):
    code, err = run_cli(["fit", *tiny_args(small_corpus, workdir, "--model.backbone.mask", mask, steps=3)], capsys)
    assert code == 0, err


@pytest.mark.parametrize("config,extra", [
    ("rnn", []),  # configs/lm/rnn.yaml: tanh cell, Newton to tolerance, implicit gradient
    # the acceptance command (gau.yaml: Post-Norm RMSNorm) with Su's "iterations as layers" GRU, as a masked LM
    # (forward + backward RNNs)
    ("gau", ["--model.backbone.block", "rnn", "--model.backbone.rnn_cell", "gru", "--model.backbone.rnn_method", "fixed",
             "--model.backbone.rnn_iterations", "2", "--model.backbone.mask", "bidirectional"]),
])
def test_rnn_block_trains(small_corpus, workdir, capsys, config, extra):
    args = tiny_args(small_corpus, workdir, *extra, "--model.optim.lr", "3e-3", steps=3, config=f"configs/lm/{config}.yaml")
    code, err = run_cli(["fit", *args], capsys)
    assert code == 0, err
    ckpt = torch.load(workdir / "ckpt" / "last.ckpt", weights_only=True)
    assert ckpt["kslm"]["backbone"]["block"] == "rnn" and ckpt["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    if extra:
        return
    prompts = workdir / "prompts.txt"  # generation decodes with the RNN state in the cache
    prompts.write_text("The module\n", encoding="utf-8")
    out = workdir / "gen.jsonl"
    args = tiny_args(small_corpus, workdir, "--ckpt_path", str(workdir / "ckpt" / "last.ckpt"), "--data.predict_file",
                     str(prompts), "--predictions.path", str(out), "--model.max_new_tokens", "4", config="configs/lm/rnn.yaml")
    code, err = run_cli(["predict", *args], capsys)
    assert code == 0, err
    assert len(read_jsonl(out)) == 1


@pytest.mark.parametrize("stop", [3, 4, 5, 7])  # at a val check, between checks, at an epoch end, mid epoch 2
def test_resume_reproduces_uninterrupted_run(small_corpus, workdir, capsys, stop):
    """Weights, optimiser, schedule, dropout RNG and data position: the resumed run ends bit-identical.
    Epochs are 5 batches long (limit_train_batches) so that resuming crosses an epoch boundary."""
    common = ["--model.optim.total_steps", "9", "--model.backbone.dropout", "0.1", "--trainer.val_check_interval", "3",
              "--trainer.limit_train_batches", "5"]
    a, b = _uninterrupted_and_resumed(small_corpus, workdir, capsys, common, stop, 9)
    assert a["global_step"] == b["global_step"] == 9


def _uninterrupted_and_resumed(corpus, workdir, capsys, common, stop, steps):
    """Fit `steps` in workdir/a; fit `stop` in workdir/b, then resume it to `steps`; both last.ckpt (the weights checked
    identical)."""
    assert run_cli(["fit", *tiny_args(corpus, workdir / "a", *common, steps=steps)], capsys)[0] == 0
    assert run_cli(["fit", *tiny_args(corpus, workdir / "b", *common, steps=stop)], capsys)[0] == 0
    last = str(workdir / "b" / "ckpt" / "last.ckpt")
    assert run_cli(["fit", *tiny_args(corpus, workdir / "b", *common, "--ckpt_path", last, steps=steps)], capsys)[0] == 0
    a, b = (torch.load(workdir / run / "ckpt" / "last.ckpt", weights_only=True) for run in "ab")
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    return a, b


@pytest.mark.parametrize("stop,workers", [(3, 0), (9, 0), (7, 1)])  # mid epoch 1, mid epoch 2, at the end of epoch 1
def test_resume_across_the_end_of_the_data(small_corpus, workdir, capsys, stop, workers):
    """Without limit_train_batches an epoch ends where the training blocks do (7 batches here): the resumed epoch
    still has its full length (a sampler that reported only its unserved batches ended it early by that many), and
    with a loader worker (whose iterator starts before Lightning numbers the epoch) the epochs after it still get
    their own permutations."""
    corpus = workdir / "short.txt"
    corpus.write_text(small_corpus.read_text(encoding="utf-8")[:9000], encoding="utf-8")
    common = ["--model.backbone.dropout", "0.1", "--trainer.val_check_interval", "1000", "--trainer.max_epochs", "100",
              "--data.batch_size", "16", "--model.optim.total_steps", "16", "--data.num_workers", str(workers)]
    a, b = _uninterrupted_and_resumed(corpus, workdir, capsys, common, stop, 16)
    assert a["global_step"] == b["global_step"] == 16 and a["epoch"] == b["epoch"] == 2, (a["epoch"], b["epoch"])


def test_untrained_tied_rescaled_loss_is_near_log_2v(small_corpus, workdir, capsys, monkeypatch):
    """Acceptance: rescaled tied init gives a val loss in [0.9 ln V, 1.1 ln 2V]; plain tying clearly more."""
    base = tiny_args(small_corpus, workdir, "--model.backbone.d_model", "256", "--model.backbone.n_heads", "4",
                     "--model.backbone.tie_embeddings", "true", "--model.backbone.norm", "deepnorm",
                     "--trainer.limit_val_batches", "8")
    losses = {}
    for init in ("rescaled", "none"):
        (workdir / init).mkdir()
        monkeypatch.chdir(workdir / init)
        code, err = run_cli(["validate", *base, "--model.backbone.tied_init", init], capsys)
        assert code == 0, err
        losses[init] = scalars(workdir / init / "logs")["val/loss"]
    V = 400  # the small corpus fills the 400-token vocabulary
    assert 0.9 * math.log(V) <= losses["rescaled"] <= 1.1 * math.log(2 * V), losses
    assert losses["none"] > losses["rescaled"] + 3, losses  # σ = 1/√d: loss ≈ √d = 16 at d = 256


def test_predict_generates_one_line_per_prompt(small_corpus, workdir, capsys):
    assert run_cli(["fit", *tiny_args(small_corpus, workdir, steps=2)], capsys)[0] == 0
    prompts = workdir / "prompts.txt"
    prompts.write_text("The module\n\nA class is\n", encoding="utf-8")
    out = workdir / "gen.jsonl"
    args = tiny_args(small_corpus, workdir, "--ckpt_path", str(workdir / "ckpt" / "last.ckpt"),
                     "--data.predict_file", str(prompts), "--predictions.path", str(out), "--model.max_new_tokens", "5")
    code, err = run_cli(["predict", *args], capsys)
    assert code == 0, err
    recs = read_jsonl(out)
    assert [r["prompt"] for r in recs] == ["The module", "A class is"]
    assert [r["line"] for r in recs] == [1, 3]
    assert all(0 < len(r["token_ids"]) <= 5 or r["token_ids"] == [] for r in recs)


@pytest.mark.parametrize("extra,needle", [
    (["--model.backbone.norm", "sideways"], "model.backbone.norm"),
    (["--model.backbone.attention", "linear"], "model.backbone.attention"),
    (["--data.data_files", "/no/such/file.txt"], "/no/such/file.txt"),
    (["--model.backbone.n_heads", "3"], "n_heads"),
    (["--model.backbone.block", "rnn", "--model.backbone.mask", "prefix"], "not prefix"),
    (["--trainer.max_stepz", "3"], "max_stepz"),
])
def test_bad_options_give_one_line_and_exit_2(small_corpus, workdir, capsys, extra, needle):
    code, err = run_cli(["fit", *tiny_args(small_corpus, workdir), *extra], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("kslm: error:") and needle in lines[0], err


def test_missing_checkpoint_and_missing_config_are_one_line_errors(small_corpus, workdir, capsys):
    code, err = run_cli(["validate", *tiny_args(small_corpus, workdir), "--ckpt_path", "nope.ckpt"], capsys)
    assert code == 2 and err.strip() == "kslm: error: nope.ckpt: checkpoint not found (field 'ckpt_path')"
    code, err = run_cli(["fit"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--config" in err


def test_a_run_ending_between_checks_validates_at_its_final_step(small_corpus, workdir, capsys, monkeypatch):
    """max_steps 5 with a validation every 3 steps: validations at steps 3 and 5 (TensorBoard), the final one in
    the top-k (save_top_k 1 on val/loss: the step-5 file is the best, the loss still falling), and last.ckpt the
    final batch's; a run without the extra validation (max_steps 6, checked at 3 and 6) ends bit-identical to a run
    stopped at 5 and resumed to 6, so the extra validation changes neither the random state nor last.ckpt."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for run in ("a", "b"):
        (workdir / run).mkdir()
    monkeypatch.chdir(workdir / "b")  # (TensorBoard logs go to ./logs)
    common = ["--model.optim.total_steps", "6", "--model.backbone.dropout", "0.1", "--trainer.val_check_interval", "3",
              "--checkpoint.monitor", "val/loss", "--checkpoint.save_top_k", "1", "--model.sample_count", "0"]
    half = tiny_args(small_corpus, workdir / "b", *common, steps=5)
    assert run_cli(["fit", *half], capsys)[0] == 0
    acc = EventAccumulator(str(next((workdir / "b" / "logs").rglob("events.out.tfevents.*"))))
    acc.Reload()
    assert [e.step for e in acc.Scalars("val/loss")] == [2, 4]  # (Lightning logs a validation at global_step - 1)
    assert sorted(p.name for p in (workdir / "b" / "ckpt").glob("epoch=*.ckpt")) == ["epoch=0-step=5.ckpt"]
    assert torch.load(workdir / "b" / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 5
    full = tiny_args(small_corpus, workdir / "a", *common, steps=6)
    monkeypatch.chdir(workdir / "a")
    assert run_cli(["fit", *full], capsys)[0] == 0
    monkeypatch.chdir(workdir / "b")
    rest = tiny_args(small_corpus, workdir / "b", *common, "--ckpt_path", str(workdir / "b" / "ckpt" / "last.ckpt"), steps=6)
    assert run_cli(["fit", *rest], capsys)[0] == 0
    a = torch.load(workdir / "a" / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(workdir / "b" / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
