"""The checkpoint payload (kslm.checkpoint) and the one-way connection of model and data (kslm.cli.connect), through
`kslm …` in-process: a checkpoint knows its task, so `kslm predict --ckpt_path X` needs no config and gives what the
config gives; another task's checkpoint, an unreadable file and a window longer than the backbone's are one-line
errors with exit code 2, the last one before any data is read."""

import json
import os

import pytest
import torch
from helpers import CANONICAL, CLUENER, REPO, ner_args, read_jsonl, run_cli, tiny_args

from kslm.checkpoint import FORMAT_VERSION, Payload, payload_of, read_payload
from kslm.errors import CheckpointError


def _one_line(code, err):
    lines = [line for line in err.splitlines() if line.startswith("kslm:")]
    assert code == 2 and len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------------------------------------ the payload


def test_payload_names_task_settings_and_data(ckpts):
    p = read_payload(ckpts["ner"])
    assert p.version == FORMAT_VERSION and p.task == "EntityExtraction"
    assert p.labels == ["game", "name", "organization"] and p.head == {"head": "egp", "head_size": 16}
    assert p.data["max_length"] == 32 and p.data["batch_size"] == 4
    assert p.settings["optim"]["lr"] > 0 and p.settings["penalty"]["kind"] == "none"
    assert p.settings["backbone"] == p.backbone and p.backbone["d_model"] == 32 and p.backbone["vocab_size"] > 5
    assert "hyper_parameters" not in torch.load(ckpts["ner"], weights_only=True)  # the payload is the one record
    r = read_payload(ckpts["re"])
    assert r.task == "RelationExtraction" and r.head == {"head_size": 32}
    lm = read_payload(ckpts["lm"])
    assert lm.task == "LanguageModel" and lm.labels is None and lm.backbone["block"] == "gau"
    assert "max_new_tokens" not in lm.settings  # run-time options stay on the command line


@pytest.mark.parametrize("task", ["ner", "re", "lm"])
def test_load_from_checkpoint_outside_a_trainer(ckpts, task):
    """The task class rebuilds itself from the payload alone; another task's class is refused."""
    from kslm.tasks.lm import LanguageModel
    from kslm.tasks.ner import EntityExtraction
    from kslm.tasks.re import RelationExtraction

    cls = {"ner": EntityExtraction, "re": RelationExtraction, "lm": LanguageModel}[task]
    model = cls.load_from_checkpoint(ckpts[task]).eval()
    state = torch.load(ckpts[task], weights_only=True)["state_dict"]
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert model.tokenizer.to_str() == read_payload(ckpts[task]).tokenizer
    other = EntityExtraction if task != "ner" else RelationExtraction
    with pytest.raises(CheckpointError, match=f"cannot be loaded into {other.__name__}"):
        other.load_from_checkpoint(ckpts[task])


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def test_payload_round_trip_and_versions(ckpts):
    ckpt = torch.load(ckpts["ner"], weights_only=True)
    p = payload_of(ckpt)
    again = Payload.from_dict(p.to_dict())
    assert again.to_dict().keys() == p.to_dict().keys()
    assert all(_same(a, b) for a, b in zip(again.to_dict().values(), p.to_dict().values(), strict=True))
    assert len(p.rngs) == 1 and torch.equal(p.rngs[0]["cpu"], p.rng)  # one process: its own state, as rank 0's
    flat = {"backbone": p.backbone, "tokenizer": p.tokenizer, "types": p.labels, "head": "egp", "head_size": 16}
    old = Payload.from_dict(flat)  # written before the payload had a version
    assert old.task == "EntityExtraction" and old.labels == p.labels and old.head == p.head
    assert Payload.from_dict({"backbone": p.backbone, "tokenizer": p.tokenizer, "predicates": ["x"]}).task == \
        "RelationExtraction"
    with pytest.raises(CheckpointError, match="newer"):
        Payload.from_dict({**p.to_dict(), "version": FORMAT_VERSION + 1})
    with pytest.raises(CheckpointError, match="not a kslm checkpoint"):
        payload_of({"state_dict": {}})


@pytest.mark.parametrize("content", [b"", b"\x00" * 10, os.urandom(256), "a text file\n".encode(), b"PK\x03\x04junk"],
                         ids=["empty", "zeros", "random", "text", "truncated-zip"])
@pytest.mark.parametrize("sub", ["fit", "validate", "test", "predict"])
def test_unreadable_ckpt_path_is_one_line(workdir, capsys, small_corpus, content, sub):
    bad = workdir / "bad.ckpt"
    bad.write_bytes(content)
    code, err = run_cli([sub, *tiny_args(small_corpus, workdir, "--ckpt_path", str(bad))], capsys)
    line = _one_line(code, err)
    assert "bad.ckpt" in line and "ckpt_path" in line and "Traceback" not in err


