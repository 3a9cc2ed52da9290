"""Bad inputs, issue 13 class 1 (checkpoints) and the command-line ends of classes 2-3: every unreadable --ckpt_path
is one line naming the file and the option; model options given with --ckpt_path apply, or — if they shape the
weights (or, resuming, the optimiser state) and differ from the checkpoint's — are refused in one line listing each;
a config file that is not UTF-8 is one line naming file, line and column; a predict file of {"text"} records works
whatever data.format the config gives. Checkpoints are crafted (a built, untrained model saved with its payload), so
no case trains."""

import gzip
import json
import pickle
import random

import lightning
import pytest
import torch
import yaml
from helpers import REPO, read_jsonl, run_cli

from kslm.checkpoint import Payload, check_restorable, read_checkpoint, read_payload, store
from kslm.cli.argv import checkpoint_model_config, given_model_options
from kslm.cli.trainer import KslmCLI
from kslm.data.tokenizer import train_tokenizer
from kslm.errors import CheckpointError
from kslm.nn import BackboneConfig
from kslm.tasks.lm import LanguageModel
from kslm.tasks.ner import EntityExtraction
from kslm.tasks.re import RelationExtraction

BB = dict(d_model=16, n_layers=1, n_heads=2, qk_dim=8, mask="bidirectional")


def craft(path, cls, labels, resumable=False):
    """A checkpoint of `cls` as `kslm fit` writes it, without training: weights, payload, Lightning's keys (and, to
    get past the resume check of `fit`, empty training state: those runs stop before Lightning restores it)."""
    tok = train_tokenizer(["张三在北京李四王五甲乙丙丁", "Alan Bean is a pilot C D"], "char", 200, 1)
    model = cls(backbone=BackboneConfig(**BB), head_size=8, **{cls.label_key: labels})
    model.connect(tok, labels, None, {"max_length": 32, "stride": None, "batch_size": 4})
    model.build(tok)
    ckpt = {"state_dict": model.state_dict(), "pytorch-lightning_version": lightning.__version__, "epoch": 0,
            "global_step": 0}
    if resumable:
        ckpt.update(optimizer_states=[], lr_schedulers=[], loops={})
    model.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpts")
    return {"ner": craft(tmp / "ner.ckpt", EntityExtraction, ["LOC", "PER"]),
            "ner-fit": craft(tmp / "ner-fit.ckpt", EntityExtraction, ["LOC", "PER"], resumable=True),
            "re": craft(tmp / "re.ckpt", RelationExtraction, ["is", "job"])}


