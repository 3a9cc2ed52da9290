"""Fine-tuning paths of the extraction tasks: `--model.pretrained` (a kslm LM checkpoint), `--model.hf_path` (a local
Hugging Face encoder) and reload-then-evaluate (`kslm validate --ckpt_path` reproduces the in-training evaluation)."""

import json

import pytest
import torch
from helpers import CLUENER, REPO, ner_args, read_jsonl, run_cli, scalars

STATE = "state_dict"


def lm_pretrain(tmp, capsys):
    """A seconds-long masked-LM pretraining on the CLUENER sample texts (char tokenizer) → its last.ckpt."""
    args = ["--config", str(REPO / "configs/ner/cluener-pretrain.yaml"), "--data.data_files", str(CLUENER),
            "--data.seq_len", "8", "--data.batch_size", "4", "--data.val_fraction", "0.2",
            "--model.backbone.d_model", "32", "--model.backbone.n_layers", "2", "--model.backbone.n_heads", "2",
            "--model.optim.warmup_steps", "0", "--trainer.max_steps", "3", "--trainer.val_check_interval", "3",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--checkpoint.dirpath", str(tmp / "lm")]
    code, err = run_cli(["fit", *args], capsys)
    assert code == 0, err
    return tmp / "lm" / "last.ckpt"


def test_pretrained_init_takes_weights_config_and_tokenizer(workdir, capsys):
    lm = lm_pretrain(workdir, capsys)
    lm_ckpt = torch.load(lm, weights_only=True)
    # lr 0: after one step the backbone is still exactly the pretrained one; the config's d_model 32 / 2 layers are
    # overridden by the checkpoint's (same here) and the tokenizer is the checkpoint's, not one trained on the data
    args = ner_args(workdir, "--model.pretrained", str(lm), "--model.optim.lr", "0", "--model.optim.weight_decay", "0",
                    "--model.backbone.d_model", "64", "--model.backbone.dropout", "0.1", steps=1)
    code, err = run_cli(["fit", *args], capsys)
    assert code == 0, err
    ner = torch.load(workdir / "ckpt" / "last.ckpt", weights_only=True)
    assert ner["kslm"]["tokenizer"] == lm_ckpt["kslm"]["tokenizer"]
    cfg = ner["kslm"]["backbone"]
    assert cfg["d_model"] == 32 and cfg["mask"] == "bidirectional" and cfg["dropout"] == 0.1
    lm_backbone = {k: v for k, v in lm_ckpt[STATE].items() if k.startswith("backbone.")}
    assert lm_backbone and all(torch.equal(ner[STATE][k], v) for k, v in lm_backbone.items())
    assert any(k.startswith("head_module.") for k in ner[STATE])

    # resuming that run needs the pretrained file no more: its weights come from the run's own checkpoint
    lm.rename(lm.with_suffix(".moved"))
    args = ner_args(workdir, "--model.pretrained", str(lm), "--ckpt_path", str(workdir / "ckpt" / "last.ckpt"),
                    "--model.backbone.dropout", "0.1", steps=2)  # options that shape the run must match the checkpoint
    code, err = run_cli(["fit", *args], capsys)
    assert code == 0, err
    assert torch.load(workdir / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 2


def test_pretrained_tokenizer_mismatch_is_a_one_line_error(workdir, capsys):
    lm = lm_pretrain(workdir, capsys)
    from kslm.data.tokenizer import train_tokenizer

    other = workdir / "other.json"
    other.write_text(train_tokenizer(["完全不同的文本"], "char", 100, 1).to_str(), encoding="utf-8")
    code, err = run_cli(["fit", *ner_args(workdir, "--model.pretrained", str(lm), "--data.tokenizer", str(other))], capsys)
    lines = [line for line in err.splitlines() if line.startswith("kslm:")]
    assert code == 2 and len(lines) == 1, err
    assert str(lm) in lines[0] and "tokenizer differs" in lines[0]


def test_pretrained_missing_or_not_kslm_is_a_one_line_error(workdir, capsys):
    code, err = run_cli(["fit", *ner_args(workdir, "--model.pretrained", str(workdir / "nope.ckpt"))], capsys)
    assert code == 2 and "nope.ckpt" in err and "not found" in err, err


def test_reload_then_validate_equals_the_in_training_evaluation(workdir, tmp_path_factory, capsys, monkeypatch):
    args = ner_args(workdir, "--model.optim.lr", "3e-3", steps=30)
    code, err = run_cli(["fit", *args], capsys)
    assert code == 0, err
    trained = scalars(workdir / "logs")
    assert trained["val/f1"] > 0.3, trained  # a real evaluation, not an empty one
    other = tmp_path_factory.mktemp("validate")
    monkeypatch.chdir(other)
    val = ["--config", str(REPO / "configs/ner/cluener-egp.yaml"), "--data.train_file", str(CLUENER),
           "--data.val_file", str(CLUENER), "--data.dev_split", "null", "--data.batch_size", "3",
           "--data.max_length", "32", "--ckpt_path", str(workdir / "ckpt" / "last.ckpt"),
           "--trainer.enable_progress_bar", "false"]
    code, err = run_cli(["validate", *val], capsys)
    assert code == 0, err
    again = scalars(other / "logs")
    for key in ("val/f1", "val/precision", "val/recall", "val/loss"):
        assert again[key] == pytest.approx(trained[key], abs=1e-6), key


# ------------------------------------------------------------------ Hugging Face encoders (extra "hf")
def tiny_bert(path, texts):
    """A randomly initialised 2-layer BERT with a char-level WordPiece vocabulary, saved like a hub model."""
    transformers = pytest.importorskip("transformers")
    from tokenizers.implementations import BertWordPieceTokenizer

    chars = sorted({c for t in texts for c in t.lower()})
    pieces = ["##" + c for c in chars if c.isascii()]  # Latin words split into WordPiece pieces, as in Chinese BERT
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *pieces])}
    tok = BertWordPieceTokenizer(vocab, lowercase=True)
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    (path / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(cfg).save_pretrained(str(path))
    return path


def test_hf_tokenizer_from_vocab_txt_equals_tokenizer_json(tmp_path):
    from kslm.data.tokenizer import load_tokenizer, special_ids

    texts = [json.loads(line)["text"] for line in CLUENER.read_text(encoding="utf-8").splitlines()]
    bert = tiny_bert(tmp_path / "bert", texts)
    from_json = load_tokenizer(str(bert), kslm_specials=False)
    (bert / "tokenizer.json").unlink()
    from_vocab = load_tokenizer(str(bert), kslm_specials=False)
    for t in texts:
        a, b = from_json.encode(t, add_special_tokens=False), from_vocab.encode(t, add_special_tokens=False)
        assert a.ids == b.ids and a.offsets == b.offsets and 1 not in a.ids  # no [UNK]
    assert special_ids(from_vocab) == (2, 3, 0)


def test_hf_encoder_fits_and_predicts_without_its_directory(workdir, capsys):
    from kslm.hf.encoder import HFEncoder

    texts = [json.loads(line)["text"] for line in CLUENER.read_text(encoding="utf-8").splitlines()]
    bert = tiny_bert(workdir / "bert", texts)
    enc = HFEncoder.from_pretrained(bert)
    ids = torch.tensor([[2, 7, 8, 9, 3, 0]])
    mask = (ids != 0).long()
    import transformers

    ref = transformers.BertModel.from_pretrained(str(bert))(input_ids=ids, attention_mask=mask).last_hidden_state
    assert enc.training  # built for fine-tuning (dropout on); compared in eval mode, as from_pretrained returns it
    assert torch.allclose(enc.eval()(ids, mask), ref, atol=1e-6)

    args = ner_args(workdir, "--model.hf_path", str(bert), "--model.optim.lr", "3e-3", steps=40)
    code, err = run_cli(["fit", *args], capsys)
    assert code == 0, err
    ckpt = torch.load(workdir / "ckpt" / "last.ckpt", weights_only=True)
    assert ckpt["kslm"]["hf_config"]["model_type"] == "bert" and "[CLS]" in ckpt["kslm"]["tokenizer"]
    assert not any("pooler" in k for k in ckpt[STATE])
    assert scalars(workdir / "logs")["val/f1"] >= 0.5
    # resuming rebuilds the encoder from its directory's config and continues
    args = ner_args(workdir, "--model.hf_path", str(bert), "--ckpt_path", str(workdir / "ckpt" / "last.ckpt"), steps=41)
    code, err = run_cli(["fit", *args], capsys)
    assert code == 0, err
    assert torch.load(workdir / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 41

    bert.rename(workdir / "moved")  # the checkpoint alone: config, weights and tokenizer are inside
    out = workdir / "pred.jsonl"
    args = ["--config", str(REPO / "configs/ner/cluener-egp.yaml"), "--model.hf_path", str(bert),
            "--data.train_file", "null", "--data.dev_split", "null", "--data.predict_file", str(CLUENER),
            "--ckpt_path", str(workdir / "ckpt" / "last.ckpt"), "--predictions.path", str(out),
            "--trainer.enable_progress_bar", "false"]
    code, err = run_cli(["predict", *args], capsys)
    assert code == 0, err
    recs = read_jsonl(out)
    assert [r["text"] for r in recs] == texts
    assert sum(len(r["entities"]) for r in recs) > 0


def test_hf_path_without_config_json_is_a_one_line_error(workdir, capsys):
    pytest.importorskip("transformers")
    (workdir / "empty").mkdir()
    (workdir / "empty" / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n", encoding="utf-8")
    code, err = run_cli(["fit", *ner_args(workdir, "--model.hf_path", str(workdir / "empty"))], capsys)
    lines = [line for line in err.splitlines() if line.startswith("kslm:")]
    assert code == 2 and len(lines) == 1 and "config.json" in lines[0], err
