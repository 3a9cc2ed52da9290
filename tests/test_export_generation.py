"""Exports of the shipped LM configs and of generation: each config in configs/lm (shrunk) exports to the
architecture it should — native ArceeForCausalLM where kslm's backbone is exactly one, else remote code that says
so — with transformers' logits equal to kslm's; causal and prefix LMs carry generation_config.json; kslm's KV cache
counts the tokens it holds, and a generation continued from its cache equals one generation."""

import json

import pytest
import torch
import yaml

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from helpers import REPO, run_cli  # noqa: E402
from test_export import assert_same_logits, export, lm_checkpoint, load_hf, tokenizer  # noqa: E402, F401

from kslm.data.tokenizer import EOS_ID, PAD_ID  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

# Every shipped LM config → the architecture its export must have, and why (written out by hand: a change to a config
# or to the native mapping that moves one of them fails here until this table says so).
EXPECTED = {
    "chinese_poetry": ("KslmForCausalLM", "GAU block"),
    "deepnet": ("KslmForCausalLM", "DeepNorm"),
    "gau": ("KslmForCausalLM", "GAU block"),
    "gau-alpha-base": ("KslmForCausalLM", "GAU block"),
    "rnn": ("KslmForCausalLM", "RNN block, no RoPE"),
    "tinyshakespeare": ("KslmForCausalLM", "LayerNorm (Llama/Arcee normalise with RMSNorm)"),
    "transformer": ("KslmForCausalLM", "LayerNorm (Llama/Arcee normalise with RMSNorm)"),
    "transformer-base": ("ArceeForCausalLM", "Pre-Norm RMSNorm softmax RoPE, swap-tied head"),
}
SHRINK = {"d_model": 32, "n_layers": 2, "max_length": 64}


def shrunk_backbone(name: str) -> dict:
    """The config's backbone options with its sizes made tiny (every other option as shipped)."""
    cfg = yaml.safe_load((REPO / "configs" / "lm" / f"{name}.yaml").read_text(encoding="utf-8"))
    backbone = {k: v for k, v in cfg["model"]["init_args"]["backbone"].items() if v is not None}
    backbone.update(SHRINK)
    if backbone.get("block", "transformer") == "transformer":
        backbone["n_heads"] = 2
    if backbone.get("block") == "gau":
        backbone["qk_dim"] = 16
    if "d_ff" in backbone:
        backbone["d_ff"] = 48
    if "train_length" in backbone:
        backbone["train_length"] = 32
    return backbone


def test_every_shipped_lm_config_is_in_the_table():
    assert sorted(p.stem for p in (REPO / "configs" / "lm").glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_config_exports_as_its_architecture_with_kslm_logits(tokenizer, tmp_path, capsys, name):  # noqa: F811
    from transformers import AutoModelForCausalLM

    arch, why = EXPECTED[name]
    ckpt, model = lm_checkpoint(tmp_path / "m.ckpt", tokenizer, seed=1, **shrunk_backbone(name))
    code, err = run_cli(["export", "--ckpt_path", str(ckpt), "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    config = json.loads((tmp_path / "out" / "config.json").read_text(encoding="utf-8"))
    assert config["architectures"] == [arch], (name, why)
    native = arch != "KslmForCausalLM"
    assert (tmp_path / "out" / "modeling_kslm.py").is_file() != native, why
    if native:  # without trust_remote_code
        hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    else:  # the export's own copy of modeling_kslm.py
        hf = load_hf(tmp_path / "out", model.backbone_config.mask, remote=True)
    assert type(hf).__name__ == arch
    assert_same_logits(model, hf, model.backbone_config.mask)


@pytest.mark.parametrize("name", ["transformer-base", "gau"])
def test_export_says_native_or_remote(tokenizer, tmp_path, capsys, name):  # noqa: F811
    """The printed line names the architecture and says whether it is native (with the logit check) or remote code."""
    ckpt, _ = lm_checkpoint(tmp_path / "m.ckpt", tokenizer, seed=1, **shrunk_backbone(name))
    export(ckpt, tmp_path / "out")
    line = capsys.readouterr().out.splitlines()[0]
    if EXPECTED[name][0] == "ArceeForCausalLM":
        assert "as ArceeForCausalLM (native, no remote code; logits checked against kslm: max |Δ|" in line, line
    else:
        assert "as KslmForCausalLM (remote code: modeling_kslm.py, needs kslm installed)" in line, line


@pytest.mark.parametrize("options, generates", [
    (dict(norm="pre", norm_type="rmsnorm"), "ArceeForCausalLM"),
    (dict(block="gau"), "KslmForCausalLM"),
    (dict(block="gau", mask="prefix"), "KslmForCausalLM"),
    (dict(norm="pre", norm_type="rmsnorm", mask="prefix"), "KslmForCausalLM"),
    (dict(block="gau", mask="bidirectional"), None),
])
def test_generation_config_for_lms_that_generate(tokenizer, tmp_path, options, generates):  # noqa: F811
    """Causal and prefix LMs carry generation_config.json (greedy, the cache on, </s> ends a generation and starts
    a document, <pad> pads); a masked LM, which cannot generate, does not."""
    from transformers import GenerationConfig

    ckpt, _ = lm_checkpoint(tmp_path / "m.ckpt", tokenizer, **options)
    export(ckpt, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["architectures"] == [generates or "KslmForMaskedLM"]
    path = tmp_path / "out" / "generation_config.json"
    assert path.is_file() == (generates is not None)
    if generates:
        gen = GenerationConfig.from_pretrained(str(tmp_path / "out"))
        assert (gen.do_sample, gen.use_cache, gen.eos_token_id, gen.bos_token_id, gen.pad_token_id) == \
            (False, True, EOS_ID, EOS_ID, PAD_ID)


@pytest.mark.parametrize("options", [dict(block="transformer"), dict(block="gau", mask="prefix"), dict(block="rnn")])
def test_cache_counts_its_tokens_and_a_continued_generation_equals_one(tokenizer, tmp_path, options):  # noqa: F811
    """KslmCache.get_seq_length() is the number of tokens whose keys / states it holds (transformers slices a continued
    generation's input by it); generate(9 tokens) equals generate(4), then generate(5 more) from the returned cache —
    the tokens and every step's scores."""
    ckpt, model = lm_checkpoint(tmp_path / "m.ckpt", tokenizer, seed=2, **options)
    export(ckpt, tmp_path / "out")
    hf = load_hf(tmp_path / "out", model.backbone_config.mask, remote=False)
    ids = torch.tensor([[EOS_ID] + tokenizer.encode("the lazy fox").ids])
    with torch.no_grad():
        first = hf(ids, use_cache=True)
        assert first.cache.get_seq_length() == ids.shape[1]
        step = hf(torch.tensor([[7]]), cache=first.cache, use_cache=True)
        assert step.cache.get_seq_length() == ids.shape[1] + 1
    kw = dict(do_sample=False, return_dict_in_generate=True, output_scores=True)
    whole = hf.generate(ids, max_new_tokens=9, **kw)
    part = hf.generate(ids, max_new_tokens=4, **kw)
    assert part.cache.get_seq_length() == ids.shape[1] + 3  # the last token chosen is not yet fed
    rest = hf.generate(part.sequences, cache=part.cache, max_new_tokens=5, **kw)
    assert rest.sequences.tolist() == whole.sequences.tolist()
    scores = torch.stack([*part.scores, *rest.scores])
    assert (scores - torch.stack(whole.scores)).abs().max() <= 1e-5
    assert torch.stack(whole.scores).std() > 0.1  # scores that vary: the comparison can fail
