"""`kslm export` and back: exported models loaded with transformers give kslm's logits (every block × norm × norm
type × attention, every mask and tying option), greedy generate gives `kslm predict`'s tokens, AutoTokenizer gives
kslm's ids and offsets, `.ckpt → export → --model.pretrained DIR → export` gives the same safetensors, NBCE over the
exported directory answers as over the checkpoint, and bad exports are one line."""

import itertools
import os

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from helpers import run_cli  # noqa: E402

from kslm.data.tokenizer import EOS_ID, train_tokenizer  # noqa: E402
from kslm.nn import BackboneConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")
TEXT = "the quick brown fox jumps over the lazy dog. 敏捷的棕色狐狸跳过了懒狗！ Voilà, naïve café; 42 + 7 = 49?\n"
TOL = 1e-5


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([TEXT * 3], "char", 200, min_frequency=1)


def lm_checkpoint(path, tok, seed=0, **options):
    """A LanguageModel checkpoint of a tiny random backbone (no training), written as the task writes it."""
    from kslm.tasks.lm import LanguageModel

    cfg = BackboneConfig(**{"d_model": 16, "n_layers": 2, "n_heads": 2, "qk_dim": 8, "max_length": 64, **options})
    torch.manual_seed(seed)
    model = LanguageModel(backbone=cfg)
    model.connect(tok, data_settings={"seq_len": 32, "batch_size": 4})
    model.build(tok)
    with torch.no_grad():  # a random model whose logits vary: norm gains and GAU offsets away from 1 and 0
        for _name, p in model.backbone.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.3)
    ckpt = {"state_dict": model.state_dict(), "pytorch-lightning_version": "2.6.6", "global_step": 7, "epoch": 0}
    model.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path, model.eval()


def load_hf(folder, mask, remote=True):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    auto = AutoModelForMaskedLM if mask == "bidirectional" else AutoModelForCausalLM
    if not remote:  # kslm's own copy of modeling_kslm.py (byte-identical to the export's: test_model_card_and_files)
        from kslm.hf.modeling_kslm import register

        register()
    return auto.from_pretrained(str(folder), trust_remote_code=remote).eval()


def padded_batch(vocab, T=11):
    ids = torch.randint(5, vocab, (3, T), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, T - 4:] = 0  # right padding
    mask[2, :3] = 0  # left padding
    return ids, mask


def assert_same_logits(model, hf, mask_kind):
    ids, mask = padded_batch(model.backbone_config.vocab_size)
    prefix = torch.tensor([4, 5, 6]) if mask_kind == "prefix" else None
    with torch.no_grad():
        ours = model.backbone.logits(model.backbone(ids, attention_mask=mask, prefix_lengths=prefix))
        kwargs = {"prefix_lengths": prefix} if prefix is not None else {}
        if hf.config.model_type != "kslm":  # a native HF model numbers positions 0..T-1; kslm counts real tokens
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        theirs = hf(input_ids=ids, attention_mask=mask, **kwargs).logits
    keep = mask.bool()
    gap = (ours[keep] - theirs[keep]).abs().max().item()
    assert gap <= TOL, gap
    assert ours[keep].std() > 0.1  # logits that vary: the comparison can fail


def export(ckpt, out, *extra):
    from kslm.cli import main

    main(["export", "--ckpt_path", str(ckpt), "--out", str(out), *extra])


BLOCKS = [(b, n, t, a) for b, n, t, a in itertools.product(["transformer", "gau", "rnn"], ["pre", "post", "deepnorm"],
                                                           ["layernorm", "rmsnorm"], ["softmax", "softmax_plus", "relu2"])
          if b != "rnn" or a == "softmax"]  # the rnn block has no attention
TIES = [dict(tie_embeddings=False), dict(tied_init="none"), dict(tied_init="rescaled"), dict(tied_init="swap"),
        dict(tied_init="ortho")]


