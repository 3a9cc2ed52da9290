"""The trust boundary (SECURITY.md): artefacts a stranger hands a user — checkpoint files, sharded checkpoint folders,
export directories, data files — are data. Each case is crafted here; each asserts that no code ran (a sentinel file
the payload would create stays absent), that the run ended with exit code 2 and one `kslm: error:` line, and that
nothing of the user's was touched. Checkpoints are crafted from an untrained tiny model, so no case trains."""

import copy
import json
import os
import pickle
import warnings

import pytest
import torch
from bad_inputs import one_error_line
from helpers import REPO, run_cli, save_untrained

from kslm.data.tokenizer import train_tokenizer
from kslm.nn import BackboneConfig
from kslm.tasks.lm import LanguageModel
from kslm.tasks.ner import EntityExtraction

BB = dict(d_model=16, n_layers=1, n_heads=2, qk_dim=8)


class _System:  # unpickled, it would run a shell command that creates the sentinel
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """{"ner": checkpoint dict, "lm": checkpoint dict} of untrained tiny models, as `kslm fit` writes them."""
    tok = train_tokenizer(["张三在北京李四王五甲乙丙丁", "Alan Bean is a pilot C D"], "char", 200, 1)
    tmp = tmp_path_factory.mktemp("made")
    ner = EntityExtraction(backbone=BackboneConfig(**BB, mask="bidirectional"), head_size=8, types=["LOC", "PER"])
    ner.connect(tok, ["LOC", "PER"], None, {"max_length": 32, "stride": None, "batch_size": 4})
    ner.build(tok)
    lm = LanguageModel(backbone=BackboneConfig(**BB))
    lm.connect(tok, data_settings={"seq_len": 16, "batch_size": 2})
    lm.build(tok)
    return {"ner": save_untrained(ner, tmp / "ner.ckpt"), "lm": save_untrained(lm, tmp / "lm.ckpt")}


@pytest.fixture
def home(tmp_path, monkeypatch, capsys):
    """The test's folder as working directory, a sentinel path no payload may create, an input file, and a file
    of the user's that must survive."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.jsonl").write_text('{"text": "张三在北京"}\n', encoding="utf-8")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's", encoding="utf-8")
    return tmp_path


def _untouched(home):
    assert not (home / "SENTINEL").exists(), "code from an artefact ran"
    assert (home / "mine" / "notes.txt").read_text(encoding="utf-8") == "the user's"


def _crafted(made, home, kind, edit):
    ckpt = copy.deepcopy(made[kind])
    edit(ckpt["kslm"], ckpt)
    path = home / f"crafted-{kind}.ckpt"
    torch.save(ckpt, path)
    return path


PREDICT = ["predict", "--data.predict_file", "in.jsonl", "--trainer.enable_progress_bar", "false"]


# ------------------------------------------------------------------------------------------ payloads
def _module_that_writes(home, monkeypatch):
    """An importable module whose top-level code creates the sentinel (what `class_path` would import)."""
    (home / "evil_mod.py").write_text(f"open({str(home / 'SENTINEL')!r}, 'w').close()\nclass Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(home))


PAYLOADS = {  # name → (checkpoint kind, edit of the payload, what the error names)
    "class_path in optim.options": ("ner", lambda p, c: p["settings"]["optim"]["options"].update(
        x={"class_path": "evil_mod.Thing"}), "settings.optim.options.x.class_path"),
    "class_path as pretrained": ("lm", lambda p, c: p["settings"].update(
        pretrained={"class_path": "evil_mod.Thing", "init_args": {}}), "settings.pretrained.class_path"),
    "init_args in the head": ("ner", lambda p, c: p["head"].update(init_args={"a": 1}), "head.init_args"),
    "class_path deep in a list": ("lm", lambda p, c: p["settings"].update(
        mlm_probability=[[{"class_path": "evil_mod.Thing"}]]), "class_path"),
    "cache_dir in data": ("ner", lambda p, c: p["data"].update(cache_dir="cache-of-the-ckpt"), "data.cache_dir"),
    "a data file in data": ("lm", lambda p, c: p["data"].update(data_files="/etc/passwd"), "data.data_files"),
    "a path as batch_size": ("lm", lambda p, c: p["data"].update(batch_size="/tmp/x"), "data.batch_size"),
    "an unknown payload field": ("lm", lambda p, c: p.update(callbacks=[]), "callbacks"),
    "an unknown setting": ("ner", lambda p, c: p["settings"].update(ckpt_dir="x"), "settings.ckpt_dir"),
    "an unknown backbone field": ("lm", lambda p, c: p["backbone"].update(class_path="evil_mod.Thing"), "backbone"),
    "a mistyped backbone field": ("lm", lambda p, c: p["backbone"].update(d_model="16"), "backbone.d_model"),
    "an empty label": ("ner", lambda p, c: p.update(labels=["LOC", " "]), "labels"),
    "a head option that is not one": ("ner", lambda p, c: p["head"].update(hf_path="mine"), "head.hf_path"),
    "rng that is not a tensor": ("lm", lambda p, c: p.update(rng=[1, 2]), "rng"),
    "NaN in a setting": ("lm", lambda p, c: p["settings"]["optim"].update(lr=float("nan")), "settings.optim.lr"),
}


@pytest.mark.parametrize("case", list(PAYLOADS))
@pytest.mark.parametrize("verb", ["predict", "validate", "export"])
def test_a_payload_never_reaches_the_parser_or_chooses_paths(made, home, monkeypatch, capsys, case, verb):
    kind, edit, names = PAYLOADS[case]
    _module_that_writes(home, monkeypatch)
    path = _crafted(made, home, kind, edit)
    args = {"predict": [*PREDICT, "--ckpt_path", str(path)],
            "validate": ["validate", "--ckpt_path", str(path), "--data.val_file", "in.jsonl"],
            "export": ["export", "--ckpt_path", str(path), "--out", "exported"]}[verb]
    one_error_line(*run_cli(args, capsys), str(path), names)
    _untouched(home)
    assert not (home / "cache-of-the-ckpt").exists() and not (home / "exported").exists()


@pytest.mark.parametrize("kind", ["lm", "ner"])
def test_lightnings_hyper_parameters_in_a_checkpoint_are_never_parsed(made, home, monkeypatch, capsys, kind):
    """A sound payload beside Lightning's own `hyper_parameters` naming a class: LightningCLI would parse them into
    the model section and import the class's module; kslm never reads them (the payload is the settings)."""
    _module_that_writes(home, monkeypatch)
    (home / "prompts.txt").write_text("张三\n", encoding="utf-8")
    extra = ["--data.predict_file", "prompts.txt", "--model.max_new_tokens", "1"] if kind == "lm" else []
    for hparams in ({"class_path": "evil_mod.Thing", "init_args": {}}, {"_class_path": "evil_mod.Thing", "lr": 1}):
        path = _crafted(made, home, kind, lambda p, c, h=hparams: c.update(hyper_parameters=copy.deepcopy(h)))
        code, err = run_cli([*PREDICT, "--ckpt_path", str(path), *extra], capsys)
        assert code == 0 and "Traceback" not in err, err[-2000:]
        _untouched(home)


