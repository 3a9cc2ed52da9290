"""GPLinker relation extraction end to end through `kslm …` (in-process), on the hand-written sample files.

One fit (module fixture) overfits data/samples/re_canonical.jsonl; the tests read its checkpoint, logs and
predictions. Data errors stop before training."""

import json
import math

import pytest
import torch
from helpers import CANONICAL, DUIE, RE_CONFIG, fit_in, re_args, read_jsonl, run_cli, scalars

STEPS = 60


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """60 steps on the 6 canonical sample records (one batch: train = val), in a folder of its own."""
    tmp = tmp_path_factory.mktemp("re-fit")
    fit_in(tmp, re_args(tmp, steps=STEPS))
    return tmp


def gold_records(path=CANONICAL):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_checkpoint_holds_predicates_head_and_tokenizer(fitted):
    ckpt = torch.load(fitted / "ckpt" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == STEPS
    predicates = sorted({t["predicate"] for r in gold_records() for t in r["triples"]})
    assert ckpt["kslm"]["labels"] == predicates and ckpt["kslm"]["head"]["head_size"] == 32
    assert '"model"' in ckpt["kslm"]["tokenizer"] and ckpt["kslm"]["backbone"]["mask"] == "bidirectional"
    P = len(predicates)  # head / tail EGPs: one bias pair per predicate; entity EGP: 2 heads (subject, object)
    assert ckpt["state_dict"]["head_module.head.q_dense.weight"].shape[0] == 2 * P
    assert ckpt["state_dict"]["head_module.entity.q_dense.weight"].shape[0] == 4
    assert {"train/loss", "val/loss", "val/precision", "val/recall", "val/f1"} <= set(scalars(fitted / "logs"))


def test_overfits_the_sample_records(fitted):
    """Triple F1 1.0 on the training records proves targets (token shift, pair layout) and decoding (char mapping,
    window merge) agree end to end."""
    tags = scalars(fitted / "logs")
    assert tags["val/f1"] == 1.0 and tags["val/precision"] == 1.0, tags


def test_validate_from_checkpoint_gives_the_logged_val_metrics(fitted, workdir, capsys):
    """Reload-then-evaluate == the in-training evaluation at the last step (same loss and F1)."""
    trained = scalars(fitted / "logs")
    args = re_args(workdir, "--ckpt_path", str(fitted / "ckpt" / "last.ckpt"))
    code, err = run_cli(["validate", *args], capsys)
    assert code == 0, err
    again = scalars(workdir / "logs")
    assert again["val/f1"] == trained["val/f1"]
    assert again["val/loss"] == pytest.approx(trained["val/loss"], rel=1e-5)


@pytest.mark.parametrize("source", [CANONICAL, DUIE], ids=["canonical", "duie"])
def test_predict_from_checkpoint_writes_canonical_jsonl(fitted, workdir, capsys, source):
    """Only the checkpoint (no training data, a config with other head/backbone sizes): one output line per input
    line, in order, canonical triples whose spans cover their strings; on the training records, exactly the gold."""
    out = workdir / "pred.jsonl"
    args = ["--config", str(RE_CONFIG), "--data.train_file", "null", "--data.val_file", "null",
            "--data.predict_file", str(source), "--data.max_length", "32",
            "--ckpt_path", str(fitted / "ckpt" / "last.ckpt"), "--predictions.path", str(out),
            "--trainer.enable_progress_bar", "false"]
    code, err = run_cli(["predict", *args], capsys)
    assert code == 0, err
    recs, src = read_jsonl(out), gold_records(source)
    assert [r["line"] for r in recs] == list(range(1, len(src) + 1))
    assert [r["text"] for r in recs] == [s["text"] for s in src]
    for r in recs:
        for t in r["triples"]:
            (a, b), (c, d) = t["subject_span"], t["object_span"]
            assert r["text"][a:b] == t["subject"] and r["text"][c:d] == t["object"]
    if source == CANONICAL:
        assert [r["triples"] for r in recs] == [sorted(s["triples"], key=lambda t: (*t["subject_span"], t["predicate"],
                                                                                  *t["object_span"])) for s in src]


def _one_error_line(code, err):
    lines = [line for line in err.splitlines() if line.startswith("kslm:")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("kslm: error:"), err
    return lines[0]


def test_unknown_predicate_in_val_names_file_and_line(workdir, capsys):
    val = workdir / "val.jsonl"
    rec = {"text": "张三在北京", "triples": [{"subject": "张三", "predicate": "居住地", "object": "北京",
                                          "subject_span": [0, 2], "object_span": [3, 5]}]}
    val.write_text("\n" + json.dumps(rec, ensure_ascii=False) + "\n", encoding="utf-8")
    line = _one_error_line(*run_cli(["fit", *re_args(workdir, val=val)], capsys))
    assert f"{val}:2" in line and "居住地" in line and "triples[0].predicate" in line


def test_entity_not_in_text_names_file_and_line(workdir, capsys):
    bad = workdir / "bad.jsonl"
    lines = DUIE.read_text(encoding="utf-8").splitlines()
    rec = json.loads(lines[2])
    rec["spo_list"][0]["object"] = "大刘"
    bad.write_text("\n".join([*lines[:2], json.dumps(rec, ensure_ascii=False), *lines[3:]]) + "\n", encoding="utf-8")
    line = _one_error_line(*run_cli(["fit", *re_args(workdir, data=bad, val=DUIE)], capsys))
    assert f"{bad}:3" in line and "大刘" in line and "spo_list[0].object" in line


def test_invalid_json_names_file_and_line(workdir, capsys):
    bad = workdir / "bad.jsonl"
    bad.write_text(CANONICAL.read_text(encoding="utf-8") + '{"text": "x", "triples": [\n', encoding="utf-8")
    line = _one_error_line(*run_cli(["fit", *re_args(workdir, data=bad, fmt="canonical")], capsys))
    assert f"{bad}:{len(gold_records()) + 1}" in line and "invalid JSON" in line


def test_causal_backbone_is_a_config_error(workdir, capsys):
    line = _one_error_line(*run_cli(["fit", *re_args(workdir, "--model.backbone.mask", "causal")], capsys))
    assert "bidirectional" in line


@pytest.mark.parametrize("optimizer,penalty", [("amos", "input"), ("eg_adamw", "parameter")])
def test_optimizers_and_penalties_reach_relation_extraction(tmp_path, monkeypatch, optimizer, penalty):
    """The optimisation options live in KslmTask: RelationExtraction gets them through compute_loss."""
    monkeypatch.chdir(tmp_path)
    args = re_args(tmp_path, "--model.optim.name", optimizer, "--model.penalty.kind", penalty,
                   "--model.penalty.weight", "0.1", steps=3)
    code, err = run_cli(["fit", *args])
    assert code == 0, err
    tags = scalars(tmp_path / "logs")
    assert tags["train/penalty"] > 0 and math.isfinite(tags["train/loss"])
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 3
