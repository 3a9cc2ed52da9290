"""Issue 13, class 5: option values of the extraction tasks, and combinations — a predict-only model under fit,
predict without trained weights, an output path that cannot be written, an accelerator the machine lacks. Each is
one line naming the option, exit code 2, before anything is read or loaded."""

import pytest
from bad_inputs import cli, ids, one_error_line
from helpers import REPO, tiny_args

CLUENER = REPO / "data" / "samples" / "cluener.jsonl"
RE_CANONICAL = REPO / "data" / "samples" / "re_canonical.jsonl"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


# (options, what the line must name): the Trainer's, the checkpoint callback's and the seed, under `kslm fit`
RUN_OPTIONS = [
    # trainer
    (["--trainer.devices", "0"], "trainer.devices"),
    (["--trainer.devices", "-2"], "trainer.devices"),
    (["--trainer.devices", "abc"], "trainer.devices"),
    (["--trainer.max_steps", "-5"], "trainer.max_steps"),
    (["--trainer.max_steps", "0"], "trainer.max_steps"),
    (["--trainer.max_epochs", "-5"], "trainer.max_epochs"),
    (["--trainer.max_epochs", "0", "--trainer.max_steps", "-1"], "trainer.max_epochs"),
    (["--trainer.min_steps", "-1"], "trainer.min_steps"),
    (["--trainer.num_nodes", "0"], "trainer.num_nodes"),
    (["--trainer.accumulate_grad_batches", "0"], "trainer.accumulate_grad_batches"),
    (["--trainer.val_check_interval", "0"], "trainer.val_check_interval"),
    (["--trainer.val_check_interval", "0.0"], "trainer.val_check_interval"),  # a fraction 0: ZeroDivisionError later
    (["--trainer.val_check_interval", "1.5"], "trainer.val_check_interval"),
    (["--trainer.limit_val_batches", "-1"], "trainer.limit_val_batches"),
    (["--trainer.limit_train_batches", "0"], "trainer.limit_train_batches"),
    (["--trainer.gradient_clip_val", "-1"], "trainer.gradient_clip_val"),
    (["--trainer.log_every_n_steps", "-1"], "trainer.log_every_n_steps"),
    (["--trainer.num_sanity_val_steps", "-2"], "trainer.num_sanity_val_steps"),
    (["--trainer.check_val_every_n_epoch", "0"], "trainer.check_val_every_n_epoch"),
    (["--trainer.accelerator", "tpuz"], "trainer.accelerator"),
    (["--trainer.strategy", "foo"], "trainer.strategy"),
    (["--trainer.max_time", "bogus"], "trainer.max_time"),
    (["--trainer.fast_dev_run", "-1"], "trainer.fast_dev_run"),
    (["--trainer.overfit_batches", "-1"], "trainer.overfit_batches"),
    (["--trainer.precision", "12"], "trainer.precision"),
    # checkpoint callback, seed
    (["--checkpoint.save_top_k", "-5"], "checkpoint.save_top_k"),
    (["--checkpoint.every_n_train_steps", "-1"], "checkpoint.every_n_train_steps"),
    (["--checkpoint.monitor", "val/bogus"], "checkpoint.monitor"),
    (["--seed_everything", "-1"], "seed_everything"),
    (["--seed_everything", str(2**40)], "seed_everything"),
    (["--seed_everything", str(2**32)], "seed_everything"),  # the first seed numpy refuses (Lightning: 0, a warning)
]


@pytest.mark.parametrize("extra,names", RUN_OPTIONS, ids=ids)
def test_run_option(small_corpus, workdir, capsys, extra, names):
    one_error_line(*cli(["fit", *tiny_args(small_corpus, workdir, *extra)], capsys), names)
    assert not (workdir / "ckpt").exists()


def test_seed_and_val_check_interval_bounds_are_exact():
    """The seeds kslm accepts are those numpy's global RNG accepts (Lightning's seed_everything replaces any other by
    0 with a warning); val_check_interval takes a fraction in (0, 1] or a count ≥ 1 — the smallest of each pass."""
    import numpy as np

    from kslm.cli.options import check_seed, check_trainer
    from kslm.errors import ConfigError

    for seed in (0, 2**32 - 1, 2**32, -1):
        try:
            np.random.seed(seed)
            numpy_ok = True
        except ValueError:
            numpy_ok = False
        try:
            check_seed(seed)
            kslm_ok = True
        except ConfigError:
            kslm_ok = False
        assert kslm_ok == numpy_ok, seed
    for value, ok in ((1e-9, True), (1.0, True), (1, True), (0.0, False), (0, False), (-0.5, False), (1.0000001, False)):
        try:
            check_trainer({"val_check_interval": value})
            passed = True
        except ConfigError as exc:
            passed = False
            assert "trainer.val_check_interval" in str(exc)
        assert passed == ok, value


@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_gpu_accelerator_without_a_gpu(small_corpus, workdir, capsys, accelerator):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, err = cli(["fit", *tiny_args(small_corpus, workdir, "--trainer.accelerator", accelerator)], capsys)
    line = one_error_line(code, err, f"trainer.accelerator {accelerator}", "--trainer.accelerator cpu")
    assert "no usable CUDA GPU" in line



def ner_args(tmp, *extra):
    return ["--config", str(REPO / "configs/ner/cluener-egp.yaml"), "--data.train_file", str(CLUENER),
            "--data.val_file", str(CLUENER), "--data.dev_split", "null", "--data.max_length", "32",
            "--model.backbone.d_model", "32", "--model.backbone.n_layers", "1", "--model.backbone.n_heads", "2",
            "--model.head_size", "16", "--trainer.max_steps", "1", "--checkpoint.dirpath", str(tmp / "ckpt"), *extra]