# ------------------------------------------------------------------------------------------ lying shapes
SHAPES = {
    "d_model 60000": ("lm", lambda p, c: [p["backbone"].update(d_model=60000), p["settings"]["backbone"].update(d_model=60000)]),
    "120 layers": ("lm", lambda p, c: [p["backbone"].update(n_layers=120), p["settings"]["backbone"].update(n_layers=120)]),
    "head_size 2**20": ("ner", lambda p, c: [p["head"].update(head_size=1 << 20), p["settings"].update(head_size=1 << 20)]),
    "a tokenizer of 2**30 ids": ("lm", lambda p, c: _huge_vocabulary(p)),
    "weights dropped": ("ner", lambda p, c: c["state_dict"].pop(next(iter(c["state_dict"])))),
}


def _huge_vocabulary(p):
    tok = json.loads(p["tokenizer"])
    tok["added_tokens"].append({"id": (1 << 30) - 1, "content": "<far>", "single_word": False, "lstrip": False,
                                "rstrip": False, "normalized": False, "special": True})
    p["tokenizer"] = json.dumps(tok)
    for backbone in (p["backbone"], p["settings"]["backbone"]):
        backbone["vocab_size"] = 1 << 30


@pytest.mark.parametrize("case", list(SHAPES))
@pytest.mark.parametrize("verb", ["predict", "export"])
def test_a_checkpoint_claiming_a_larger_model_is_refused_before_allocating(made, home, capsys, case, verb):
    import resource

    kind, edit = SHAPES[case]
    path = _crafted(made, home, kind, edit)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    args = [*PREDICT, "--ckpt_path", str(path)] if verb == "predict" else ["export", "--ckpt_path", str(path), "--out", "x"]
    line = one_error_line(*run_cli(args, capsys), str(path), "--ckpt_path" if verb == "export" else "ckpt_path")
    assert "do not fit" in line or "cannot be built" in line, line
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 500, f"the process grew by {grown_mib:.0f} MiB"
    _untouched(home)


