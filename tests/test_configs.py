"""Every shipped YAML parses (classes resolve, options type-check) without running anything."""

from pathlib import Path

import pytest
from helpers import REPO

CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def test_configs_exist():
    names = {p.relative_to(REPO / "configs").as_posix() for p in CONFIGS}
    assert {"lm/transformer.yaml", "lm/gau.yaml", "lm/deepnet.yaml", "lm/tinyshakespeare.yaml",
            "lm/chinese_poetry.yaml", "lm/rnn.yaml"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.relative_to(REPO / "configs").as_posix())
def test_config_parses(config: Path, capsys):
    from kslm.cli import main

    predict_only = config.parent.name == "nbce"  # NBCE reads a trained LM: no backbone of its own, no fit
    with pytest.raises(SystemExit) as exc:
        main(["predict" if predict_only else "fit", "--config", str(config), "--print_config"])
    out = capsys.readouterr()
    assert exc.value.code == 0, out.err
    assert "class_path: kslm.tasks." in out.out and ("predict_file:" if predict_only else "backbone:") in out.out


def test_help_explains_backbone_options(capsys):
    from kslm.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["fit", "--model.help", "kslm.tasks.lm.LanguageModel"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--model.backbone.norm" in out and "deepnorm" in out
    assert "entropy-invariant" in out  # the docstring text reaches --help
