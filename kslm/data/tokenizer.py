"""Train or load a `tokenizers` tokenizer; the same JSON travels inside every kslm checkpoint.

kinds:
    bpe   byte-level BPE; CJK characters are first isolated one per pre-token (as BERT does), so Chinese text
          becomes characters (or their bytes when rare) rather than byte soup spanning several characters.
    char  one token per character (WordLevel over characters), the natural choice for Chinese NER.
Special tokens, at fixed ids: <pad>=0, <unk>=1, <s>=2, </s>=3, <mask>=4. Offsets are character offsets of the
original (un-normalized) text: read them through kslm.data.spans.token_offsets, which also covers the combining marks
NFC folds into the char before them.
"""

import hashlib
import json
from pathlib import Path
from typing import Iterable, Tuple

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers.processors import TemplateProcessing

from kslm.errors import DataError
from kslm.io import MAX_JSON_FILE_BYTES, JsonInputError, read_json, write_text

SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "<mask>"]
PAD_ID, UNK_ID, BOS_ID, EOS_ID, MASK_ID = range(5)
CJK = r"[\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]"


def min_vocab_size(kind: str) -> int:
    """The smallest vocabulary a trained tokenizer of `kind` has: the special tokens and one character (char), or
    the special tokens and the 256 bytes of byte-level BPE (a smaller vocab_size would be silently exceeded)."""
    return len(SPECIAL_TOKENS) + (256 if kind == "bpe" else 1)


def check_vocab_size(kind: str, vocab_size: int, option: str = "data.vocab_size") -> None:
    least = min_vocab_size(kind)
    if vocab_size < least:
        what = "5 special tokens + 256 bytes" if kind == "bpe" else "5 special tokens + 1 character"
        raise DataError(f"vocab_size {vocab_size} is below the smallest {kind} vocabulary, {least} ({what})",
                        field=option)


def train_tokenizer(texts: Iterable[str], kind: str = "bpe", vocab_size: int = 8000, min_frequency: int = 2) -> Tokenizer:
    if kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(CJK), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    elif kind == "char":
        tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tok.decoder = decoders.Fuse()
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=SPECIAL_TOKENS, show_progress=False)
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r} (bpe | char)")
    tok.train_from_iterator(texts, trainer=trainer)
    check_special_tokens(tok, "<trained>")
    return tok


def check_special_tokens(tok: Tokenizer, source) -> None:
    for i, t in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(t) != i:
            raise DataError(f"tokenizer must map {t} to id {i} (kslm's special tokens), got {tok.token_to_id(t)}",
                            path=source)


def load_tokenizer(path: str, kslm_specials: bool = True) -> Tokenizer:
    """A tokenizer.json, or a Hugging Face model directory (its tokenizer.json, else a BERT WordPiece tokenizer built
    from its vocab.txt). A kslm checkpoint's tokenizer is read by kslm.checkpoint (kslm.cli.connect decides which); a
    `kslm export`'s is read as the checkpoint held it (kslm_tokenizer_json).

    kslm_specials: require kslm's special ids (<pad>=0 … <mask>=4), as the LM data needs; otherwise any
    tokenizer with <s>/</s>/<pad> or [CLS]/[SEP]/[PAD] is accepted (extraction tasks on an HF encoder).
    """
    p = Path(path)
    if p.is_dir():
        if (p / "tokenizer.json").is_file():
            p = p / "tokenizer.json"
        elif (p / "vocab.txt").is_file():
            from tokenizers.implementations import BertWordPieceTokenizer

            cfg = p / "tokenizer_config.json"
            lower = True
            if cfg.is_file():
                try:
                    settings = read_json(cfg, 16 << 20)
                except (OSError, UnicodeDecodeError, JsonInputError) as exc:
                    raise DataError(f"unreadable ({str(exc).splitlines()[0][:200]})", path=cfg, field="tokenizer") from None
                lower = settings.get("do_lower_case", True) if isinstance(settings, dict) else True
            tok = BertWordPieceTokenizer(str(p / "vocab.txt"), lowercase=lower)._tokenizer
            special_ids(tok)
            return tok
        else:
            raise DataError("directory has neither tokenizer.json nor vocab.txt", path=p, field="tokenizer")
    if not p.is_file():
        raise DataError("tokenizer file not found", path=p, field="tokenizer")
    if p.stat().st_size > MAX_JSON_FILE_BYTES:
        raise DataError(f"larger than {MAX_JSON_FILE_BYTES >> 20} MiB: not a tokenizer", path=p, field="tokenizer")
    try:
        if (p.parent / "kslm.json").is_file():  # a `kslm export`: without the document template the export added
            tok = Tokenizer.from_str(kslm_tokenizer_json(p.read_text(encoding="utf-8")))
        else:
            tok = Tokenizer.from_file(str(p))
    except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
        raise DataError(f"not a tokenizers JSON file ({str(exc).splitlines()[0]})", path=p, field="tokenizer") from None
    check_tokenizer(tok, p, kslm_specials)
    return tok


