"""Issue 13, class 5: option values. Every bad value of an LM run's options is answered before any data is read, by
one line `kslm: error: …` naming the option, and exit code 2 — never a traceback, never a run that silently ignores
it; NBCE's model options are refused before its language model is loaded. (Other tasks and combinations:
test_bad_inputs_combos.py; predict: _predict.py; size and leftovers: _limits.py.)"""

import pytest
from bad_inputs import cli, ids, one_error_line
from helpers import REPO, tiny_args

# (options, what the line must name) for `kslm fit` of the LM config on the small corpus
LM_FIT = [
    # data
    (["--data.seq_len", "0"], "data.seq_len"),
    (["--data.seq_len", "-4"], "data.seq_len"),
    (["--data.seq_len", "5000"], "data.seq_len 5000 exceeds model.backbone.max_length"),
    (["--data.seq_len", "64", "--model.backbone.max_length", "32"], "data.seq_len 64"),
    (["--data.batch_size", "0"], "data.batch_size"),
    (["--data.batch_size", "-3"], "data.batch_size"),
    (["--data.vocab_size", "0"], "data.vocab_size"),
    (["--data.vocab_size", "5"], "data.vocab_size"),
    (["--data.vocab_size", "260"], "data.vocab_size"),  # byte-level BPE has 5 + 256 tokens at least
    (["--data.tokenizer_kind", "char", "--data.vocab_size", "5"], "data.vocab_size"),
    (["--data.tokenizer_kind", "wordpiece"], "data.tokenizer_kind"),
    (["--data.val_fraction", "0"], "data.val_fraction"),
    (["--data.val_fraction", "1"], "data.val_fraction"),
    (["--data.num_workers", "-1"], "data.num_workers"),
    (["--data.data_files", "/nonexistent/corpus.txt"], "data.data_files"),
    (["--data.seq_len", "abc"], "data.seq_len"),
    # backbone
    (["--model.backbone.vocab_size", "3"], "model.backbone.vocab_size"),
    (["--model.backbone.d_ff", "0"], "model.backbone.d_ff"),
    (["--model.backbone.d_ff", "-1"], "model.backbone.d_ff"),
    (["--model.backbone.d_model", "0"], "model.backbone.d_model"),
    (["--model.backbone.n_layers", "0"], "model.backbone.n_layers"),
    (["--model.backbone.n_heads", "0"], "model.backbone.n_heads"),
    (["--model.backbone.n_heads", "3"], "model.backbone.n_heads"),
    (["--model.backbone.d_model", "36", "--model.backbone.n_heads", "4"], "model.backbone.d_model / n_heads"),
    (["--model.backbone.block", "gau", "--model.backbone.qk_dim", "15"], "model.backbone.qk_dim"),
    (["--model.backbone.expansion", "0"], "model.backbone.expansion"),
    (["--model.backbone.train_length", "0"], "model.backbone.train_length"),
    (["--model.backbone.max_length", "0"], "model.backbone.max_length"),
    (["--model.backbone.dropout", "1.0"], "model.backbone.dropout"),
    (["--model.backbone.dropout", "-0.1"], "model.backbone.dropout"),
    (["--model.backbone.squareplus_b", "-1"], "model.backbone.squareplus_b"),
    (["--model.backbone.block", "rnn", "--model.backbone.rnn_iterations", "0"], "model.backbone.rnn_iterations"),
    (["--model.backbone.block", "rnn", "--model.backbone.mask", "prefix"], "model.backbone.block rnn"),
    (["--model.backbone.position", "none", "--model.backbone.d_model", "33", "--model.backbone.n_heads", "3",
      "--model.backbone.tied_init", "swap"], "model.backbone.tied_init"),
    (["--model.backbone.norm", "sideways"], "model.backbone.norm"),
    # the LM's own options (generation ones are checked at fit too: a checkpoint would carry them nowhere)
    (["--model.temperature", "-1"], "model.temperature"),
    (["--model.temperature", "inf"], "model.temperature"),
    (["--model.top_p", "0"], "model.top_p"),
    (["--model.top_p", "1.5"], "model.top_p"),
    (["--model.max_new_tokens", "0"], "model.max_new_tokens"),
    (["--model.mlm_probability", "0"], "model.mlm_probability"),
    (["--model.mlm_probability", "1"], "model.mlm_probability"),
    (["--model.aux_weight", "-1"], "model.aux_weight"),
    (["--model.aux_objective", "heat"], "model.aux_objective"),
    # optimiser and penalty
    (["--model.optim.lr", "-1"], "model.optim.lr"),
    (["--model.optim.weight_decay", "-0.1"], "model.optim.weight_decay"),
    (["--model.optim.warmup_steps", "-1"], "model.optim.warmup_steps"),
    (["--model.optim.total_steps", "0"], "model.optim.total_steps"),
    (["--model.optim.min_lr_ratio", "0"], "model.optim.min_lr_ratio"),
    (["--model.optim.min_lr_ratio", "1.5"], "model.optim.min_lr_ratio"),
    (["--model.optim.betas", "[1.0, 0.9]"], "model.optim.betas"),
    (["--model.optim.options", '{"bogus": 1}'], "model.optim.options"),
    (["--model.optim.warmup_steps", "10", "--model.optim.total_steps", "5"], "model.optim.warmup_steps 10"),
    (["--model.penalty.weight", "-1"], "model.penalty.weight"),
    (["--model.penalty.step", "0"], "model.penalty.step"),
    # an empty value where the field takes none (where it takes one, test_nested_null_options_parse)
    (["--model.backbone.qk_dim", "null"], "model.backbone.qk_dim: expected int, got null"),
    (["--model.optim.lr=~"], "model.optim.lr: expected float, got null"),
    (["--model.init_args.backbone.n_layers", "Null"], "model.backbone.n_layers: expected int, got null"),
]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("extra,names", LM_FIT, ids=ids)
def test_lm_fit_option(small_corpus, workdir, capsys, extra, names):
    code, err = cli(["fit", *tiny_args(small_corpus, workdir, *extra)], capsys)
    one_error_line(code, err, names)
    assert not (workdir / "ckpt").exists()  # refused before anything ran