# ------------------------------------------------------------------------------------------ sharded folders
def _sharded(home, made, name="sharded.ckpt", state=None):
    """A sharded checkpoint folder as fsdp2 writes it: torch.distributed.checkpoint shards + Lightning's meta.pt."""
    import torch.distributed.checkpoint as dcp

    folder = home / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled … assuming a single process"
        dcp.save(state or {"state_dict": made["ner"]["state_dict"]}, checkpoint_id=str(folder), no_dist=True)
    torch.save({k: v for k, v in made["ner"].items() if k != "state_dict"}, folder / "meta.pt")
    return folder


def _evil_metadata(folder, home):
    (folder / ".metadata").write_bytes(pickle.dumps(_System(home / "SENTINEL")))


def _escaping_shard(folder, home):
    from kslm.checkpoint.sharded import SafeMetadataUnpickler

    with (folder / ".metadata").open("rb") as f:
        meta = SafeMetadataUnpickler(f).load()
    for info in meta.storage_data.values():
        info.relative_path = "../mine/notes.txt"
    with (folder / ".metadata").open("wb") as f:
        pickle.dump(meta, f)


def _evil_bytes_entry(home, made):
    return _sharded(home, made, "bytes.ckpt", {"state_dict": {**made["ner"]["state_dict"],
                                                              "extra": _System(home / "SENTINEL")}})


FOLDERS = {"an os.system .metadata": _evil_metadata, "a shard outside the folder": _escaping_shard,
           "an os.system bytes entry": None}


@pytest.mark.parametrize("case", list(FOLDERS))
@pytest.mark.parametrize("verb", ["predict", "export", "consolidate", "fit-fsdp2"])
def test_a_sharded_folder_runs_no_code(made, home, capsys, case, verb):
    if FOLDERS[case] is None:
        folder = _evil_bytes_entry(home, made)
    else:
        folder = _sharded(home, made)
        FOLDERS[case](folder, home)
    args = {"predict": [*PREDICT, "--ckpt_path", str(folder)],
            "export": ["export", "--ckpt_path", str(folder), "--out", "x"],
            "consolidate": ["consolidate", str(folder)],
            "fit-fsdp2": ["fit", "--model", "EntityExtraction", "--data", "NERDataModule", "--data.train_file", "in.jsonl",
                          "--trainer.strategy", "fsdp2", "--ckpt_path", str(folder)]}[verb]
    one_error_line(*run_cli(args, capsys), str(folder))
    _untouched(home)


def test_a_sound_sharded_folder_still_reads(made, home, capsys):
    from kslm.checkpoint import read_checkpoint

    folder = _sharded(home, made)
    state = read_checkpoint(folder)["state_dict"]
    assert all(torch.equal(state[k], v) for k, v in made["ner"]["state_dict"].items())
    code, err = run_cli(["consolidate", str(folder)], capsys)
    assert code == 0, err
    code, err = run_cli([*PREDICT, "--ckpt_path", str(folder.with_name("sharded.consolidated.ckpt"))], capsys)
    assert code == 0, err


# ------------------------------------------------------------------------------------------ export directories
def test_an_export_directory_read_back_is_data(made, home, monkeypatch, capsys):
    """`--model.pretrained DIR` reads kslm.json through the payload schema and checks shapes before building."""
    path = home / "lm.ckpt"
    torch.save(made["lm"], path)
    code, err = run_cli(["export", "--ckpt_path", str(path), "--out", "exp"], capsys)
    assert code == 0, err
    _module_that_writes(home, monkeypatch)
    rec = json.loads((home / "exp" / "kslm.json").read_text(encoding="utf-8"))
    for edit, names in ((lambda r: r["settings"].update(pretrained={"class_path": "evil_mod.Thing"}), "class_path"),
                        (lambda r: r["backbone"].update(d_model=60000), "do not fit"),
                        (lambda r: r["data"].update(cache_dir="elsewhere"), "data.cache_dir")):
        bad = copy.deepcopy(rec)
        edit(bad)
        (home / "exp" / "kslm.json").write_text(json.dumps(bad), encoding="utf-8")
        from kslm.errors import CheckpointError
        from kslm.hf.reader import read_export

        with pytest.raises(CheckpointError) as info:
            read_export(home / "exp")
        assert names in str(info.value) and "\n" not in str(info.value)
    (home / "exp" / "kslm.json").write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    with pytest.raises(CheckpointError, match="nested deeper"):
        read_export(home / "exp")
    _untouched(home)


