"""A Hugging Face encoder fine-tunes in train mode (issue 14, item 1) and `--model.hf_path` takes hub names
(item 9): from the hub cache when it holds them, one line when it does not and the hub cannot be reached."""

import json
import os
import subprocess
import sys

import pytest
import torch
from bad_inputs import cli, one_error_line
from helpers import CLUENER, REPO, ner_args
from test_finetune import tiny_bert


def _stochastic(encoder) -> bool:
    """The encoder's output differs between two calls on the same input: its dropout is active."""
    ids = torch.tensor([[2, 7, 8, 9, 10, 3]])
    with torch.no_grad():
        return not torch.equal(encoder(ids, torch.ones_like(ids)), encoder(ids, torch.ones_like(ids)))


def test_hf_encoder_dropout_is_active_in_training_and_not_in_validation(workdir, capsys, monkeypatch, recwarn):
    from kslm.tasks.ner import EntityExtraction

    texts = [json.loads(line)["text"] for line in CLUENER.read_text(encoding="utf-8").splitlines()]
    bert = tiny_bert(workdir / "bert", texts)  # BERT's default dropout: 0.1 (hidden and attention)
    seen = {"train": [], "val": []}
    train_step, val_step = EntityExtraction.training_step, EntityExtraction.validation_step

    def probe(stage, step):
        def wrapped(self, batch, batch_idx):
            dropouts = [m for m in self.backbone.modules() if isinstance(m, torch.nn.Dropout)]
            seen[stage].append((_stochastic(self.backbone), len(dropouts), sum(m.training for m in dropouts)))
            return step(self, batch, batch_idx)
        return wrapped

    monkeypatch.setattr(EntityExtraction, "training_step", probe("train", train_step))
    monkeypatch.setattr(EntityExtraction, "validation_step", probe("val", val_step))
    code, err = cli(["fit", *ner_args(workdir, "--model.hf_path", str(bert), "--trainer.limit_val_batches", "1",
                                      "--trainer.num_sanity_val_steps", "0", steps=2)], capsys)
    assert code == 0, err
    assert len(seen["train"]) == 2 and len(seen["val"]) == 1, seen
    for stochastic, n, on in seen["train"]:
        assert stochastic and n > 0 and on == n, seen  # every dropout of the encoder on while training
    for stochastic, _, on in seen["val"]:
        assert not stochastic and on == 0, seen  # and off while validating
    assert not [w for w in recwarn if "eval mode" in str(w.message)], [str(w.message) for w in recwarn]


def test_hub_name_offline_and_not_cached_is_one_line(workdir, capsys, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "kslm-test/no-such-encoder"
    code, err = cli(["fit", *ner_args(workdir, "--model.hf_path", name)], capsys)
    assert one_error_line(code, err) == (f"kslm: error: model.hf_path {name}: not a local directory, and the Hugging "
                                         "Face hub cannot be reached (offline): download it first or give a local path")
    code, err = cli(["fit", *ner_args(workdir, "--model.hf_path", str(workdir / "no" / "such" / "dir"))], capsys)
    one_error_line(code, err, "not a local Hugging Face model directory", "model.hf_path")


HUB_SCRIPT = """
import sys, torch
from kslm.data.tokenizer import load_tokenizer
from kslm.hf.encoder import HFEncoder, local_dir
enc = HFEncoder.from_pretrained("kslm-test/tiny-bert")
saved = torch.load(sys.argv[1], weights_only=True)
same = all(torch.equal(v, saved[k]) for k, v in enc.model.state_dict().items())
print(enc.hidden_size, enc.model.training, same, load_tokenizer(str(local_dir("kslm-test/tiny-bert")), False).encode("赵平").ids)
"""


def test_hub_name_in_the_hub_cache_loads_offline(tmp_path):
    """A hub name whose files the hub cache holds: weights through from_pretrained(NAME), tokenizer and config from
    the cache, with HF_HUB_OFFLINE=1 (in a subprocess: the hub reads its cache folder when it is imported)."""
    pytest.importorskip("transformers")
    repo = tmp_path / "hub" / "models--kslm-test--tiny-bert"
    snapshot = repo / "snapshots" / ("0" * 40)
    tiny_bert(snapshot, ["赵平先生"])
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    weights = tmp_path / "weights.pt"
    from safetensors.torch import load_file

    torch.save({k: v for k, v in load_file(snapshot / "model.safetensors").items() if "pooler" not in k}, weights)
    vocab = (snapshot / "vocab.txt").read_text(encoding="utf-8").split()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", HUB_SCRIPT, str(weights)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split("\n")[-2] == f"32 True True {[vocab.index(c) for c in '[CLS] 赵 平 [SEP]'.split()]}"