NBCE_MODEL = [
    (["--model.top_p", "0"], "model.top_p"),
    (["--model.top_p", "1.5"], "model.top_p"),
    (["--model.temperature", "-1"], "model.temperature"),
    (["--model.beta", "-2"], "model.beta"),
    (["--model.eta", "-1"], "model.eta"),
    (["--model.max_new_tokens", "0"], "model.max_new_tokens"),
    (["--model.template", "{context}"], "model.template"),
    (["--model.template", "{context} {question} {x}"], "model.template"),
    (["--model.pooling", "max"], "model.pooling"),
]


@pytest.mark.parametrize("extra,names", NBCE_MODEL, ids=ids)
def test_nbce_model_option_before_the_model_is_loaded(workdir, capsys, extra, names):
    args = ["--config", str(REPO / "configs/nbce/kslm-lm.yaml"), "--model.checkpoint", str(workdir / "none.ckpt"),
            "--data.predict_file", str(REPO / "data/samples/nbce.jsonl"), *extra]
    line = one_error_line(*cli(["predict", *args], capsys), names)
    assert "none.ckpt" not in line


def test_nested_null_options_parse():
    """`--model.optim.total_steps null` empties a nested field that takes None (jsonargparse alone refuses the dotted
    form in a subclass section); the rewrite keeps every other value the config and earlier options gave."""
    from jsonargparse import Namespace

    from kslm.cli.argv import check_nulls, nested_nulls

    argv, keys = nested_nulls(["fit", "--model.backbone.d_model", "64", "--model.optim.total_steps", "null",
                               "--model.init_args.backbone.d_ff=~", "--data.batch_size", "null", "--model.lr", "null"])
    assert argv == ["fit", "--model.backbone.d_model", "64", "--model.optim", '{"total_steps": null}',
                    "--model.backbone", '{"d_ff": null}', "--data.batch_size", "null", "--model.lr", "null"]
    assert keys == ["model.optim.total_steps", "model.backbone.d_ff"]
    cfg = Namespace(model=Namespace(class_path="kslm.tasks.lm.LanguageModel"))
    check_nulls(cfg, keys)  # both fields are Optional[int]
