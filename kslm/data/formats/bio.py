"""Char-per-line tagged NER files (People's Daily, MSRA, Weibo NER): `<char><space|tab><tag>` lines, a blank line
between sentences; BIO, BIOES and BMES tags. Weibo NER writes each char followed by its word-segment position
(`科0`, `p10`): `segpos` strips it."""

import logging
import re
from typing import Iterator

from kslm.data.formats.jsonl import ReadStats, check_file, read_text, sorted_entities
from kslm.errors import DataError

log = logging.getLogger(__name__)

_SEGPOS = re.compile(r"^(.+?)(\d+)$")
_LINE = re.compile(r"^(.+?)[ \t]+(\S+)$")


_TAG_LINE = re.compile(r"^\S\d*[ \t]+(O|[BIMES][-_]\S+)$")  # a char (Weibo: + segment digits), a tag read_bio knows


def is_tag_line(line: str) -> bool:
    """Whether `line` (without its newline) reads as `<char> <tag>` (how format sniffing recognises these files)."""
    return _TAG_LINE.match(line.rstrip("\r")) is not None


def read_bio(path, segpos: bool | None = None, repair: bool = False, stats: ReadStats | None = None) -> Iterator[dict]:
    """Char-per-line tagged files (People's Daily, MSRA, Weibo): `<char> <tag>` lines, blank line between sentences.

    Tags: `O`, `B-X`, `I-X`, `M-X`, `E-X`, `S-X` (BIO, BIOES and BMES all read). An `I-/M-/E-X` that does not
    continue an open `X` entity is an error, or with `repair=True` (`--data.repair true`) starts a new entity
    (conlleval's reading) and is counted in `stats.repaired_tags`.
    segpos: Weibo NER appends the char's position in its word segment (`科0`, `p10`); True strips the trailing
    digits (keeping at least one char, so `310` is `3`), None detects it from the file (every token of the first
    50 lines is a char followed by digits).
    """
    p = check_file(path)
    stats = stats if stats is not None else ReadStats()
    lines = read_text(p).split("\n")
    if segpos is None:
        toks = [m.group(1) for m in map(_LINE.match, (ln.rstrip("\r") for ln in lines[:200] if ln.strip())) if m][:50]
        segpos = bool(toks) and all(_SEGPOS.match(t) for t in toks)

    chars: list[str] = []
    ents: list[dict] = []
    open_ent: dict | None = None  # {"start", "type"} of the entity being read

    def close(end):
        nonlocal open_ent
        if open_ent is not None:
            ents.append({"start": open_ent["start"], "end": end, "type": open_ent["type"]})
            open_ent = None

    for n, raw in enumerate(lines, 1):
        line = raw.rstrip("\r")
        if not line.strip():
            close(len(chars))
            if chars:
                stats.records += 1
                yield {"text": "".join(chars), "entities": sorted_entities(ents)}
            chars, ents = [], []
            continue
        m = _LINE.match(line)
        if not m:
            raise DataError(f"expected '<char> <tag>', got {line!r}", path=p, line=n, field="tag")
        tok, tag = m.groups()
        if segpos:
            sm = _SEGPOS.match(tok)
            if not sm:
                raise DataError(f"expected a char followed by its segment position digits, got {tok!r}",
                                path=p, line=n, field="char")
            tok = sm.group(1)
        if len(tok) != 1 and not segpos:
            raise DataError(f"expected one character per line, got {tok!r}", path=p, line=n, field="char")
        i = len(chars)
        chars.append(tok)
        if tag == "O":
            close(i)
            continue
        if len(tag) < 3 or tag[1] not in "-_" or tag[0] not in "BIMES":
            raise DataError(f"unknown tag {tag!r} (expected O, B-X, I-X, M-X, E-X or S-X)", path=p, line=n, field="tag")
        prefix, typ = tag[0], tag[2:]
        continues = open_ent is not None and open_ent["type"] == typ
        if prefix in "IME" and not continues:
            if not repair:
                raise DataError(f"{tag} does not continue an open {typ} entity (previous tag ends or differs); "
                                "give --data.repair true to read it as B- (counted)", path=p, line=n, field="tag")
            stats.repaired_tags += 1
            stats.note(f"{p}:{n}: {tag} read as B-{typ}")
            prefix = "B"
        if prefix in "BS":
            close(i)
            open_ent = {"start": i, "type": typ}
        if prefix in "ES":
            close(i + 1)
    close(len(chars))
    if chars:
        stats.records += 1
        yield {"text": "".join(chars), "entities": sorted_entities(ents)}
    if stats.repaired_tags:
        log.warning("%s: %d tags without an open entity were read as B- (--data.repair true)", p, stats.repaired_tags)


__all__ = ["read_bio", "is_tag_line"]
