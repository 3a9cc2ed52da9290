"""The checkpoint resolved once (issue 24): `--ckpt_path` is opened once in argument parsing (path resolved, payload
and shapes checked), that one object is handed to connect and the task, and Lightning restores from the dict kslm
read — so the file is read exactly once per command, `last` included, and nothing that read is reused once Lightning
owns it (a resumed optimiser changes its state in place)."""

import re
import shutil
from pathlib import Path

import pytest
import torch
from bad_inputs import cli
from helpers import REPO, ner_args, tiny_args


@pytest.fixture
def loads(monkeypatch):
    """Every torch.load in this process, by the resolved path it read (a path or an open file); `loads.clear()`
    also empties kslm's memory of opened checkpoints, so each command starts cold (another test of this process may
    have opened the same file)."""
    import kslm.checkpoint

    class Seen(list):
        def clear(self):
            super().clear()
            kslm.checkpoint._OPENED.clear()

    seen = Seen()
    real = torch.load

    def counting(f, *args, **kwargs):
        name = f if isinstance(f, (str, Path)) else getattr(f, "path", getattr(f, "name", None))
        if name is not None:
            seen.append(Path(str(name)).resolve())
        return real(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting)
    return seen


def _reads(loads, path) -> int:
    target = Path(path).resolve()
    return sum(1 for p in loads if p == target)


def test_predict_validate_and_test_read_the_checkpoint_once(ckpts, workdir, capsys, loads):
    from helpers import CLUENER

    prompts = workdir / "prompts.txt"
    prompts.write_text("def f(x):\n", encoding="utf-8")
    for args, ckpt in ((["predict", "--ckpt_path", str(ckpts["lm"]), "--data.predict_file", str(prompts),
                         "--model.max_new_tokens", "2"], ckpts["lm"]),
                       (["validate", "--ckpt_path", str(ckpts["ner"]), "--data.val_file", str(CLUENER)], ckpts["ner"]),
                       (["test", "--ckpt_path", str(ckpts["ner"]), "--data.val_file", str(CLUENER)], ckpts["ner"])):
        loads.clear()
        code, err = cli(args, capsys)
        assert code == 0, err[-2000:]
        assert _reads(loads, ckpt) == 1, (args[0], loads)


def test_a_resumed_fit_reads_its_checkpoint_once_and_leaves_no_stale_copy(small_corpus, workdir, capsys, loads):
    """fit --ckpt_path FILE and fit --ckpt_path last: one read each; afterwards opening the file gives what is on
    disk (the dict Lightning restored the optimiser from is not served again)."""
    from kslm.checkpoint import open_checkpoint

    code, err = cli(["fit", *tiny_args(small_corpus, workdir, steps=2)], capsys)
    assert code == 0, err[-2000:]
    first = workdir / "ckpt" / "last.ckpt"
    kept = workdir / "kept.ckpt"
    shutil.copyfile(first, kept)
    loads.clear()
    code, err = cli(["fit", *tiny_args(small_corpus, workdir, "--ckpt_path", str(kept), steps=4)], capsys)
    assert code == 0, err[-2000:]
    assert _reads(loads, kept) == 1, loads
    on_disk = torch.load(kept, map_location="cpu", weights_only=True)
    opened = open_checkpoint(kept)
    states = on_disk["optimizer_states"][0]["state"], opened.raw["optimizer_states"][0]["state"]
    assert states[0].keys() == states[1].keys() and states[0]
    for a, b in zip(states[0].values(), states[1].values(), strict=True):
        for key in a:
            assert torch.equal(a[key], b[key]), key

    linked = workdir / "linked"
    linked.mkdir()
    args = ner_args(linked, steps=1)
    code, err = cli(["fit", *args, "--checkpoint.dirpath", "null", "--name", "once"], capsys)
    assert code == 0, err[-2000:]
    last = workdir / "checkpoints" / "once" / "last.ckpt"
    loads.clear()
    code, err = cli(["fit", *ner_args(linked, steps=2), "--checkpoint.dirpath", "null", "--name", "once",
                     "--ckpt_path", "last"], capsys)
    assert code == 0, err[-2000:]
    assert _reads(loads, last) == 1, loads


def test_connect_takes_the_opened_checkpoint_not_a_path():
    """The signature says it: connect gets the Checkpoint object the CLI opened (no path to read again)."""
    import inspect

    from kslm.cli.connect import connect

    assert list(inspect.signature(connect).parameters)[:3] == ["model", "data", "checkpoint"]
    text = (REPO / "kslm" / "cli" / "connect.py").read_text(encoding="utf-8")
    assert not re.search(r"\b(open_checkpoint|read_payload|read_checkpoint|torch\.load)\(", text)


def test_model_pretrained_is_read_once_and_handed_to_the_task(workdir, capsys, loads, monkeypatch):
    """--model.pretrained (a kslm LM checkpoint, or its export directory) is opened once by connect and the same
    object initialises the task's backbone: one torch.load of the file, one read of the export's weights."""
    import safetensors.torch
    from helpers import CLUENER

    lm_args = ["--config", str(REPO / "configs/ner/cluener-pretrain.yaml"), "--data.data_files", str(CLUENER),
               "--data.seq_len", "8", "--data.batch_size", "4", "--data.val_fraction", "0.2",
               "--model.backbone.d_model", "16", "--model.backbone.n_layers", "1", "--model.backbone.n_heads", "2",
               "--trainer.max_steps", "1", "--trainer.val_check_interval", "1", "--trainer.enable_progress_bar", "false",
               "--checkpoint.dirpath", str(workdir / "lm")]
    code, err = cli(["fit", *lm_args], capsys)
    assert code == 0, err[-2000:]
    lm = workdir / "lm" / "last.ckpt"
    loads.clear()
    code, err = cli(["fit", *ner_args(workdir, "--model.pretrained", str(lm), steps=1)], capsys)
    assert code == 0, err[-2000:]
    assert _reads(loads, lm) == 1, loads

    code, err = cli(["export", "--ckpt_path", str(lm), "--out", str(workdir / "exported")], capsys)
    assert code == 0, err[-2000:]
    reads, real = [], safetensors.torch.load_file
    monkeypatch.setattr(safetensors.torch, "load_file", lambda f, *a, **k: reads.append(Path(f).name) or real(f, *a, **k))
    code, err = cli(["fit", *ner_args(workdir, "--model.pretrained", str(workdir / "exported"), steps=1)], capsys)
    assert code == 0, err[-2000:]
    assert reads.count("model.safetensors") == 1, reads


def test_kslm_load_keeps_no_copy_of_the_file(ckpts, loads):
    """kslm.load (and kslm serve's workers through it) reads the checkpoint once and keeps only the model: the file's
    dict, optimiser state and all, is not held in kslm's memory of opened checkpoints afterwards."""
    import kslm
    import kslm.checkpoint

    loads.clear()
    model = kslm.load(ckpts["ner"])
    assert _reads(loads, ckpts["ner"]) == 1 and model.task == "ner"
    assert not kslm.checkpoint._OPENED
