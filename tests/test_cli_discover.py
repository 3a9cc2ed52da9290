"""Discoverable options (issue 14, item 6): short class names (`--model LanguageModel`, `--data.help NERDataModule`),
`kslm fit --help` naming kslm's tasks and data modules, and one "did you mean" line for a misspelt option, choice or
class — on the command line or in a config file (named, with its line). All but one test stop at parsing."""

import pytest
import yaml
from bad_inputs import cli, one_error_line
from helpers import REPO

GAU = str(REPO / "configs" / "lm" / "gau.yaml")
NER = str(REPO / "configs" / "ner" / "cluener-egp.yaml")


@pytest.mark.parametrize("args, line", [
    (["--model.backbone.nrom", "post"], "unknown option --model.backbone.nrom (did you mean --model.backbone.norm?)"),
    (["--trainer.max_step", "5"], "unknown option --trainer.max_step (did you mean --trainer.max_steps?)"),
    (["--trainer.max_step=5"], "unknown option --trainer.max_step (did you mean --trainer.max_steps?)"),
    (["--traner.max_steps", "5"], "unknown option --traner.max_steps (did you mean --trainer.max_steps?)"),
    (["--data.batch_sise", "4"], "unknown option --data.batch_sise (did you mean --data.batch_size?)"),
    (["--model.optim.lrr", "0.1"], "unknown option --model.optim.lrr (did you mean --model.optim.lr?)"),
    (["--model.penalty.kindd", "input"], "unknown option --model.penalty.kindd (did you mean --model.penalty.kind?)"),
    (["--model.bakbone.norm", "post"], "unknown option --model.bakbone.norm (did you mean --model.backbone.norm?)"),
    (["--model.nrom", "post"], "unknown option --model.nrom (did you mean --model.backbone.norm?)"),
    (["--checkpoint.monitr", "val/loss"], "unknown option --checkpoint.monitr (did you mean --checkpoint.monitor?)"),
    (["--predictions.pth", "p.jsonl"], "unknown option --predictions.pth (did you mean --predictions.path?)"),
    (["--model.backbone.xyzzy", "1"], "unknown option --model.backbone.xyzzy (see kslm fit --model.help LanguageModel)"),
    (["--model.backbone.norm", "psot"], "--model.backbone.norm psot: not one of pre, post, deepnorm (did you mean post?)"),
    (["--model.optim.schedule", "cosin"], "--model.optim.schedule cosin: not one of cosine, linear, constant "
                                          "(did you mean cosine?)"),
    (["--model.backbone.block", "transformr"], "--model.backbone.block transformr: not one of transformer, gau, rnn "
                                               "(did you mean transformer?)"),
], ids=lambda v: v[0] if isinstance(v, list) else None)
def test_a_typo_on_the_command_line_is_one_line_with_the_closest_spelling(args, line, workdir, capsys):
    code, err = cli(["fit", "--config", GAU, *args], capsys)
    assert one_error_line(code, err) == f"kslm: error: {line}"


def test_choices_of_a_union_of_literals_and_of_another_task(workdir, capsys):
    code, err = cli(["fit", "--config", GAU, "--trainer.precision", "bf16-mixd"], capsys)
    line = one_error_line(code, err, "--trainer.precision bf16-mixd: not one of", "bf16-true, bf16-mixed")
    assert line.endswith("(did you mean bf16-mixed?)")
    code, err = cli(["fit", "--config", NER, "--model.head", "egpp"], capsys)
    assert one_error_line(code, err) == "kslm: error: --model.head egpp: not one of gp, egp (did you mean egp?)"
    code, err = cli(["fit", "--config", NER, "--model.head_sise", "8"], capsys)
    assert one_error_line(code, err).endswith("(did you mean --model.head_size?)")