# ------------------------------------------------------------------------------------------ --overwrite
def test_overwrite_replaces_only_a_kslm_export(made, home, capsys):
    path = home / "lm.ckpt"
    torch.save(made["lm"], path)
    (home / "mine" / "sub").mkdir()
    export = ["export", "--ckpt_path", str(path), "--overwrite", "--out"]
    line = one_error_line(*run_cli([*export, "mine"], capsys), "mine", "notes.txt", "sub/")
    assert "nothing was touched" in line and (home / "mine" / "sub").is_dir()
    (home / "mine" / "kslm.json").write_text("{}")  # a kslm.json does not make the user's files kslm's
    one_error_line(*run_cli([*export, "mine"], capsys), "notes.txt")
    (home / "mine" / "kslm.json").unlink()
    os.symlink(home / "mine", home / "link")
    one_error_line(*run_cli([*export, "link"], capsys), "symbolic link")
    for here in (".", str(home), ".."):
        one_error_line(*run_cli([*export, here], capsys), "working directory")
    _untouched(home)
    assert sorted(p.name for p in home.iterdir() if p.name.startswith(".")) == []


# ------------------------------------------------------------------------------------------ data files
@pytest.mark.parametrize("where", ["predict", "train"])
def test_deep_json_is_one_line(made, home, capsys, where):
    path = home / "ner.ckpt"
    torch.save(made["ner"], path)
    (home / "deep.jsonl").write_text('{"text": "张三"}\n{"text": "李四", "x": ' + "[" * 100_000 + "]" * 100_000 + "}\n",
                                     encoding="utf-8")
    if where == "predict":
        args = ["predict", "--ckpt_path", str(path), "--data.predict_file", "deep.jsonl"]
    else:
        args = ["fit", "--config", str(REPO / "configs/ner/cluener-egp.yaml"), "--data.train_file", "deep.jsonl",
                "--data.val_file", "in.jsonl", "--data.dev_split", "null"]
    one_error_line(*run_cli(args, capsys), "deep.jsonl:2", "nested deeper than 100")
    _untouched(home)


def test_a_line_over_the_record_limit_is_read_no_further(home, monkeypatch):
    """The limit (64 MiB) here lowered to 512 bytes: the same code path, a small file."""
    from kslm.data.formats import jsonl
    from kslm.errors import DataError

    monkeypatch.setattr(jsonl, "MAX_LINE_BYTES", 512)
    (home / "big.jsonl").write_text('{"text": "a"}\n{"text": "' + "x" * 1000 + '"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"big.jsonl:2: a line longer than 512 bytes"):
        list(jsonl.iter_jsonl(home / "big.jsonl"))


def test_a_missing_relative_path_is_not_a_hub_id(home):
    """`checkpoints/export` that is not there (its first folder is) is a local path to say is missing, never a name
    to fetch from the hub; `bert-base-chinese` or `hfl/rbt3` (no such folder here) still read as hub ids."""
    from kslm.hf.encoder import is_hub_name

    (home / "checkpoints").mkdir()
    assert not is_hub_name("checkpoints/export") and not is_hub_name("./export") and not is_hub_name("../x/y")
    assert is_hub_name("bert-base-chinese") and is_hub_name("hfl/rbt3")


def test_a_model_directory_with_remote_code_is_refused_without_running_it(home, capsys):
    """A Hugging Face directory whose config maps to its own Python files: kslm passes trust_remote_code=False, so
    transformers refuses it — one line, and the files never ran (they would create the sentinel)."""
    folder = home / "hfdir"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evilbert", "hidden_size": 8, "max_position_embeddings": 64,
        "auto_map": {"AutoConfig": "configuration_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel",
                     "AutoModelForCausalLM": "modeling_evil.EvilModel"}}))
    for name in ("configuration_evil.py", "modeling_evil.py"):
        (folder / name).write_text(f"open({str(home / 'SENTINEL')!r}, 'w').close()\n")
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n张\n三\n", encoding="utf-8")
    (home / "q.jsonl").write_text('{"context": "张三", "question": "张"}\n', encoding="utf-8")
    (home / "lab.jsonl").write_text(json.dumps({"text": "张三", "entities": [{"start": 0, "end": 2, "type": "PER"}]},
                                               ensure_ascii=False) + "\n", encoding="utf-8")
    for args in (["fit", "--config", str(REPO / "configs/ner/cluener-egp.yaml"), "--model.hf_path", str(folder),
                  "--data.train_file", "lab.jsonl", "--data.val_file", "lab.jsonl", "--data.dev_split", "null"],
                 ["predict", "--config", str(REPO / "configs/nbce/hf-llama.yaml"), "--model.hf_path", str(folder),
                  "--data.predict_file", "q.jsonl"]):
        one_error_line(*run_cli(args, capsys), str(folder))
    _untouched(home)