def test_logits_for_every_combination(tokenizer, tmp_path):
    """42 block × norm × norm type × attention combinations, with the 3 masks and 5 tying options in turn (i mod 15
    meets every mask × tying pair), and the activations; each exported, loaded with transformers, and compared on a
    padded batch (left and right padding)."""
    cases = [dict(block=b, norm=n, norm_type=t, attention=a, mask=["causal", "bidirectional", "prefix"][i % 3],
                  **TIES[i % 5]) for i, (b, n, t, a) in enumerate(BLOCKS)]
    cases += [dict(activation=a, norm_type="rmsnorm", norm="pre") for a in ("squareplus", "relu", "silu")]
    cases += [dict(position="none", norm="pre", norm_type="rmsnorm")]
    native = []
    for i, options in enumerate(cases):
        if options.get("block") == "rnn" and options["mask"] == "prefix":
            options["mask"] = "causal"
        ckpt, model = lm_checkpoint(tmp_path / f"{i}.ckpt", tokenizer, seed=i, **options)
        export(ckpt, tmp_path / f"out{i}")
        hf = load_hf(tmp_path / f"out{i}", model.backbone_config.mask, remote=i < 2)  # (the rest: kslm's own classes)
        assert (hf.config.model_type == "arcee") == arcee_exactly(model.backbone_config), options
        native.append(hf.config.model_type == "arcee")
        assert_same_logits(model, hf, model.backbone_config.mask)
    assert sum(native) == 3  # i = 3 of the grid (swap-tied), and the relu and silu FFNs: exports that went native


def arcee_exactly(cfg) -> bool:
    """What Arcee (Llama's attention and RMSNorm, a non-gated MLP, untied head) computes exactly: a Pre-Norm RMSNorm
    softmax RoPE causal Transformer with a gelu / silu / relu FFN whose head is a plain matrix (untied, tied, rescaled
    or swap-tied: a column permutation); never GAU, the RNN block, Post/DeepNorm, LayerNorm, other attentions,
    masks or activations, an ortho head or no positions."""
    return (cfg.block, cfg.norm, cfg.norm_type, cfg.attention, cfg.mask, cfg.position) == \
        ("transformer", "pre", "rmsnorm", "softmax", "causal", "rope") and cfg.activation in ("gelu", "silu", "relu") \
        and (not cfg.tie_embeddings or cfg.tied_init != "ortho")


def test_native_export_is_arcee_without_remote_code(tokenizer, tmp_path, capsys):
    ckpt, model = lm_checkpoint(tmp_path / "n.ckpt", tokenizer, norm="pre", norm_type="rmsnorm", activation="silu")
    export(ckpt, tmp_path / "out")
    out = capsys.readouterr().out
    assert "as ArceeForCausalLM (native, no remote code; logits checked against kslm" in out
    files = sorted(os.listdir(tmp_path / "out"))
    assert "modeling_kslm.py" not in files and "generation_config.json" in files
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()  # no trust_remote_code
    assert type(hf).__name__ == "ArceeForCausalLM"
    assert_same_logits(model, hf, "causal")


@pytest.mark.parametrize("options", [dict(block="gau", norm="post", tied_init="swap"), dict(mask="prefix", norm="deepnorm"),
                                     dict(block="rnn", tie_embeddings=False),
                                     dict(norm="pre", norm_type="rmsnorm", activation="gelu")])
def test_greedy_generate_equals_kslm(tokenizer, tmp_path, options):
    """HF generate (with and without the cache) gives LanguageModel.generate's tokens (what `kslm predict` runs)."""
    ckpt, model = lm_checkpoint(tmp_path / "g.ckpt", tokenizer, seed=3, **options)
    export(ckpt, tmp_path / "out")
    hf = load_hf(tmp_path / "out", model.backbone_config.mask, remote=False)
    prompt = tokenizer.encode("the lazy fox").ids
    ours = model.generate(prompt, 12, 0.0)
    ids = torch.tensor([[EOS_ID] + prompt])
    extra = {"prefix_lengths": torch.tensor([ids.shape[1]])} if options.get("mask") == "prefix" else {}
    for use_cache in (True, False):
        out = hf.generate(ids, max_new_tokens=12, do_sample=False, use_cache=use_cache, **extra)[0, ids.shape[1]:].tolist()
        if EOS_ID in out:
            out = out[:out.index(EOS_ID)]
        assert out == ours, (use_cache, out, ours)
    assert ours  # (a random model may repeat one token; the logits test checks the distributions themselves)


