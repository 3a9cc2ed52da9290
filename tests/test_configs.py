"""Every shipped YAML parses (classes resolve, options type-check) without running anything, and the full config
`--print_config` prints from it is one the CLI reads back to the same config."""

from pathlib import Path

import pytest
from helpers import REPO, run_cli, tiny_args

CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def test_configs_exist():
    names = {p.relative_to(REPO / "configs").as_posix() for p in CONFIGS}
    assert {"lm/transformer.yaml", "lm/gau.yaml", "lm/deepnet.yaml", "lm/tinyshakespeare.yaml",
            "lm/chinese_poetry.yaml", "lm/rnn.yaml", "lm/gau-alpha-base.yaml", "lm/transformer-base.yaml"} <= names


def print_config(subcommand, config: Path, capsys) -> str:
    """`kslm SUBCOMMAND --config CONFIG --print_config` in this process: the printed YAML."""
    from kslm.cli import main

    with pytest.raises(SystemExit) as exc:
        main([subcommand, "--config", str(config), "--print_config"])
    out = capsys.readouterr()
    assert exc.value.code == 0, out.err
    return out.out


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.relative_to(REPO / "configs").as_posix())
def test_config_parses_and_print_config_round_trips(config: Path, tmp_path, capsys):
    """The config parses; and what --print_config prints, saved and given back as --config, prints the same config
    again (every option it writes is one the parser reads back unchanged)."""
    predict_only = config.parent.name == "nbce"  # NBCE reads a trained LM: no backbone of its own, no fit
    subcommand = "predict" if predict_only else "fit"
    printed = print_config(subcommand, config, capsys)
    assert "class_path: kslm.tasks." in printed and ("predict_file:" if predict_only else "backbone:") in printed
    saved = tmp_path / config.name
    saved.write_text(printed, encoding="utf-8")
    assert print_config(subcommand, saved, capsys) == printed


def test_help_explains_backbone_options(capsys):
    from kslm.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["fit", "--model.help", "kslm.tasks.lm.LanguageModel"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--model.backbone.norm" in out and "deepnorm" in out
    assert "entropy-invariant" in out  # the docstring text reaches --help


BASE = ["lm/gau-alpha-base.yaml", "lm/transformer-base.yaml"]


def test_base_configs_have_equal_parameter_counts():
    """GAU-α-base and Transformer-base: the shapes their YAML gives, at the 6,000 characters of their corpus, built on
    the meta device: 91,933,440 and 91,921,920 parameters, as the files' comments say (0.013 % apart)."""
    import torch
    import yaml

    from kslm.nn import Backbone, BackboneConfig

    counts = []
    for name in BASE:
        backbone = yaml.safe_load((REPO / "configs" / name).read_text(encoding="utf-8"))["model"]["init_args"]["backbone"]
        with torch.device("meta"):
            counts.append(Backbone(BackboneConfig(**backbone, vocab_size=6000)).num_parameters())
    assert counts == [91_933_440, 91_921_920]


@pytest.mark.parametrize("config", BASE)
def test_base_config_trains_two_steps_at_reduced_size(config, small_corpus, workdir, capsys):
    """The GPU base configs, shrunk (tiny_args: d 32, 2 layers, T 32; FFN 64), on the CPU in fp32, uncompiled."""
    code, err = run_cli(["fit", *tiny_args(small_corpus, workdir, "--trainer.accelerator", "cpu", "--trainer.precision", "32",
                                           "--model.compile", "false", "--model.backbone.d_ff", "64",
                                           "--data.num_workers", "0", config=f"configs/{config}")], capsys)
    assert code == 0, err
    assert (workdir / "ckpt" / "last.ckpt").is_file()