def tokenizer_from_source(path, kslm_specials: bool = True, field: str = "data.tokenizer") -> Tokenizer:
    """`load_tokenizer`, or the tokenizer inside a kslm checkpoint (.ckpt; its labels are not taken)."""
    if Path(str(path)).suffix == ".ckpt":
        from kslm.checkpoint import read_payload

        tok = read_payload(path, field).load_tokenizer()
        check_tokenizer(tok, path, kslm_specials)
        return tok
    return load_tokenizer(path, kslm_specials)


def check_tokenizer(tok: Tokenizer, source, kslm_specials: bool = True) -> None:
    """kslm's special ids (<pad>=0 … <mask>=4), as the LM data needs; or, with kslm_specials False, any tokenizer
    with <s>/</s>/<pad> or [CLS]/[SEP]/[PAD] (extraction tasks on an HF encoder)."""
    if kslm_specials:
        check_special_tokens(tok, source)
    else:
        special_ids(tok, source)


def special_ids(tok: Tokenizer, source=None) -> Tuple[int, int, int]:
    """(cls, sep, pad) ids that wrap a window: kslm's <s>, </s>, <pad>, or BERT's [CLS], [SEP], [PAD] for a
    Hugging Face encoder's tokenizer.json."""
    for names in (("<s>", "</s>", "<pad>"), ("[CLS]", "[SEP]", "[PAD]")):
        ids = tuple(tok.token_to_id(t) for t in names)
        if None not in ids:
            return ids
    raise DataError("tokenizer has neither <s> </s> <pad> nor [CLS] [SEP] [PAD]", path=source, field="tokenizer")


def fingerprint(tok: Tokenizer) -> str:
    return hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]


def cached_tokenizer(cache_path: Path, texts_fn, kind: str, vocab_size: int) -> Tokenizer:
    """Train once and keep the JSON at `cache_path` (atomic write: concurrent ranks are safe)."""
    if cache_path.is_file():
        return Tokenizer.from_file(str(cache_path))
    tok = train_tokenizer(texts_fn(), kind, vocab_size)
    write_text(cache_path, tok.to_str())
    return tok



# ---------------------------------------------------------------- document templates (what an export's tokenizer adds)
def document_templates(tok: Tokenizer) -> dict:
    """How kslm frames a document, as `tokenizers` post-processors: an LM document starts after </s>, an extraction
    window is <s> text </s>. {} for a tokenizer without kslm's <s> and </s>. An export's tokenizer carries the
    template of its task (kslm.hf.tokenizer_files); kslm's own tokenizers carry none (the data modules frame)."""
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    if bos is None or eos is None:
        return {}
    return {"lm": TemplateProcessing(single="</s> $A", pair="</s> $A $B:1", special_tokens=[("</s>", eos)]),
            "window": TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> $B:1 </s>:1",
                                         special_tokens=[("<s>", bos), ("</s>", eos)])}


def _post_processor_json(tok: Tokenizer, processor) -> object:
    probe = Tokenizer.from_str(tok.to_str())
    probe.post_processor = processor
    return json.loads(probe.to_str())["post_processor"]


def kslm_tokenizer_json(text: str) -> str:
    """The tokenizer JSON kslm stored, from an export's tokenizer.json: kslm's document template removed when it is
    exactly one of kslm's (anything else is left as it is)."""
    tok = Tokenizer.from_str(text)
    if tok.post_processor is None:
        return text
    ours = json.loads(text).get("post_processor")
    if any(ours == _post_processor_json(tok, p) for p in document_templates(tok).values()):
        tok.post_processor = None
        return tok.to_str()
    return text


__all__ = ["train_tokenizer", "check_vocab_size", "min_vocab_size", "load_tokenizer", "cached_tokenizer", "check_tokenizer",
           "tokenizer_from_source", "fingerprint", "special_ids", "SPECIAL_TOKENS", "PAD_ID", "UNK_ID", "BOS_ID", "EOS_ID",
           "MASK_ID", "document_templates", "kslm_tokenizer_json"]