def test_a_typo_in_a_config_file_names_the_file_and_line(workdir, capsys):
    cfg = yaml.safe_load(open(GAU, encoding="utf-8"))
    cases = {  # what to misspell → (the key as reported, its correction)
        "trainer": ("trainer.max_step", "trainer.max_steps"),
        "backbone": ("model.backbone.nrom", "model.backbone.norm"),
        "group": ("model.bakbone", "model.backbone"),
        "data": ("data.batch_sise", "data.batch_size"),
        "section": ("traner", "trainer"),
    }
    for case, (key, fix) in cases.items():
        bad = yaml.safe_load(yaml.safe_dump(cfg))
        init = bad["model"]["init_args"]
        if case == "trainer":
            bad["trainer"]["max_step"] = 5
        elif case == "backbone":
            init["backbone"]["nrom"] = "post"
        elif case == "group":
            init["bakbone"] = init.pop("backbone")
        elif case == "data":
            bad["data"]["init_args"]["batch_sise"] = 3
        else:
            bad["traner"] = bad.pop("trainer")
        path = workdir / f"{case}.yaml"
        text = yaml.safe_dump(bad, sort_keys=False)
        path.write_text(text, encoding="utf-8")
        leaf = key.rsplit(".", 1)[-1]
        lineno = [i for i, t in enumerate(text.splitlines(), 1) if t.strip().startswith(f"{leaf}:")]
        assert len(lineno) == 1, text
        code, err = cli(["fit", "--config", str(path)], capsys)
        assert one_error_line(code, err) == \
            f"kslm: error: {path} line {lineno[0]}: unknown option {key} (did you mean {fix}?)", case

    bad = yaml.safe_load(yaml.safe_dump(cfg))
    bad["model"]["init_args"]["backbone"]["norm"] = "psot"
    path = workdir / "choice.yaml"
    text = yaml.safe_dump(bad, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    lineno = [i for i, t in enumerate(text.splitlines(), 1) if t.strip() == "norm: psot"][0]
    code, err = cli(["fit", "--config", str(path)], capsys)
    assert one_error_line(code, err) == (f"kslm: error: {path} line {lineno}: model.backbone.norm psot: not one of "
                                         "pre, post, deepnorm (did you mean post?)")


def test_a_misspelt_class_or_command(workdir, capsys):
    kslm_models = "kslm's are LanguageModel, EntityExtraction, RelationExtraction, NBCE"
    code, err = cli(["fit", "--model", "LanguagModel"], capsys)
    assert one_error_line(code, err) == \
        f"kslm: error: --model LanguagModel: no such model class (did you mean LanguageModel? {kslm_models})"
    code, err = cli(["fit", "--model.help", "EntityExtractoin"], capsys)
    assert one_error_line(code, err, "--model.help EntityExtractoin", "did you mean EntityExtraction?")
    code, err = cli(["fit", "--config", GAU, "--data", "kslm.data.lm.LMDataModul"], capsys)
    assert one_error_line(code, err, "--data kslm.data.lm.LMDataModul: no such data class", "did you mean LMDataModule?",
                          "NERDataModule")
    code, err = cli(["fitt"], capsys)
    assert one_error_line(code, err) == \
        "kslm: error: kslm fitt: no such command (one of fit, validate, test, predict, score, export, consolidate, serve; " \
        "did you mean kslm fit?)"
    code, err = cli(["fit", "--model.backbone.norm", "post"], capsys)  # no class yet: nothing to check it against
    assert one_error_line(code, err, "--model.backbone.norm: no model class given", "--model CLASS")


def test_help_names_kslms_classes_and_short_names_work(workdir, capsys):
    code, out, _ = cli(["fit", "--help-all"], capsys, stdout=True)  # (--help: kslm's short list, tests/test_front_door.py)
    assert code == 0
    listed = " ".join(out.split())  # the help wraps lines
    for name in ("kslm.tasks.lm.LanguageModel", "kslm.tasks.ner.EntityExtraction", "kslm.tasks.re.RelationExtraction",
                 "kslm.tasks.nbce.NBCE", "kslm.data.lm.LMDataModule", "kslm.data.ner.NERDataModule",
                 "kslm.data.re.REDataModule", "kslm.data.nbce.NBCEDataModule"):
        assert name in listed, name
    code, out, _ = cli(["fit", "--model.help", "LanguageModel"], capsys, stdout=True)
    assert code == 0 and "--model.backbone.norm" in out and "--model.head" not in out
    code, out, _ = cli(["fit", "--data.help", "LMDataModule"], capsys, stdout=True)
    assert code == 0 and "--data.seq_len" in out
    code, out, _ = cli(["fit", "--data.help", "NERDataModule"], capsys, stdout=True)
    assert code == 0 and "--data.train_file" in out and "--data.seq_len" not in out


def test_fit_from_short_names_alone(small_corpus, workdir, capsys):
    """`kslm fit --model LanguageModel --data LMDataModule`: no config (the small corpus instead of the embedded
    default one, for time); the checkpoint records the task, so another task given by its short name is refused."""
    import torch

    tiny = ["--model.backbone.d_model", "32", "--model.backbone.n_layers", "1", "--model.backbone.n_heads", "2",
            "--data.data_files", str(small_corpus), "--data.vocab_size", "300", "--data.seq_len", "32", "--data.batch_size", "4",
            "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false"]
    code, err = cli(["fit", "--model", "LanguageModel", "--data", "LMDataModule", "--trainer.max_steps", "5", *tiny],
                    capsys)
    assert code == 0, err
    ckpt = workdir / "checkpoints" / "default" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert saved["global_step"] == 5 and saved["kslm"]["task"] == "LanguageModel"
    code, err = cli(["validate", "--model", "EntityExtraction", "--data", "NERDataModule", "--ckpt_path", str(ckpt)],
                    capsys)
    one_error_line(code, err, "a LanguageModel checkpoint cannot be used with a EntityExtraction config")
