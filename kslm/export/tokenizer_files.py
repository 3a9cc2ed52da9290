"""The tokenizer files of an export: kslm's tokenizers JSON as `tokenizer.json`, with `tokenizer_config.json` and
`special_tokens_map.json`, so that `AutoTokenizer.from_pretrained(DIR)` (a PreTrainedTokenizerFast over the same
JSON) gives kslm's ids and character offsets. kslm's tokenizers add no special tokens when encoding (the data
modules place </s> and <s> … </s> themselves), and neither does the exported one."""

import json
from pathlib import Path
from typing import Dict, Optional

from tokenizers import Tokenizer

ROLES = {  # HF's name → (kslm's token, BERT's token)
    "pad_token": ("<pad>", "[PAD]"), "unk_token": ("<unk>", "[UNK]"), "bos_token": ("<s>", "[CLS]"),
    "eos_token": ("</s>", "[SEP]"), "mask_token": ("<mask>", "[MASK]"), "cls_token": ("<s>", "[CLS]"),
    "sep_token": ("</s>", "[SEP]"),
}


def special_tokens(tok: Tokenizer) -> Dict[str, str]:
    """HF role → token, for the roles this tokenizer has (kslm's <pad> <unk> <s> </s> <mask>, or BERT's)."""
    out = {}
    for role, names in ROLES.items():
        for name in names:
            if tok.token_to_id(name) is not None:
                out[role] = name
                break
    return out


def special_ids(tok: Tokenizer) -> Dict[str, Optional[int]]:
    """bos / eos / pad ids for config.json and generation_config.json."""
    specials = special_tokens(tok)
    return {f"{role}_id": tok.token_to_id(specials[role]) if role in specials else None
            for role in ("bos_token", "eos_token", "pad_token")}


def write_tokenizer(folder: Path, tokenizer_json: str, max_length: Optional[int]) -> None:
    tok = Tokenizer.from_str(tokenizer_json)
    specials = special_tokens(tok)
    (folder / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
              "add_bos_token": False, "add_eos_token": False, **specials}
    if max_length:
        config["model_max_length"] = int(max_length)
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2, ensure_ascii=False) + "\n",
                                                    encoding="utf-8")


__all__ = ["write_tokenizer", "special_tokens", "special_ids"]