def test_kslm_predict_cli_equals_generate(ckpts, tmp_path, monkeypatch, capsys):
    """The session's trained gau checkpoint: `kslm predict` tokens == a plain `tokenizer(prompt)` + greedy `generate`
    of the export (the exported tokenizer starts the document with </s> itself, as kslm predict does)."""
    from helpers import read_jsonl
    from transformers import AutoTokenizer

    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.txt").write_text("The list\nIn Python, a class\n", encoding="utf-8")
    code, err = run_cli(["predict", "--ckpt_path", str(ckpts["lm"]), "--data.predict_file", "prompts.txt",
                         "--model.max_new_tokens", "8", "--predictions.path", "p.jsonl"], capsys)
    assert code == 0, err
    export(ckpts["lm"], tmp_path / "out")
    hf = load_hf(tmp_path / "out", "causal")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "out"), trust_remote_code=True)
    records = read_jsonl("p.jsonl")
    for rec in records:
        enc = tok(rec["prompt"], return_tensors="pt")
        assert enc.input_ids[0, 0] == EOS_ID
        out = hf.generate(**enc, max_new_tokens=8)[0, enc.input_ids.shape[1]:].tolist()  # generation_config: greedy
        assert [t for t in out if t != EOS_ID][:len(rec["token_ids"])] == rec["token_ids"]
        assert tok.decode(out[:len(rec["token_ids"])]) == rec["generation"]
    assert all(len(rec["token_ids"]) == 8 for rec in records)  # nothing cut short: 8 tokens compared per prompt


def test_autotokenizer_ids_and_offsets(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    from kslm.data.tokenizer import load_tokenizer
    from kslm.hf.reader import read_export

    ckpt, _ = lm_checkpoint(tmp_path / "t.ckpt", tokenizer, norm="pre", norm_type="rmsnorm")
    export(ckpt, tmp_path / "out")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    for text in (TEXT, "naïve 狐狸 café", "unseen ☃ chars"):
        enc, ours = tok(text, return_offsets_mapping=True), tokenizer.encode(text)
        assert enc["input_ids"] == [EOS_ID] + ours.ids  # the document starts after </s>, as kslm's LM data has it
        assert [tuple(o) for o in enc["offset_mapping"]] == [(0, 0)] + [tuple(o) for o in ours.offsets]
        assert tok(text, add_special_tokens=False)["input_ids"] == ours.ids
        assert tok.decode(enc["input_ids"], skip_special_tokens=True) == tokenizer.decode(ours.ids)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.mask_token_id) == (3, 3, 0, 4)
    # kslm reads the export's tokenizer back as the checkpoint held it (no </s> of its own when encoding)
    assert read_export(tmp_path / "out")[0].tokenizer == tokenizer.to_str()
    assert load_tokenizer(str(tmp_path / "out")).to_str() == tokenizer.to_str()
    assert load_tokenizer(str(tmp_path / "out" / "tokenizer.json")).encode("the fox").ids == tokenizer.encode("the fox").ids


@pytest.mark.parametrize("options", [dict(block="gau", norm="post"), dict(norm="pre", norm_type="rmsnorm")])
def test_round_trip_gives_identical_safetensors(tokenizer, tmp_path, options):
    """.ckpt → export → LanguageModel(--model.pretrained DIR) → checkpoint → export: the same bytes."""
    from kslm.tasks.lm import LanguageModel

    ckpt, model = lm_checkpoint(tmp_path / "a.ckpt", tokenizer, **options)
    export(ckpt, tmp_path / "one")
    again = LanguageModel(backbone=model.backbone_config, pretrained=str(tmp_path / "one"))
    again.connect(tokenizer, data_settings={"seq_len": 32, "batch_size": 4})
    again.init_from_pretrained(tokenizer, str(tmp_path / "one"))
    second = {"state_dict": again.state_dict(), "pytorch-lightning_version": "2.6.6", "global_step": 0, "epoch": 0}
    again.on_save_checkpoint(second)
    torch.save(second, tmp_path / "b.ckpt")
    export(tmp_path / "b.ckpt", tmp_path / "two")
    names = [n for n in os.listdir(tmp_path / "one") if n.endswith(".safetensors")]
    assert names and sorted(names) == sorted(n for n in os.listdir(tmp_path / "two") if n.endswith(".safetensors"))
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


