"""Character ↔ token spans for NER / RE: encode canonical records (kslm.data.formats) through a tokenizer's offset
mapping, in sliding windows when a text is longer than `max_length`, and map token-level predictions back.

Token spans are (start_token, end_token INCLUSIVE, type) for entities and (s_start, s_end, predicate, o_start, o_end)
for triples (GPLinker's layout). An entity whose boundary falls inside a token, or that no window holds whole, raises
a DataError or is listed in `misaligned` (errors="report") — never dropped silently.

Character offsets always index the ORIGINAL text, whatever the tokenizer's normalizer does: `token_offsets` gives the
combining marks a normalizer folds into the preceding char (NFC "e" + U+0301 → "é", BERT's accent stripping) to that
char's token, which `tokenizers` leaves them out of.
"""

import unicodedata
from dataclasses import dataclass

from kslm.errors import DataError


def token_offsets(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets into the ORIGINAL `text`, whatever the tokenizer's normalizer does.

    Each token's offsets are first widened over the combining characters its normalizer folded away (see
    `_cover_folded_marks`), then trimmed of surrounding whitespace when the token has other chars (byte-level BPE
    glues the preceding space to a word: "Ġfox" covers " fox", the entity covers "fox")."""
    enc = tokenizer.encode(text, add_special_tokens=False)
    offsets = []
    for s, e in _cover_folded_marks(text, enc.offsets):
        piece = text[s:e]
        core = piece.strip()
        if core:
            s = s + (len(piece) - len(piece.lstrip()))
            e = s + len(core)
        offsets.append((s, e))
    return enc.ids, offsets


def _continues_cluster(ch: str) -> bool:
    """True for a character that never starts a grapheme cluster but continues the one before it (UAX #29 Extend,
    ZWJ, SpacingMark and Hangul V/T jamo): combining marks, variation selectors, ZWJ/ZWNJ, emoji skin-tone modifiers,
    tag characters, halfwidth kana voicing marks, Hangul medial vowels and final consonants."""
    o = ord(ch)
    return (unicodedata.category(ch) in ("Mn", "Mc", "Me") or o in (0x200C, 0x200D)
            or 0x1160 <= o <= 0x11FF or 0xD7B0 <= o <= 0xD7FF  # Hangul jungseong / jongseong (incl. extended-B)
            or 0xFF9E <= o <= 0xFF9F or 0x1F3FB <= o <= 0x1F3FF or 0xE0020 <= o <= 0xE007F)


def _cover_folded_marks(text: str, offsets) -> list[tuple[int, int]]:
    """`tokenizers` offsets, widened so that no combining character of the original text is left outside every token.

    `tokenizers` maps each NORMALIZED char back to one original char. When the normalizer folds several original
    chars into one (NFC/NFKC composing "e" + U+0301 into "é", Hangul jamo L+V+T into one syllable, Tamil/Indic vowel
    signs) or deletes one (BERT's strip_accents, clean_text dropping ZWJ/tags/variation selectors), the normalized
    char keeps the offsets of the FIRST (base) char only and the folded chars belong to no token: an entity ending on
    such a mark would not align (dropped from training) and a prediction ending there would lose the mark. Here a run
    of uncovered chars that continue the preceding char's grapheme cluster (`_continues_cluster`) is given to the
    token(s) ending just before it (several tokens may share that char: bytes of a rare char, NFKC expansions).
    Uncovered chars that start a cluster (whitespace the pre-tokenizer drops, a deleted control char) stay uncovered.
    Text that the normalizer leaves whole — all ordinary text — keeps exactly the offsets `tokenizers` reports."""
    offsets = [tuple(o) for o in offsets]
    grow = {}  # end of the token(s) before a gap → end of the folded marks that follow it
    reach = 0  # the furthest char covered so far
    for s, e in sorted(o for o in offsets if o[0] < o[1]):
        if s > reach > 0:
            _take_marks(text, reach, s, grow)
        reach = max(reach, e)
    if 0 < reach < len(text):
        _take_marks(text, reach, len(text), grow)
    if not grow:
        return offsets
    return [(s, grow.get(e, e)) if s < e else (s, e) for s, e in offsets]


def _take_marks(text: str, a: int, b: int, grow: dict) -> None:
    """The gap [a, b) of uncovered chars follows a token ending at a: its leading cluster-continuing chars join it."""
    k = a
    while k < b and _continues_cluster(text[k]):
        k += 1
    if k > a:
        grow[a] = k


def align_span(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int] | None:
    """(first token, last token inclusive) whose character span is exactly [start, end), or None when a boundary
    falls inside a token. Several tokens may share one char's offsets (bytes of a rare char): the widest is taken."""
    return _Aligner(offsets)(start, end)


class _Aligner:
    """Boundary maps of one text's tokens: char start → first token starting there, char end → last token ending there."""

    def __init__(self, offsets):
        self.first, self.last = {}, {}
        for i, (s, e) in enumerate(offsets):
            self.first.setdefault(s, i)
            self.last[e] = i

    def __call__(self, start, end):
        a, b = self.first.get(start), self.last.get(end)
        return None if a is None or b is None or b < a else (a, b)


@dataclass
class Window:
    """One window of at most max_length tokens. `offsets` are character offsets into the FULL text; `spans` are
    (start_token, end_token inclusive, type) relative to this window."""

    ids: list[int]
    offsets: list[tuple[int, int]]
    spans: list[tuple[int, int, str]]
    token_start: int  # index of this window's first token in the whole text's tokens

    @property
    def char_start(self) -> int:
        return self.offsets[0][0] if self.offsets else 0

    @property
    def char_end(self) -> int:
        return self.offsets[-1][1] if self.offsets else 0


@dataclass
class Encoded:
    windows: list[Window]
    # errors="report": the entities not on token boundaries ("tokens": None) or in no window whole ("tokens":
    # (first, last) of the whole text; happens only when last - first + 1 > stride + 1), each with its "reason"
    misaligned: list[dict]


def window_starts(n_tokens: int, max_length: int, stride: int) -> list[int]:
    """First token of each window; consecutive windows overlap by `stride` tokens (as HF's `stride`)."""
    if not 0 <= stride < max_length:
        raise ValueError(f"need 0 <= stride < max_length, got stride={stride}, max_length={max_length}")
    starts = [0]
    while starts[-1] + max_length < n_tokens:
        starts.append(starts[-1] + max_length - stride)
    return starts


def encode_entities(tokenizer, record: dict, max_length: int, stride: int | None = None, errors: str = "raise",
                    where=None) -> Encoded:
    """Token ids and token-level entity spans of a canonical NER record, via the tokenizer's offset mapping.

    No special tokens are added (reserve room for them in max_length). Texts longer than max_length tokens are
    cut into windows overlapping by `stride` tokens (default max_length // 4); each entity goes to every window
    that holds it whole. An entity whose boundary falls inside a token, or that no window holds whole, raises a
    DataError (`errors="raise"`, `where` names the source in the message) or is listed in `misaligned`
    (`errors="report"`) — never dropped silently.
    """
    if errors not in ("raise", "report"):
        raise ValueError(f"errors must be 'raise' or 'report', got {errors!r}")
    stride = max_length // 4 if stride is None else stride
    text = record["text"]
    ids, offsets = token_offsets(tokenizer, text)
    starts = window_starts(len(ids), max_length, stride)
    windows = [Window(ids[a:a + max_length], offsets[a:a + max_length], [], a) for a in starts]
    misaligned = []
    align = _Aligner(offsets)
    for k, ent in enumerate(record.get("entities", [])):
        tok = align(ent["start"], ent["end"])
        problem = None
        if tok is None:
            problem = "a boundary falls inside a token"
        else:
            placed = False
            for w in windows:
                if w.token_start <= tok[0] and tok[1] < w.token_start + len(w.ids):
                    w.spans.append((tok[0] - w.token_start, tok[1] - w.token_start, ent["type"]))
                    placed = True
            if not placed:
                problem = f"tokens {tok[0]}..{tok[1]} fit in no window (max_length={max_length}, stride={stride})"
        if problem:
            if errors == "raise":
                raise DataError(f"entity {text[ent['start']:ent['end']]!r} [{ent['start']}, {ent['end']}) "
                                f"of type {ent['type']!r}: {problem}", path=where, field=f"entities[{k}]")
            misaligned.append({**ent, "tokens": tok, "reason": problem})
    return Encoded(windows, misaligned)


def decode_entities(offsets: list[tuple[int, int]], token_spans) -> list[dict]:
    """Token spans (start_token, end_token inclusive, type) → character entities {start, end exclusive, type}."""
    out = []
    for s, e, typ in token_spans:
        if not 0 <= s <= e < len(offsets):
            raise ValueError(f"token span ({s}, {e}) outside 0..{len(offsets) - 1}")
        out.append({"start": offsets[s][0], "end": offsets[e][1], "type": typ})
    return out


def merge_windows(window_offsets: list[list[tuple[int, int]]], predictions) -> list[dict]:
    """Per-window token-span predictions → one sorted, de-duplicated list of character entities of the full text.

    window_offsets[k] are window k's token character offsets (Window.offsets); predictions[k] its
    (start_token, end_token inclusive, type) spans. Spans found by several overlapping windows count once (union).
    """
    if len(predictions) != len(window_offsets):
        raise ValueError(f"{len(predictions)} prediction lists for {len(window_offsets)} windows")
    seen = {}
    for offsets, spans in zip(window_offsets, predictions, strict=True):
        for ent in decode_entities(offsets, spans):
            seen[(ent["start"], ent["end"], ent["type"])] = ent
    return [seen[k] for k in sorted(seen)]


def encode_triples(tokenizer, record: dict, max_length: int, stride: int | None = None, errors: str = "raise",
                   where=None) -> Encoded:
    """Like `encode_entities` for a canonical RE record: each window's `spans` are
    (subject_start, subject_end, predicate, object_start, object_end) token indices (ends inclusive), the layout
    GPLinker's heads are trained on. A triple goes to every window that holds both its entities whole."""
    if errors not in ("raise", "report"):
        raise ValueError(f"errors must be 'raise' or 'report', got {errors!r}")
    stride = max_length // 4 if stride is None else stride
    text = record["text"]
    ids, offsets = token_offsets(tokenizer, text)
    windows = [Window(ids[a:a + max_length], offsets[a:a + max_length], [], a)
               for a in window_starts(len(ids), max_length, stride)]
    align, misaligned = _Aligner(offsets), []
    for k, t in enumerate(record.get("triples", [])):
        sub, obj = align(*t["subject_span"]), align(*t["object_span"])
        problem = None
        if sub is None or obj is None:
            problem = f"a boundary of the {'subject' if sub is None else 'object'} falls inside a token"
        else:
            lo, hi = min(sub[0], obj[0]), max(sub[1], obj[1])
            placed = False
            for w in windows:
                if w.token_start <= lo and hi < w.token_start + len(w.ids):
                    o = w.token_start
                    w.spans.append((sub[0] - o, sub[1] - o, t["predicate"], obj[0] - o, obj[1] - o))
                    placed = True
            if not placed:
                problem = f"tokens {lo}..{hi} fit in no window (max_length={max_length}, stride={stride})"
        if problem:
            if errors == "raise":
                raise DataError(f"triple ({t['subject']!r}, {t['predicate']!r}, {t['object']!r}): {problem}",
                                path=where, field=f"triples[{k}]")
            misaligned.append({**t, "tokens": None if sub is None or obj is None else (lo, hi), "reason": problem})
    return Encoded(windows, misaligned)


def tokens_to_char_triples(text: str, offsets: list[tuple[int, int]], token_triples) -> list[dict]:
    """(sh, st, predicate, oh, ot) token triples → canonical triples with character spans, sorted, de-duplicated."""
    seen = {}
    for sh, st, p, oh, ot in token_triples:
        [s], [o] = decode_entities(offsets, [(sh, st, "")]), decode_entities(offsets, [(oh, ot, "")])
        key = (s["start"], s["end"], p, o["start"], o["end"])
        seen[key] = {"subject": text[s["start"]:s["end"]], "predicate": p, "object": text[o["start"]:o["end"]],
                     "subject_span": [s["start"], s["end"]], "object_span": [o["start"], o["end"]]}
    return [seen[k] for k in sorted(seen)]


def merge_window_triples(text: str, window_offsets: list[list[tuple[int, int]]], predictions) -> list[dict]:
    """Per-window token triples (window_offsets[k]: window k's token character offsets) → the full text's canonical
    triples (union over windows)."""
    if len(predictions) != len(window_offsets):
        raise ValueError(f"{len(predictions)} prediction lists for {len(window_offsets)} windows")
    seen = {}
    for offsets, triples in zip(window_offsets, predictions, strict=True):
        for t in tokens_to_char_triples(text, offsets, triples):
            seen[(*t["subject_span"], t["predicate"], *t["object_span"])] = t
    return [seen[k] for k in sorted(seen)]


__all__ = ["token_offsets", "align_span", "window_starts", "Window", "Encoded", "encode_entities", "decode_entities",
           "merge_windows", "encode_triples", "tokens_to_char_triples", "merge_window_triples"]
