"""The tokenizer files of an export: kslm's tokenizers JSON as `tokenizer.json`, with `tokenizer_config.json` and
`special_tokens_map.json`, so that `AutoTokenizer.from_pretrained(DIR)` (a PreTrainedTokenizerFast over the same
JSON) gives kslm's ids and character offsets.

kslm's own tokenizers add no special tokens when encoding: its data modules place them (an LM document starts after
`</s>`; an extraction window is `<s> text </s>`). An export's tokenizer places them itself, with a post-processor
(tokenizers' TemplateProcessing), so that a plain `tokenizer(text)` gives what kslm feeds the model:

    LanguageModel              </s> text            (what `kslm predict` generates from)
    EntityExtraction, RE       <s> text </s>        (one window, as `kslm predict` encodes a short text)

Reading an export back (kslm.hf.reader, kslm.data.tokenizer.load_tokenizer) removes exactly that post-processor
(kslm.data.tokenizer.kslm_tokenizer_json), so kslm gets the JSON its checkpoint held, byte for byte. A tokenizer that has a
post-processor of its own (a Hugging Face encoder's [CLS] … [SEP]) is written and read unchanged."""

import json
from pathlib import Path
from typing import Dict, Optional

from tokenizers import Tokenizer

from kslm.data.tokenizer import document_templates

ROLES = {  # HF's name → (kslm's token, BERT's token)
    "pad_token": ("<pad>", "[PAD]"), "unk_token": ("<unk>", "[UNK]"), "bos_token": ("<s>", "[CLS]"),
    "eos_token": ("</s>", "[SEP]"), "mask_token": ("<mask>", "[MASK]"), "cls_token": ("<s>", "[CLS]"),
    "sep_token": ("</s>", "[SEP]"),
}


def exported_tokenizer_json(tokenizer_json: str, task: str) -> str:
    """tokenizer.json of an export of `task`: kslm's JSON with its document template as post-processor (a tokenizer
    with a post-processor of its own, or without kslm's specials, is left as it is)."""
    tok = Tokenizer.from_str(tokenizer_json)
    templates = document_templates(tok)
    if tok.post_processor is not None or not templates:
        return tokenizer_json
    tok.post_processor = templates["lm" if task == "LanguageModel" else "window"]
    return tok.to_str()


def special_tokens(tok: Tokenizer, task: Optional[str] = None) -> Dict[str, str]:
    """HF role → token, for the roles this tokenizer has (kslm's <pad> <unk> <s> </s> <mask>, or BERT's). A kslm LM
    starts documents with </s>, so that is its bos_token (as GPT-2's <|endoftext|> is both)."""
    out = {}
    for role, names in ROLES.items():
        for name in names:
            if tok.token_to_id(name) is not None:
                out[role] = name
                break
    if task == "LanguageModel" and tok.token_to_id("</s>") is not None and "lm" in document_templates(tok):
        out["bos_token"] = "</s>"
    return out


def special_ids(tok: Tokenizer, task: Optional[str] = None) -> Dict[str, Optional[int]]:
    """bos / eos / pad ids for config.json and generation_config.json."""
    specials = special_tokens(tok, task)
    return {f"{role}_id": tok.token_to_id(specials[role]) if role in specials else None
            for role in ("bos_token", "eos_token", "pad_token")}


def write_tokenizer(folder: Path, tokenizer_json: str, max_length: Optional[int], task: str) -> None:
    tok = Tokenizer.from_str(tokenizer_json)
    specials = special_tokens(tok, task)
    (folder / "tokenizer.json").write_text(exported_tokenizer_json(tokenizer_json, task), encoding="utf-8")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False, **specials}
    if max_length:
        config["model_max_length"] = int(max_length)
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2, ensure_ascii=False) + "\n",
                                                    encoding="utf-8")


__all__ = ["write_tokenizer", "special_tokens", "special_ids", "exported_tokenizer_json"]
