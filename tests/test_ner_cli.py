"""GlobalPointer / Efficient GlobalPointer NER end to end through `kslm …` (in-process), on the sample files."""

import json
import math

import pytest
import torch
from helpers import CLUENER, CMEEE, REPO, ner_args, read_jsonl, run_cli, scalars


@pytest.mark.parametrize("head", ["gp", "egp"])
@pytest.mark.parametrize("data", [CLUENER, CMEEE], ids=["cluener", "cmeee"])
def test_fit_writes_checkpoint_with_types_and_tokenizer(workdir, capsys, head, data):
    code, err = run_cli(["fit", *ner_args(workdir, data=data, head=head, steps=3)], capsys)
    assert code == 0, err
    ckpt = torch.load(workdir / "ckpt" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3
    expected = ["game", "name", "organization"] if data == CLUENER else ["bod", "dis", "dru", "pro", "sym"]
    assert ckpt["kslm"]["labels"] == expected and ckpt["kslm"]["head"]["head"] == head
    assert '"model"' in ckpt["kslm"]["tokenizer"] and ckpt["kslm"]["backbone"]["mask"] == "bidirectional"
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    assert {"train/loss", "val/loss", "val/precision", "val/recall", "val/f1"} <= set(scalars(workdir / "logs"))


@pytest.mark.parametrize("data", [CLUENER, CMEEE], ids=["cluener", "cmeee"])
def test_predict_from_checkpoint_writes_one_line_per_record(workdir, capsys, data):
    assert run_cli(["fit", *ner_args(workdir, data=data, steps=2)], capsys)[0] == 0
    out = workdir / "pred.jsonl"
    # only the checkpoint: no training data, and a config whose head / backbone sizes differ from the checkpoint's
    args = ["--config", str(REPO / "configs/ner/cluener-egp.yaml"), "--data.train_file", "null",
            "--data.dev_split", "null", "--data.predict_file", str(data), "--data.max_length", "8",
            "--ckpt_path", str(workdir / "ckpt" / "last.ckpt"), "--predictions.path", str(out),
            "--trainer.enable_progress_bar", "false"]
    code, err = run_cli(["predict", *args], capsys)
    assert code == 0, err
    recs = read_jsonl(out)
    if data == CLUENER:
        src = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
        assert [r["line"] for r in recs] == [1, 2, 3, 4]
    else:
        src = json.loads(data.read_text(encoding="utf-8"))
        assert [r["line"] for r in recs] == [1, 2, 3]
    assert [r["text"] for r in recs] == [s["text"] for s in src]
    for r in recs:
        for e in r["entities"]:
            assert 0 <= e["start"] < e["end"] <= len(r["text"]) and e["text"] == r["text"][e["start"]:e["end"]]
            assert e["type"] in torch.load(workdir / "ckpt" / "last.ckpt", weights_only=True)["kslm"]["labels"]


@pytest.mark.parametrize("head", ["gp", "egp"])
def test_overfits_the_sample_records(workdir, capsys, head):
    """60 steps on the 4 CLUENER sample records (nested CMeEE: below) reach val F1 ≥ 0.9 on the same records; the
    windows (max_length 12 → 10 chars, stride 2) make entities span window borders, so merging is exercised."""
    args = ner_args(workdir, "--model.optim.lr", "3e-3", "--data.max_length", "12", head=head, steps=60)
    code, err = run_cli(["fit", *args], capsys)
    assert code == 0, err
    tags = scalars(workdir / "logs")
    assert tags["val/f1"] >= 0.9, tags


def test_overfits_nested_entities(workdir, capsys):
    args = ner_args(workdir, "--model.optim.lr", "3e-3", data=CMEEE, steps=60)
    code, err = run_cli(["fit", *args], capsys)
    assert code == 0, err
    tags = scalars(workdir / "logs")
    assert tags["val/f1"] >= 0.9, tags


def test_unknown_type_in_val_is_a_one_line_error(workdir, capsys):
    val = workdir / "val.jsonl"
    val.write_text(json.dumps({"text": "王五去上海", "label": {"address": {"上海": [[3, 4]]}}}, ensure_ascii=False) + "\n",
                   encoding="utf-8")
    code, err = run_cli(["fit", *ner_args(workdir, val=val)], capsys)
    # (Lightning's own INFO lines may precede it, or their "Logging error" when its handler holds an earlier
    # test's closed capture stream: only kslm's lines are checked)
    lines = [line for line in err.splitlines() if line.startswith("kslm:")]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("kslm: error:") and str(val) in lines[0] and "address" in lines[0]


def test_causal_backbone_is_a_config_error(workdir, capsys):
    code, err = run_cli(["fit", *ner_args(workdir, "--model.backbone.mask", "causal")], capsys)
    assert code == 2 and err.strip().startswith("kslm: error:") and "bidirectional" in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_long_texts_are_windowed_and_mapped_back(tmp_path, caplog):
    """Windows of 6 chars (stride 4): every entity is in some window, <s>-shifted token spans and offsets agree.
    With windows of 4 chars the two 4-5 char game names fit nowhere: counted in a warning, not dropped silently."""
    from kslm.data.ner import NERDataModule

    small = NERDataModule(str(CLUENER), str(CLUENER), max_length=6, stride=1, cache_dir=str(tmp_path))
    small.setup("fit")
    assert "2 entities are not on token boundaries or fit in no window" in caplog.text

    dm = NERDataModule(str(CLUENER), str(CLUENER), max_length=8, stride=4, batch_size=2, cache_dir=str(tmp_path))
    dm.setup("fit")
    assert dm.types == ["game", "name", "organization"]
    rec = dm.val_set[1]  # 玩了一下午NBA2K和CSOL游戏: 16 chars → several windows
    assert len(rec["windows"]) > 1
    found = set()
    for w in rec["windows"]:
        assert w["ids"][0] == 2 and w["ids"][-1] == 3 and len(w["ids"]) <= 8
        for s, e, t in w["spans"]:
            found.add((w["offsets"][s - 1][0], w["offsets"][e - 1][1], dm.types[t]))
    gold = {(e["start"], e["end"], e["type"]) for e in rec["entities"]}
    assert found == gold
    batch = dm.collate_records(dm.val_set[:2])
    B, T = batch["input_ids"].shape
    assert batch["labels"].shape == (B, 3, T, T) and batch["span_mask"][:, 0].sum() == 0
    assert int(batch["labels"].sum()) == sum(len(w["spans"]) for r in dm.val_set[:2] for w in r["windows"])


def test_token_dropout_replaces_text_tokens_only():
    """Word dropout: about p of the text tokens become <unk>; <s>, </s>, padding and eval batches are untouched."""
    from kslm.data.tokenizer import train_tokenizer
    from kslm.nn.backbone import BackboneConfig
    from kslm.tasks.ner import EntityExtraction

    tok = train_tokenizer(["北京欢迎你", "上海的天气"], kind="char", vocab_size=100)
    task = EntityExtraction(BackboneConfig(mask="bidirectional"), token_dropout=0.3)
    task.tokenizer = tok
    cls, sep, pad, unk = (tok.token_to_id(t) for t in ("<s>", "</s>", "<pad>", "<unk>"))
    torch.manual_seed(0)
    text = torch.randint(5, 100, (64, 40))  # any non-special ids
    ids = torch.cat([torch.full((64, 1), cls), text, torch.full((64, 1), sep), torch.full((64, 8), pad)], 1)
    mask = (ids != pad).long()
    out = task.drop_tokens(ids, mask)
    dropped = out != ids
    assert (out[dropped] == unk).all()
    assert not dropped[:, 0].any() and not dropped[:, 41:].any()  # <s>, </s>, padding
    assert abs(dropped[:, 1:41].float().mean().item() - 0.3) < 0.03  # 2,560 Bernoulli(0.3) draws: σ ≈ 0.009
    with pytest.raises(Exception, match="token_dropout"):
        EntityExtraction(BackboneConfig(mask="bidirectional"), token_dropout=1.0)


def test_fit_with_token_dropout_and_dropout(workdir, capsys):
    code, err = run_cli(["fit", *ner_args(workdir, "--model.token_dropout", "0.2", "--model.backbone.dropout", "0.1")], capsys)
    assert code == 0, err
    assert torch.load(workdir / "ckpt" / "last.ckpt", weights_only=True)["kslm"]["settings"]["token_dropout"] == 0.2


def test_bce_baseline_loss_is_the_mean_over_valid_cells():
    """`--model.loss bce` (the MCCE post's baseline): per-cell sigmoid CE averaged over the finite (valid) cells only,
    against a float64 loop; the default stays MCCE."""
    from kslm.losses import multilabel_categorical_crossentropy
    from kslm.nn.backbone import BackboneConfig
    from kslm.tasks.ner import EntityExtraction

    torch.manual_seed(0)
    B, K, L = 2, 3, 5
    logits = torch.randn(B, K, L, L) * 3
    valid = torch.ones(L, L).triu().bool().expand(B, K, L, L).clone()
    valid[1, :, :, 3:] = False  # a shorter second sentence
    logits = logits.masked_fill(~valid, float("-inf"))
    labels = (torch.rand(B, K, L, L) < 0.2) & valid
    want, n = 0.0, 0
    for x, y, v in zip(logits.flatten().tolist(), labels.flatten().tolist(), valid.flatten().tolist(), strict=True):
        if v:
            p = 1 / (1 + math.exp(-x))
            want -= math.log(p) if y else math.log(1 - p)
            n += 1
    task = EntityExtraction(BackboneConfig(mask="bidirectional"), loss="bce")
    assert task.loss(logits, labels.float()).item() == pytest.approx(want / n, rel=1e-5)
    mcce = EntityExtraction(BackboneConfig(mask="bidirectional"))
    expected = multilabel_categorical_crossentropy(y_true=labels.float().reshape(B * K, -1), y_pred=logits.reshape(B * K, -1))
    torch.testing.assert_close(mcce.loss(logits, labels.float()), expected.mean())


def test_fit_with_bce_loss(workdir, capsys):
    code, err = run_cli(["fit", *ner_args(workdir, "--model.loss", "bce", steps=3)], capsys)
    assert code == 0, err
    ckpt = torch.load(workdir / "ckpt" / "last.ckpt", weights_only=True)
    assert ckpt["kslm"]["settings"]["loss"] == "bce"
    assert math.isfinite(scalars(workdir / "logs")["val/loss"])