NER_FIT = [
    (["--model.head_size", "0"], "model.head_size"),
    (["--model.head_size", "15"], "model.head_size"),
    (["--model.head_size", "-2"], "model.head_size"),
    (["--model.types", '["", "name"]'], "model.types[0]"),
    (["--model.types", '["name", "  "]'], "model.types[1]"),
    (["--model.types", '["name", "name"]'], "model.types[1]"),
    (["--model.types", '["foo"]'], "model.types"),
    (["--model.token_dropout", "1.5"], "model.token_dropout"),
    (["--model.backbone.mask", "causal"], "model.backbone.mask"),
    (["--data.max_length", "2"], "data.max_length"),
    (["--data.max_length", "100000"], "data.max_length 100000 exceeds model.backbone.max_length"),
    (["--data.stride", "100"], "data.stride"),
    (["--data.vocab_size", "3"], "data.vocab_size"),
    (["--data.min_frequency", "-1"], "data.min_frequency"),
    (["--data.max_text_chars", "0"], "data.max_text_chars"),
    (["--data.batch_size", "0"], "data.batch_size"),
    (["--data.format", "xml"], "data.format"),
    (["--data.train_file", "/nonexistent/train.jsonl"], "data.train_file"),
]


@pytest.mark.parametrize("extra,names", NER_FIT, ids=ids)
def test_ner_fit_option(workdir, capsys, extra, names):
    one_error_line(*cli(["fit", *ner_args(workdir, *extra)], capsys), names)


RE_FIT = [
    (["--model.head_size", "7"], "model.head_size"),
    (["--model.predicates", '["", "作者"]'], "model.predicates[0]"),
    (["--model.predicates", '["作者", "作者"]'], "model.predicates[1]"),
    (["--model.max_entities", "0"], "model.max_entities"),
    (["--data.unknown_predicates", "ignore"], "data.unknown_predicates"),
    (["--data.max_length", "2"], "data.max_length"),
]


@pytest.mark.parametrize("extra,names", RE_FIT, ids=ids)
def test_re_fit_option(workdir, capsys, extra, names):
    args = ["--config", str(REPO / "configs/re/duie-gplinker.yaml"), "--data.train_file", str(RE_CANONICAL),
            "--data.val_file", str(RE_CANONICAL), "--data.format", "canonical", "--model.head_size", "16",
            "--trainer.max_steps", "1", "--checkpoint.dirpath", str(workdir / "ckpt"), *extra]
    one_error_line(*cli(["fit", *args], capsys), names)


@pytest.mark.parametrize("sub", ["fit", "validate", "test"])
def test_predict_only_config_under_another_subcommand(workdir, capsys, sub):
    """NBCE only predicts: refused by name before its language model is even loaded (the path does not exist)."""
    args = ["--config", str(REPO / "configs/nbce/kslm-lm.yaml"), "--model.checkpoint", str(workdir / "none.ckpt"),
            "--data.predict_file", str(REPO / "data/samples/nbce.jsonl")]
    line = one_error_line(*cli([sub, *args], capsys), f"kslm {sub}", "NBCE", "kslm predict")
    assert "none.ckpt" not in line


@pytest.mark.parametrize("config,extra", [
    ("configs/lm/transformer.yaml", ["--data.predict_file", str(REPO / "data/samples/nbce.jsonl")]),
    ("configs/ner/cluener-egp.yaml", ["--data.predict_file", str(CLUENER), "--data.dev_split", "null"]),
    ("configs/re/duie-gplinker.yaml", ["--data.predict_file", str(RE_CANONICAL)]),
], ids=["lm", "ner", "re"])
def test_predict_without_trained_weights(workdir, capsys, config, extra):
    """A kslm task without --ckpt_path would predict from random weights: refused, naming ckpt_path."""
    args = ["--config", str(REPO / config), "--data.train_file", "null", *extra,
            "--predictions.path", str(workdir / "out.jsonl")]
    if "lm" in config:
        args = ["--config", str(REPO / config), *extra, "--predictions.path", str(workdir / "out.jsonl")]
    one_error_line(*cli(["predict", *args], capsys), "--ckpt_path", "'ckpt_path'")
    assert not (workdir / "out.jsonl").exists()


@pytest.mark.parametrize("path,names", [
    ("outdir", "is a directory"),
    ("outdir/", "is a directory"),
    ("afile/pred.jsonl", "is not a directory"),
], ids=["directory", "trailing-slash", "parent-is-a-file"])
def test_predictions_path_checked_before_anything(small_corpus, workdir, capsys, path, names):
    (workdir / "outdir").mkdir()
    (workdir / "afile").write_text("x")
    args = tiny_args(small_corpus, workdir, "--ckpt_path", str(workdir / "none.ckpt"),
                     "--data.predict_file", str(small_corpus), "--predictions.path", str(workdir / path))
    line = one_error_line(*cli(["predict", *args], capsys), "predictions.path", names)
    assert "none.ckpt" not in line  # checked before the checkpoint is read


def test_predict_from_missing_last_checkpoint(small_corpus, workdir, capsys):
    args = tiny_args(small_corpus, workdir, "--ckpt_path", "last", "--data.predict_file", str(small_corpus))
    one_error_line(*cli(["predict", *args], capsys), "ckpt_path last", "last.ckpt")