@pytest.fixture
def workdir(tmp_path, monkeypatch):  # noqa: F811  (no capsys: these tests read the CLI line, not Lightning logs)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def cli_line(code, err):
    lines = [line for line in err.splitlines() if line.startswith("kslm: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


class _Exploit:  # unpickling it would create a file: weights_only loading must refuse it
    def __reduce__(self):
        return (open, ("/tmp/kslm-exploit-ran", "w"))


def _payload(**kw):
    base = {"task": "EntityExtraction", "tokenizer": "{}", "backbone": {"d_model": 8}, "version": 1}
    return {"kslm": {**base, **kw}, "state_dict": {}}


BAD_CKPT = {  # name → bytes, or an object torch.save writes, or a callable(real checkpoint bytes) → bytes
    "empty": b"", "one-byte": b"\x00", "zeros": bytes(4096), "random": random.Random(0).randbytes(1024),
    "text": b"not a checkpoint\n", "json": json.dumps({"state_dict": {}}).encode(),
    "yaml-config": (REPO / "configs/ner/cluener-egp.yaml").read_bytes(), "zip-header-junk": b"PK\x03\x04" + bytes(60),
    "truncated-half": lambda real: real[: len(real) // 2], "last-byte-cut": lambda real: real[:-1],
    "gzip": gzip.compress(b"payload"), "raw-pickle": pickle.dumps({"state_dict": {}}, protocol=2),
    "code-exec-pickle": pickle.dumps(_Exploit()), "torch-list": [1, 2], "torch-tensor": torch.zeros(2),
    "no-kslm-key": {"state_dict": {}, "epoch": 0}, "payload-a-string": {"kslm": "x"},
    "payload-no-tokenizer": {"kslm": {"task": "EntityExtraction", "backbone": {}}},
    "payload-unknown-task": _payload(task="Summarizer"), "payload-newer-format": _payload(version=99),
    "payload-no-backbone": _payload(backbone=None), "custom-object": {"kslm": _Exploit()},
}


@pytest.mark.parametrize("case", [*BAD_CKPT, "directory", "missing"])
def test_unreadable_checkpoint_is_one_line(ckpts, tmp_path, case):
    path = tmp_path / "bad.ckpt"
    content = BAD_CKPT.get(case)
    if case == "directory":
        path.mkdir()
    elif callable(content):
        path.write_bytes(content(ckpts["ner"].read_bytes()))
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif case != "missing":
        torch.save(content, path)
    with pytest.raises(CheckpointError) as exc:
        read_payload(path, "ckpt_path")
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg, msg
    assert "ckpt_path" in msg or case.startswith("payload") or case == "no-kslm-key", msg
    assert not (tmp_path.parent / "kslm-exploit-ran").exists()


NOT_RESTORABLE = {  # name → (edit of a crafted checkpoint dict, resume, words)
    "empty-state_dict": (lambda c: c.update(state_dict={}), False, "holds no weights"),
    "no-state_dict": (lambda c: c.pop("state_dict"), False, "holds no weights"),
    "state_dict-not-tensors": (lambda c: c.update(state_dict={"w": [1.0]}), False, "holds no weights"),
    "no-lightning-version": (lambda c: c.pop("pytorch-lightning_version"), False, "not a Lightning checkpoint"),
    "resume-weights-only": (lambda c: None, True, "cannot resume training"),
    "resume-without-loops": (lambda c: c.update(optimizer_states=[], lr_schedulers=[]), True, "holds no loops"),
    "unreadable-tokenizer": (lambda c: c["kslm"].update(tokenizer="{not json"), False, "tokenizer is unreadable"),
    "extraction-without-labels": (lambda c: c["kslm"].update(labels=[]), False, "without its labels"),
}


@pytest.mark.parametrize("case", NOT_RESTORABLE)
def test_checkpoint_lightning_cannot_restore_is_one_line(ckpts, tmp_path, case):
    edit, resume, words = NOT_RESTORABLE[case]
    ckpt = torch.load(ckpts["ner"], weights_only=True)
    edit(ckpt)
    path = tmp_path / "x.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError) as exc:
        check_restorable(read_checkpoint(path, "ckpt_path"), path, resume=resume)
        read_payload(path, "ckpt_path")
    assert "\n" not in str(exc.value) and str(exc.value).startswith(f"{path}: ") and words in str(exc.value)


@pytest.mark.parametrize("edit", ["wider", "extra-weight"])
def test_cli_weights_that_do_not_fit_the_payload(ckpts, workdir, capsys, edit):
    ckpt = torch.load(ckpts["ner"], weights_only=True)
    if edit == "wider":
        ckpt["kslm"]["backbone"]["d_model"] = ckpt["kslm"]["settings"]["backbone"]["d_model"] = 32
    else:
        ckpt["state_dict"]["backbone.extra"] = torch.zeros(1)
    path = workdir / "x.ckpt"
    torch.save(ckpt, path)
    (workdir / "in.jsonl").write_text('{"text": "张三"}\n', encoding="utf-8")
    line = cli_line(*run_cli(["predict", "--ckpt_path", str(path), "--data.predict_file", str(workdir / "in.jsonl"),
                              "--trainer.enable_progress_bar", "false"], capsys))
    assert f"{path}: the checkpoint's weights do not fit" in line and ("shapes ['backbone" in line or "extra" in line)


# ------------------------------------------------------------------- command-line model options with --ckpt_path


def _settings(cls, **kw):
    return cls(backbone=BackboneConfig(**BB), **kw).settings()


PAYLOADS = {"ner": Payload(task="EntityExtraction", tokenizer="{}", backbone=BB,
                           settings=_settings(EntityExtraction, head_size=8, types=["LOC", "PER"]), labels=["LOC", "PER"]),
            "lm": Payload(task="LanguageModel", tokenizer="{}", backbone=BB, settings=_settings(LanguageModel))}


def _parsed(settings, argv):
    """The model's init_args as the parser gives them: the checkpoint's settings under the command line's values."""
    out = json.loads(json.dumps(settings))
    for i, a in enumerate(argv):
        if a.startswith("--model."):
            name, value = a.split("=", 1) if "=" in a else (a, argv[i + 1])
            _merge(out, name[len("--model."):].removeprefix("init_args.").split("."), yaml.safe_load(value))
    return out


def _merge(tree, path, value):
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    if isinstance(value, dict) and isinstance(tree.get(path[-1]), dict):
        for k, v in value.items():
            _merge(tree[path[-1]], [k], v)
    else:
        tree[path[-1]] = value


def _get(tree, key):
    for part in key.split("."):
        tree = tree[part]
    return tree


OPTIONS = {  # name → (payload, argv, refused on fit, refused on predict); the others apply
    "backbone.d_model": ("ner", ["--model.backbone.d_model", "64"], ["backbone.d_model"], ["backbone.d_model"]),
    "backbone.n_layers": ("ner", ["--model.backbone.n_layers", "3"], ["backbone.n_layers"], ["backbone.n_layers"]),
    "backbone.dropout": ("ner", ["--model.backbone.dropout", "0.3"], ["backbone.dropout"], ["backbone.dropout"]),
    "backbone.position": ("ner", ["--model.backbone.position", "alibi"], ["backbone.position"], ["backbone.position"]),
    "backbone-json": ("ner", ["--model.backbone", '{"d_model": 64, "n_heads": 4}'], ["backbone.d_model", "backbone.n_heads"],
                      ["backbone.d_model", "backbone.n_heads"]),
    "head": ("ner", ["--model.head", "gp"], ["head "], ["head "]),
    "head_size-init_args": ("ner", ["--model.init_args.head_size=32"], ["head_size"], ["head_size"]),
    "types": ("ner", ["--model.types", "[A, B]"], ["types"], ["types"]),
    "hf_path": ("ner", ["--model.hf_path", "/models/bert"], ["hf_path"], ["hf_path"]),
    "pretrained": ("ner", ["--model.pretrained", "lm.ckpt"], ["pretrained"], ["pretrained"]),
    "several": ("ner", ["--model.backbone.d_model", "64", "--model.head", "gp", "--model.optim.lr", "0.5"],
                ["backbone.d_model", "head ", "optim.lr"], ["backbone.d_model", "head "]),
    "optim.lr": ("ner", ["--model.optim.lr", "0.5"], ["optim.lr"], []),
    "optim.warmup_steps": ("ner", ["--model.optim.warmup_steps=7"], ["optim.warmup_steps"], []),
    "optim.name": ("ner", ["--model.optim.name", "amos"], ["optim.name"], []),
    "optim.betas": ("ner", ["--model.optim.betas", "[0.8, 0.9]"], ["optim.betas"], []),
    "optim-json": ("ner", ["--model.optim", '{"schedule": "constant"}'], ["optim.schedule"], []),
    "token_dropout": ("ner", ["--model.token_dropout", "0.2"], [], []),
    "penalty.kind": ("ner", ["--model.penalty.kind", "input"], [], []),
    "penalty.weight": ("ner", ["--model.penalty.weight", "0.1"], [], []),
    "loss": ("ner", ["--model.loss", "bce"], [], []),
    "same-d_model": ("ner", ["--model.backbone.d_model", "16"], [], []),
    "same-head": ("ner", ["--model.head", "egp", "--model.types", "[LOC, PER]"], [], []),
    "lm-aux_objective": ("lm", ["--model.aux_objective", "heat"], ["aux_objective"], ["aux_objective"]),
    "lm-heat_mode": ("lm", ["--model.heat_mode", "extrapolate"], ["heat_mode"], ["heat_mode"]),
    "lm-mlm_probability": ("lm", ["--model.mlm_probability", "0.3"], [], []),
    "lm-temperature": ("lm", ["--model.temperature", "0.7", "--model.top_p", "0.5"], [], []),
}


@pytest.mark.parametrize("sub", ["fit", "predict"])
@pytest.mark.parametrize("case", OPTIONS)
def test_model_options_with_ckpt_path_apply_or_are_refused_in_one_line(case, sub):
    name, argv, refused_fit, refused_predict = OPTIONS[case]
    payload, refused = PAYLOADS[name], refused_fit if sub == "fit" else refused_predict
    configured = _parsed(payload.settings, argv)
    if refused:
        with pytest.raises(CheckpointError) as exc:
            checkpoint_model_config(payload, given_model_options(argv), configured, sub, "x.ckpt")
        msg = str(exc.value)
        assert "\n" not in msg and msg.startswith("x.ckpt: ") and "(field 'ckpt_path')" in msg, msg
        assert all(f"model.{key}" in msg for key in refused) and msg.count("(checkpoint ") == len(refused), msg
        return
    model = checkpoint_model_config(payload, given_model_options(argv), configured, sub, "x.ckpt")
    for key in given_model_options(argv):  # what the command line says is what the run gets
        if key.split(".")[0] in payload.settings:  # (run-time options are not recorded: the command line stands)
            assert json.dumps(_get(model["init_args"], key)) == json.dumps(_get(configured, key)), key
    assert payload.settings == PAYLOADS[name].settings and payload.settings["optim"]["lr"] == 0.001  # not edited


@pytest.mark.parametrize("argv,keys", [
    (["--model.optim.lr=0.5"], ["optim.lr"]), (["--model.init_args.head", "gp"], ["head"]),
    (["--model.backbone", '{"d_model": 8, "norm": "post"}'], ["backbone.d_model", "backbone.norm"]),
    (["--model.optim", "{options: {xi: 0.1}}"], ["optim.options.xi"]),
    (["--model.class_path", "kslm.tasks.ner.EntityExtraction", "--data.batch_size", "2"], []),
    (["--model.head", "gp", "--model.head", "egp", "--trainer.max_steps", "3"], ["head"]),
], ids=["equals", "init_args", "json-dict", "nested-yaml", "class_path-and-data", "repeated"])
def test_given_model_options_are_read_from_the_command_line(argv, keys):
    assert given_model_options(argv) == keys


# -------------------------------------------------------------------------------------------- through the CLI


@pytest.fixture
def captured(monkeypatch):
    """Stop the CLI after parsing (before any class is built) and keep the subcommand's config."""
    seen = {}

    def stop(self):
        seen["cfg"] = self.config[self.subcommand]
        raise SystemExit(0)

    monkeypatch.setattr(KslmCLI, "before_instantiate_classes", stop)
    return seen


NER_CONFIG = str(REPO / "configs/ner/cluener-egp.yaml")


def test_cli_unreadable_checkpoint_without_config(workdir, capsys):
    bad = workdir / "bad.ckpt"
    bad.write_bytes(random.Random(1).randbytes(300))
    line = cli_line(*run_cli(["predict", "--ckpt_path", str(bad), "--data.predict_file", str(bad)], capsys))
    assert str(bad) in line and "ckpt_path" in line


@pytest.mark.parametrize("sub,extra,words", [
    ("fit", ["--config", NER_CONFIG, "--model.backbone.d_model", "64"], ["model.backbone.d_model (checkpoint 16, given 64)"]),
    ("predict", ["--model.head", "gp", "--model.backbone.n_layers", "2"], ["model.head (checkpoint 'egp', given 'gp')",
                                                                          "model.backbone.n_layers (checkpoint 1"]),
    ("fit", ["--config", NER_CONFIG, "--model.optim.lr", "0.5"], ["model.optim.lr (checkpoint 0.001, given 0.5)"]),
], ids=["fit-d_model", "predict-without-config-head-layers", "fit-optim"])
def test_cli_refuses_options_the_checkpoint_fixes(ckpts, workdir, capsys, sub, extra, words):
    ckpt = ckpts["ner-fit" if sub == "fit" else "ner"]
    line = cli_line(*run_cli([sub, "--ckpt_path", str(ckpt), *extra], capsys))
    assert str(ckpt) in line and all(w in line for w in words), line


@pytest.mark.parametrize("sub,extra,key,value", [
    ("predict", ["--model.optim.lr", "0.5"], "optim.lr", 0.5), ("fit", ["--model.token_dropout", "0.3"], "token_dropout", 0.3),
], ids=["predict-optim", "fit-token_dropout"])
def test_cli_applies_options_that_can_apply(ckpts, workdir, capsys, captured, sub, extra, key, value):
    ckpt = ckpts["ner-fit" if sub == "fit" else "ner"]
    code, err = run_cli([sub, "--config", NER_CONFIG, "--ckpt_path", str(ckpt), *extra], capsys)
    assert code == 0, err
    args = captured["cfg"].model.init_args
    assert args[key] == value and args.backbone.d_model == 16  # the checkpoint's architecture, not the config's 256


@pytest.mark.parametrize("sub,name", [("validate", "last"), ("predict", "best"), ("predict", "hpc"), ("fit", "registry"),
                                      ("test", "")])
def test_cli_ckpt_path_names_that_resolve_to_nothing(workdir, capsys, sub, name):
    line = cli_line(*run_cli([sub, "--config", NER_CONFIG, "--ckpt_path", name], capsys))
    assert "ckpt_path" in line and (name != "last" or "last.ckpt" in line)


@pytest.mark.parametrize("case", ["latin1", "gbk-equals", "cp1252-data-section", "bom"])
def test_cli_config_file_encodings(workdir, capsys, captured, case):
    text = (REPO / "configs/ner/cluener-egp.yaml").read_text(encoding="utf-8")
    path = workdir / "cfg.yaml"
    if case == "bom":
        path.write_bytes(b"\xef\xbb\xbf" + text.encode())
        code, err = run_cli(["fit", "--config", str(path)], capsys)
        assert code == 0 and captured["cfg"].model.class_path.endswith("EntityExtraction"), err
        return
    bad = {"latin1": "é".encode("latin-1"), "gbk-equals": "张".encode("gbk"), "cp1252-data-section": b"\x93"}[case]
    lines = text.splitlines(keepends=True)
    lines[2] = lines[2][:5] + "\x00" + lines[2][5:]  # the bad byte at line 3, column 6
    path.write_bytes("".join(lines).encode().replace(b"\x00", bad))
    if case == "latin1":
        args = ["fit", "--config", str(path)]
    elif case == "gbk-equals":
        args = ["fit", f"--config={path}"]
    else:
        args = ["fit", "--config", NER_CONFIG, "--data", str(path)]
    line = cli_line(*run_cli(args, capsys))
    assert line == f"kslm: error: {path}:3: not UTF-8 (byte 0x{bad[0]:02x} at column 6)"


@pytest.mark.parametrize("task,config,content,texts", [
    ("re", "configs/re/webnlg-gplinker.yaml", '{"text": "Alan Bean is a pilot"}\n\n{"text": "C D"}\n',
     ["Alan Bean is a pilot", "C D"]),
    ("ner", "configs/ner/cmeee-egp.yaml", '\ufeff{"id": 0, "text": "张三在北京"}\n{"id": 1, "text": "李四"}\n', ["张三在北京", "李四"]),
], ids=["webnlg-config-text-jsonl", "cmeee-config-cluener-test-bom"])
def test_cli_predict_reads_text_records_whatever_the_config_format(ckpts, workdir, capsys, task, config, content, texts):
    inp, out = workdir / "in.jsonl", workdir / "out.jsonl"
    inp.write_text(content, encoding="utf-8")
    args = ["predict", "--config", str(REPO / config), "--ckpt_path", str(ckpts[task]), "--data.train_file", "null",
            "--data.val_file", "null", "--data.max_length", "32", "--data.predict_file", str(inp),
            "--predictions.path", str(out), "--trainer.enable_progress_bar", "false", "--model.max_entities", "2"]
    if task == "ner":
        args = [a for a in args if a not in ("--model.max_entities", "2")] + ["--data.dev_split", "null"]
    code, err = run_cli(args, capsys)
    assert code == 0, err
    recs = read_jsonl(out)
    assert [r["text"] for r in recs] == texts
    assert [r["line"] for r in recs] == [n for n, x in enumerate(content.splitlines(), 1) if x.strip()]


def test_cli_another_tasks_checkpoint(ckpts, workdir, capsys):
    line = cli_line(*run_cli(["predict", "--config", NER_CONFIG, "--ckpt_path", str(ckpts["re"])], capsys))
    assert "RelationExtraction" in line and "EntityExtraction" in line and str(ckpts["re"]) in line


def test_payload_store_round_trip_of_a_crafted_checkpoint(ckpts):
    p = read_payload(ckpts["ner"], "ckpt_path")
    assert p.task == "EntityExtraction" and p.labels == ["LOC", "PER"] and p.backbone["d_model"] == 16
    ckpt = {}
    store(ckpt, p)
    assert ckpt["kslm"]["labels"] == ["LOC", "PER"]


def test_every_tasks_weight_options_are_its_own_settings():
    """Which options --ckpt_path fixes is the task's own declaration (weight_options), not a list kept in the CLI:
    each one names an init argument of the task (so a renamed option cannot silently stop being fixed)."""
    import inspect

    from kslm.tasks.lm import LanguageModel
    from kslm.tasks.ner import EntityExtraction
    from kslm.tasks.re import RelationExtraction

    for cls in (LanguageModel, EntityExtraction, RelationExtraction):
        params = set().union(*(inspect.signature(k.__init__).parameters for k in cls.__mro__ if "__init__" in vars(k)
                               and k.__module__.startswith("kslm.")))
        assert set(cls.weight_options) <= params, (cls.__name__, set(cls.weight_options) - params)
        assert not set(cls.weight_options) & set(cls.runtime_options), cls.__name__
    assert "ARCHITECTURE" not in (REPO / "kslm" / "cli" / "argv.py").read_text(encoding="utf-8")