@pytest.mark.parametrize("mask", ["causal", "prefix"])
def test_nbce_over_export_equals_checkpoint(tokenizer, tmp_path, mask):
    from kslm.tasks.nbce import NBCE

    ckpt, _ = lm_checkpoint(tmp_path / "c.ckpt", tokenizer, seed=5, mask=mask, block="gau")
    export(ckpt, tmp_path / "out")
    contexts, question = ["the quick brown fox", "jumps over", "the lazy dog"], "what jumps?"
    answers = []
    for model in (NBCE(checkpoint=str(ckpt), temperature=0.0, max_new_tokens=10),
                  NBCE(hf_path=str(tmp_path / "out"), temperature=0.0, max_new_tokens=10),
                  NBCE(checkpoint=str(tmp_path / "out"), temperature=0.0, max_new_tokens=10)):
        prompts = [model.encode_prompt(c, question) for c in ["", *contexts]]
        answers.append(model.generate(prompts))
    assert answers[0] == answers[1] == answers[2]
    assert len(answers[0][0]) > 0


def test_bad_exports_are_one_line(tokenizer, tmp_path, capsys):
    ckpt, _ = lm_checkpoint(tmp_path / "x.ckpt", tokenizer)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    for args, expected in [
        (["--ckpt_path", str(ckpt), "--out", str(tmp_path / "full")], "exists and is not empty; give --overwrite"),
        (["--ckpt_path", str(tmp_path / "junk.ckpt"), "--out", str(tmp_path / "o1")], "cannot read checkpoint"),
        (["--ckpt_path", str(tmp_path / "none.ckpt"), "--out", str(tmp_path / "o2")], "checkpoint not found"),
        (["--ckpt_path", str(tmp_path / "plain.ckpt"), "--out", str(tmp_path / "o3")], "not a kslm checkpoint"),
        (["--out", str(tmp_path / "o4")], "the following arguments are required: --ckpt_path"),
    ]:
        code, err = run_cli(["export", *args], capsys)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and expected in lines[0], err
    assert (tmp_path / "full" / "keep.txt").is_file() and not (tmp_path / "o1").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp directory left behind
    # --overwrite replaces a kslm export, never a directory of the user's (its keep.txt is named, nothing touched)
    code, err = run_cli(["export", "--ckpt_path", str(ckpt), "--out", str(tmp_path / "full"), "--overwrite"], capsys)
    assert code == 2 and "keep.txt" in err and (tmp_path / "full" / "keep.txt").read_text() == "x"
    code, err = run_cli(["export", "--ckpt_path", str(ckpt), "--out", str(tmp_path / "o5")], capsys)
    assert code == 0, err
    (tmp_path / "o5" / "README.md").write_text("edited by the user")
    code, err = run_cli(["export", "--ckpt_path", str(ckpt), "--out", str(tmp_path / "o5"), "--overwrite"], capsys)
    assert code == 0 and "edited" not in (tmp_path / "o5" / "README.md").read_text(encoding="utf-8")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # the old export is gone too


def test_model_card_and_files(tokenizer, tmp_path):
    import json

    ckpt, _ = lm_checkpoint(tmp_path / "m.ckpt", tokenizer, block="gau", mask="prefix")
    export(ckpt, tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    for needle in ("kslm 0.1.0", "kslm must be installed", "trust_remote_code=True", "steps: 7", "prefix_lengths",
                   "| `block` | `gau` |", "AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)"):
        assert needle in card, needle
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_kslm.KslmForCausalLM"
    from kslm.export import writer

    assert (tmp_path / "out" / "modeling_kslm.py").read_bytes() == (writer.HERE / "modeling_kslm.py").read_bytes()
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in os.listdir(tmp_path / "out"))