def test_not_a_kslm_checkpoint_is_one_line(workdir, capsys, small_corpus):
    plain = workdir / "plain.ckpt"
    torch.save({"state_dict": {}, "epoch": 0}, plain)
    line = _one_line(*run_cli(["predict", *tiny_args(small_corpus, workdir, "--ckpt_path", str(plain))], capsys))
    assert "not a kslm checkpoint" in line and "plain.ckpt" in line


# ------------------------------------------------------------------------------------- another task's checkpoint


@pytest.mark.parametrize("ckpt,config,sub", [
    ("re", "configs/ner/cluener-egp.yaml", "predict"), ("ner", "configs/re/duie-gplinker.yaml", "predict"),
    ("lm", "configs/ner/cluener-egp.yaml", "validate"), ("ner", "configs/lm/gau.yaml", "fit"),
])
def test_another_tasks_checkpoint_names_both_tasks(ckpts, workdir, capsys, ckpt, config, sub):
    args = ["--config", str(REPO / config), "--ckpt_path", str(ckpts[ckpt]), "--data.predict_file",
            str(CLUENER if ckpt != "lm" else CANONICAL)]
    line = _one_line(*run_cli([sub, *args], capsys))
    names = {"lm": "LanguageModel", "ner": "EntityExtraction", "re": "RelationExtraction"}
    configured = {"ner": "EntityExtraction", "re": "RelationExtraction", "lm": "LanguageModel"}[config.split("/")[1]]
    assert names[ckpt] in line and configured in line and str(ckpts[ckpt]) in line


# ---------------------------------------------------------------------------------------- predict without config


def _predict(args, capsys, out):
    code, err = run_cli(["predict", *args, "--predictions.path", str(out), "--trainer.enable_progress_bar", "false"],
                        capsys)
    assert code == 0, err
    return read_jsonl(out)


def test_lm_predict_without_config_equals_with_config(ckpts, workdir, capsys, small_corpus):
    prompts = workdir / "prompts.txt"
    prompts.write_text("The class statement\nA module is\n", encoding="utf-8")
    common = ["--ckpt_path", str(ckpts["lm"]), "--data.predict_file", str(prompts), "--model.max_new_tokens", "8"]
    alone = _predict(common, capsys, workdir / "a.jsonl")
    with_config = _predict(["--config", str(REPO / "configs/lm/gau.yaml"), *common], capsys, workdir / "b.jsonl")
    assert len(alone) == 2 and alone == with_config
    assert all(r["token_ids"] for r in alone)


@pytest.mark.parametrize("task", ["ner", "re"])
def test_extraction_predict_without_config_equals_with_config(ckpts, workdir, capsys, task):
    source = CLUENER if task == "ner" else CANONICAL
    config = "configs/ner/cluener-egp.yaml" if task == "ner" else "configs/re/duie-gplinker.yaml"
    common = ["--ckpt_path", str(ckpts[task]), "--data.predict_file", str(source)]
    alone = _predict(common, capsys, workdir / "a.jsonl")
    no_training_data = ["--data.train_file", "null", "--data.val_file", "null", "--data.max_length", "32"]
    if task == "ner":
        no_training_data += ["--data.dev_split", "null"]
    with_config = _predict(["--config", str(REPO / config), *no_training_data, *common], capsys, workdir / "b.jsonl")
    n = sum(1 for line in source.read_text(encoding="utf-8").splitlines() if line.strip())
    assert len(alone) == n and alone == with_config
    key = "entities" if task == "ner" else "triples"
    assert sum(len(r[key]) for r in alone) > 0


# ---------------------------------------------------------------------------------- window vs backbone length


def test_data_max_length_above_backbone_is_refused_before_reading(workdir, capsys):
    broken = workdir / "broken.jsonl"  # were the data read, the error would name this file's bad JSON
    broken.write_text('{"text": "ok", "label": {}}\n{not json\n', encoding="utf-8")
    args = ner_args(workdir, "--data.max_length", "600", data=broken)
    line = _one_line(*run_cli(["fit", *args], capsys))
    assert "data.max_length 600" in line and "model.backbone.max_length 512" in line


def test_lm_seq_len_above_backbone_is_refused_before_reading(workdir, capsys):
    corpus = workdir / "corpus.jsonl"
    corpus.write_text('{"no_text_field": 1}\n', encoding="utf-8")  # reading it would fail differently
    args = tiny_args(corpus, workdir, "--data.seq_len", "64", "--model.backbone.max_length", "32")
    line = _one_line(*run_cli(["fit", *args], capsys))
    assert "data.seq_len 64" in line and "model.backbone.max_length 32" in line


def test_window_checked_against_the_checkpoints_backbone(ckpts, workdir, capsys):
    args = ["--ckpt_path", str(ckpts["ner"]), "--data.predict_file", str(CLUENER), "--data.max_length", "100000"]
    line = _one_line(*run_cli(["predict", *args], capsys))
    assert "data.max_length 100000" in line and "checkpoint" in line


def test_payload_is_json_safe_but_for_the_rng(ckpts):
    d = read_payload(ckpts["re"]).to_dict()
    d.pop("rng")
    d.pop("rngs")  # (each rank's random state)
    json.dumps(d)
