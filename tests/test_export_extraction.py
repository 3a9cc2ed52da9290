"""`kslm export` of extraction checkpoints and of MLM encoders, and back through `--model.hf_path DIR`: the encoder
loads as AutoModel with kslm's hidden states, the head's weights and labels travel in the directory, re-imported
predictions are identical, and fine-tuning from the exported encoder starts with `--model.pretrained ckpt`'s loss."""

import json

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from helpers import fit_in, ner_args, scalars  # noqa: E402
from test_export import export, lm_checkpoint, tokenizer  # noqa: E402, F401

from kslm.checkpoint import read_payload  # noqa: E402


@pytest.mark.parametrize("task", ["ner", "re"])
def test_extraction_export_encoder_head_and_reimport(ckpts, tmp_path, task):
    from transformers import AutoModel

    from kslm.data.tokenizer import load_tokenizer
    from kslm.tasks.ner import EntityExtraction
    from kslm.tasks.re import RelationExtraction

    Task = EntityExtraction if task == "ner" else RelationExtraction
    export(ckpts[task], tmp_path / "out")
    rec = json.loads((tmp_path / "out" / "kslm.json").read_text())
    orig = Task.load_from_checkpoint(ckpts[task]).eval()
    from safetensors.torch import load_file

    assert rec["labels"] == orig.labels and not (tmp_path / "out" / "head.safetensors").exists()
    stored = load_file(str(tmp_path / "out" / "model.safetensors"))  # the head beside the backbone, kslm's names
    head = {k[len("head_module."):]: v for k, v in stored.items() if k.startswith("head_module.")}
    assert head and all(torch.equal(v, orig.head_module.state_dict()[k]) for k, v in head.items())
    assert set(head) == set(orig.head_module.state_dict())
    encoder = AutoModel.from_pretrained(str(tmp_path / "out"), trust_remote_code=True).eval()
    ids = torch.randint(5, orig.backbone_config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        ours = orig.backbone(ids, attention_mask=mask)
        theirs = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (ours - theirs)[mask.bool()].abs().max() <= 1e-5
    # back into kslm through --model.hf_path DIR: encoder and head, the same span scores (so the same predictions)
    payload = read_payload(ckpts[task])
    again = Task(**Task.init_args({**payload.settings, "hf_path": str(tmp_path / "out")}))
    tok = load_tokenizer(str(tmp_path / "out"), kslm_specials=False)
    again.connect(tok, payload.labels)
    again.build(tok, hf_weights=str(tmp_path / "out"))
    span = mask.clone()  # the tokens that may start or end a span
    with torch.no_grad():
        ours, theirs = orig(ids, mask, span), again.eval()(ids, mask, span)
    for a, b in zip(ours if task == "re" else [ours], theirs if task == "re" else [theirs], strict=True):
        finite = a.isfinite()
        assert torch.equal(finite, b.isfinite()) and (a[finite] - b[finite]).abs().max() <= 1e-5
        assert torch.equal(a > 0, b > 0)
        assert a[finite].std() > 0.1  # scores that vary: the comparison can fail


def test_hf_path_export_first_step_loss_equals_pretrained(tokenizer, tmp_path):  # noqa: F811
    """An MLM checkpoint and its export: NER from --model.pretrained ckpt, --model.hf_path DIR and --model.pretrained DIR
    start alike (the same first-step loss)."""
    ckpt, _ = lm_checkpoint(tmp_path / "mlm.ckpt", tokenizer, mask="bidirectional", block="gau", norm="post")
    export(ckpt, tmp_path / "mlm")
    losses = []
    for name, option in (("a", ["--model.pretrained", str(ckpt)]), ("b", ["--model.hf_path", str(tmp_path / "mlm")]),
                         ("c", ["--model.pretrained", str(tmp_path / "mlm")])):
        folder = tmp_path / name
        folder.mkdir()
        fit_in(folder, ner_args(folder, *option, "--seed_everything", "3", "--trainer.limit_val_batches", "0", steps=1))
        losses.append(scalars(folder / "logs")["train/loss"])
    assert losses[0] == pytest.approx(losses[1], abs=1e-6) and losses[0] == pytest.approx(losses[2], abs=1e-6), losses


def test_hf_encoder_checkpoint_exports_as_its_own_architecture(workdir):
    """NER over a Hugging Face BERT: the export is a native BertModel (no remote code) with kslm's hidden states."""
    from helpers import CLUENER
    from test_finetune import tiny_bert
    from transformers import AutoModel

    from kslm.tasks.ner import EntityExtraction

    texts = [json.loads(line)["text"] for line in CLUENER.read_text(encoding="utf-8").splitlines()]
    bert = tiny_bert(workdir / "bert", texts)
    ckpt = fit_in(workdir, ner_args(workdir, "--model.hf_path", str(bert), "--trainer.limit_val_batches", "0", steps=1))
    export(ckpt, workdir / "out")
    assert json.loads((workdir / "out" / "kslm.json").read_text())["layout"] == "hf_encoder"
    assert not (workdir / "out" / "modeling_kslm.py").exists() and (workdir / "out" / "head.safetensors").is_file()
    encoder = AutoModel.from_pretrained(str(workdir / "out")).eval()
    assert type(encoder).__name__ == "BertModel"
    orig = EntityExtraction.load_from_checkpoint(ckpt).eval()
    ids, mask = torch.tensor([[2, 7, 8, 9, 3, 0]]), torch.tensor([[1, 1, 1, 1, 1, 0]])
    with torch.no_grad():
        ours = orig.backbone(ids, attention_mask=mask)
        theirs = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (ours - theirs)[mask.bool()].abs().max() <= 1e-5
