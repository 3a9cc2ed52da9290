"""What every format reader shares: file access (JSON Lines, JSON arrays), `ReadStats`, record validation helpers
and the placing of entity strings in a text (DuIE, CMeIE, WebNLG). Imports nothing from kslm but kslm.errors and kslm.io
(its bounded JSON parser), so every reader module can import it and none needs another.

Canonical records (character offsets, `end` EXCLUSIVE):
    NER  {"text": str, "entities": [{"start": int, "end": int, "type": str}]}
    RE   {"text": str, "triples": [{"subject", "predicate", "object", "subject_span": [s, e], "object_span": [s, e]}]}

The error contract: every reader validates every record and raises one `DataError` naming file, line (1-based,
JSON Lines and char-per-line files) or "record N" (0-based index into a JSON array) and the field. Text is read with
`open_text` / `read_text` / `iter_lines`: UTF-8, a byte-order mark dropped, a byte that is not UTF-8 an error naming
its line and column (`FILE:LINE: not UTF-8 (byte 0xe9 at column 12)`). Nothing is dropped
silently: the options that skip or repair (`skip_unlocatable`, `repair`) count what they did in a `ReadStats` and
log it.
"""

import codecs
import difflib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from kslm.errors import DataError
from kslm.io import MAX_JSON_FILE_BYTES, JsonInputError, json_loads

MAX_LINE_BYTES = 64 << 20  # one line of a text or JSON-lines file (one record): read no further

log = logging.getLogger(__name__)


@dataclass
class ReadStats:
    """What a reader skipped or repaired on request (pass one in to get the counts back; they are also logged)."""

    records: int = 0
    skipped_triples: int = 0  # entity string not found in the text (skip_unlocatable=True)
    repaired_tags: int = 0  # BIO I-/M-/E- without a matching open entity, read as B- (repair=True)
    details: list = field(default_factory=list)  # "path:line: what" for each skip/repair (first 100)

    def note(self, what: str) -> None:
        if len(self.details) < 100:
            self.details.append(what)


# ----------------------------------------------------------------------------------------------- file access


def check_file(path) -> Path:
    """`path` as a Path; a DataError if it is not an existing file."""
    p = Path(path)
    if not p.is_file():
        raise DataError("file not found", path=p)
    return p


def parse_json(text: str, path, line=None):
    """One JSON document or record, bounded in depth (kslm.io.json_loads): a DataError names file and line."""
    try:
        return json_loads(text)
    except JsonInputError as exc:
        raise DataError(str(exc), path=path, line=line if line is not None else exc.line) from None


def open_text(path):
    """`path` opened for reading UTF-8 text: a byte-order mark is dropped and bytes that are not UTF-8 come through as
    lone surrogates (`surrogateescape`), so that `check_utf8` can name their line and column."""
    return open(path, encoding="utf-8-sig", errors="surrogateescape")


_NOT_UTF8 = re.compile("[\udc80-\udcff]")


def check_utf8(line: str, path, n) -> str:
    """`line` (line `n` of `path`, read with `open_text`), or a DataError naming the first byte that is not UTF-8."""
    bad = _NOT_UTF8.search(line)
    if bad is not None:
        raise DataError(f"not UTF-8 (byte 0x{ord(bad.group()) - 0xDC00:02x} at column {bad.start() + 1})", path=path,
                        line=n)
    return line


def read_text(path) -> str:
    """The whole of a UTF-8 text file (a byte-order mark dropped); a DataError names the line and column of the first
    byte that is not UTF-8."""
    p = check_file(path)
    if p.stat().st_size > MAX_JSON_FILE_BYTES:
        raise DataError(f"larger than {MAX_JSON_FILE_BYTES >> 20} MiB, kslm's limit for a file read whole (use JSON "
                        "Lines for larger data)", path=p)
    with open_text(p) as f:
        text = f.read()
    bad = _NOT_UTF8.search(text)
    if bad is not None:
        start = text.rfind("\n", 0, bad.start()) + 1  # the bad line's first character
        check_utf8(text[start:bad.end()], p, text.count("\n", 0, start) + 1)
    return text


def iter_lines(path, max_bytes: Optional[int] = None) -> Iterator[tuple[int, str]]:
    """(1-based line, text; a "\\r\\n" ending read as "\\n") for every line of a UTF-8 text file;
    a DataError at the first line that is not UTF-8, or longer than `max_bytes` (read no further than that)."""
    p = check_file(path)
    max_bytes = max_bytes or MAX_LINE_BYTES
    with open(p, "rb") as f:
        n = 0
        while raw := f.readline(max_bytes + 1):
            n += 1
            if len(raw) > max_bytes and not raw.endswith(b"\n"):
                raise DataError(f"a line longer than {max_bytes:,} bytes (kslm's limit for one line or record)",
                                path=p, line=n)
            line = raw.decode("utf-8", "surrogateescape")
            if n == 1:
                line = line.removeprefix("\ufeff")
            if line.endswith("\r\n"):
                line = line[:-2] + "\n"
            yield n, check_utf8(line, p, n)


def check_utf8_file(path, chunk: int = 1 << 20) -> None:
    """A DataError naming the line and column of the first byte of `path` that is not UTF-8 (else nothing). The bytes
    are checked at C speed; only a file that fails is read again line by line to place the error."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    with open(check_file(path), "rb") as f:
        try:
            while block := f.read(chunk):
                decoder.decode(block)
            decoder.decode(b"", final=True)
            return
        except UnicodeDecodeError:
            pass
    for _ in iter_lines(path):
        pass
    raise DataError("not UTF-8 (a multi-byte character is cut off at the end of the file)", path=path)


def iter_jsonl(path) -> Iterator[tuple[int, dict]]:
    """(1-based line, object) for every non-blank line."""
    p = check_file(path)
    for n, line in iter_lines(p):
        if not line.strip():
            continue
        obj = parse_json(line, p, n)
        if not isinstance(obj, dict):
            raise DataError(f"expected a JSON object, got {type(obj).__name__}", path=p, line=n)
        yield n, obj


def iter_json_array(path) -> Iterator[tuple[str, dict]]:
    """("record N", object) for each element of a JSON array (N is the 0-based index)."""
    p = check_file(path)
    data = parse_json(read_text(p), p)
    if not isinstance(data, list):
        raise DataError(f"expected a JSON array of records, got {type(data).__name__}", path=p)
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise DataError(f"expected a JSON object, got {type(obj).__name__}", path=p, line=f"record {i}")
        yield f"record {i}", obj


def nonblank_lines(path) -> list[int]:
    """The 1-based numbers of the non-blank lines of `path` (the lines `iter_jsonl` reads a record from)."""
    return [n for n, line in iter_lines(path) if line.strip()]


# ----------------------------------------------------------------------------------------------- record checks


def record_text(obj: dict, path, line) -> str:
    """The record's non-empty "text" string."""
    text = obj.get("text")
    if not isinstance(text, str):
        raise DataError(f"missing or not a string (got {type(text).__name__})", path=path, line=line, field="text")
    if not text:
        raise DataError("empty text", path=path, line=line, field="text")
    return text


# the label key of each format's records: a record with a misspelled one would read as a record without labels
LABEL_KEYS = {"label": "cluener", "entities": "canonical or cmeee", "triples": "canonical", "spo_list": "duie",
              "triple_list": "webnlg"}


def key_hint(key: str, allowed=()) -> str:
    """'; did you mean …' for an unexpected record key: a close allowed key, or the format whose label key it is."""
    if key in LABEL_KEYS and key not in allowed:
        return f"; {key!r} is the label key of {LABEL_KEYS[key]} records (--data.format {LABEL_KEYS[key]})"
    for candidates in (list(allowed), [k for k in LABEL_KEYS if k not in allowed]):  # this format's keys first
        close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.7) or [
            k for k in candidates if len(key) > 2 and (k.startswith(key) or key.startswith(k))]
        if close and close[0] in allowed:
            return f"; did you mean {close[0]!r}?"
        if close:
            return f"; did you mean {close[0]!r} ({LABEL_KEYS[close[0]]} records: --data.format {LABEL_KEYS[close[0]]})?"
    return ""


def check_keys(obj: dict, allowed: tuple, fmt: str, path, line) -> None:
    """A key outside `allowed` is a DataError: a misspelled label key must not read as a record without labels."""
    for key in obj:
        if key not in allowed:
            raise DataError(f"unknown key {key!r} in a {fmt} record (expected {', '.join(allowed)})"
                            f"{key_hint(key, allowed)}", path=path, line=line, field=key)


def is_int(x) -> bool:
    """An int that is not a bool."""
    return isinstance(x, int) and not isinstance(x, bool)


def check_label(value, path, line, fld: str) -> str:
    """An entity type or predicate: a string with something besides whitespace (an empty one would be a label
    nobody can name)."""
    if not (isinstance(value, str) and value.strip()):
        raise DataError(f"must be a non-empty name, got {value!r}", path=path, line=line, field=fld)
    return value


def check_span(text: str, start, end, path, line, fld: str, entity=None) -> None:
    """`start`, `end` exclusive must lie inside the text, non-empty; if `entity` is given it must be the covered text."""
    if not (is_int(start) and is_int(end)):
        raise DataError(f"offsets must be integers, got {start!r}, {end!r}", path=path, line=line, field=fld)
    if not 0 <= start < end <= len(text):
        raise DataError(f"span [{start}, {end}) is empty or outside the text (length {len(text)})",
                        path=path, line=line, field=fld)
    if entity is not None and text[start:end] != entity:
        raise DataError(f"entity {entity!r} != text[{start}:{end}] = {text[start:end]!r}", path=path, line=line, field=fld)


def sorted_entities(ents: list[dict]) -> list[dict]:
    """Entities in (start, end, type) order."""
    return sorted(ents, key=lambda e: (e["start"], e["end"], e["type"]))


# ----------------------------------------------------------------------------------------------- located triples


def occurrences(text: str, s: str, word_boundary: bool) -> list[int]:
    """Every start of `s` in `text`; with `word_boundary`, those on word boundaries if there are any."""
    starts, i = [], text.find(s)
    while i >= 0:
        starts.append(i)
        i = text.find(s, i + 1)
    if word_boundary:  # English: "Al" must not be found inside "Alan"; fall back to any occurrence if none is a word
        def ok(i):
            left = i == 0 or not text[i - 1].isalnum() or not s[0].isalnum()
            right = i + len(s) == len(text) or not text[i + len(s)].isalnum() or not s[-1].isalnum()
            return left and right
        words = [i for i in starts if ok(i)]
        starts = words or starts
    return starts


def locate_triples(text, raw_triples, path, line, all_occurrences, skip_unlocatable, stats, word_boundary) -> list[dict]:
    """raw_triples: [(field, subject, predicate, object, extra)] → canonical triples with spans."""
    out = []
    for fld, subj, pred, obj, extra in raw_triples:
        for name, val in (("subject", subj), ("predicate", pred), ("object", obj)):
            if not (isinstance(val, str) and val):
                raise DataError(f"must be a non-empty string, got {val!r}", path=path, line=line, field=f"{fld}.{name}")
        check_label(pred, path, line, f"{fld}.predicate")
        found = {}
        for name, val in (("subject", subj), ("object", obj)):
            found[name] = occurrences(text, val, word_boundary)
        missing = [name for name in ("subject", "object") if not found[name]]
        if missing:
            name = missing[0]
            val = subj if name == "subject" else obj
            if not skip_unlocatable:
                raise DataError(f"entity {val!r} does not occur in the text; give --data.skip_unlocatable true to "
                                "skip such triples (they are counted)", path=path, line=line, field=f"{fld}.{name}")
            stats.skipped_triples += 1
            stats.note(f"{path}:{line}: {fld}.{name} {val!r} not in text")
            continue
        pairs = ([(a, b) for a in found["subject"] for b in found["object"]] if all_occurrences
                 else [(found["subject"][0], found["object"][0])])
        for a, b in pairs:
            out.append({"subject": subj, "predicate": pred, "object": obj,
                        "subject_span": [a, a + len(subj)], "object_span": [b, b + len(obj)], **extra})
    return out


def read_located(records, p, raw_triples, all_occurrences, skip_unlocatable, stats, word_boundary,
                 logger=log) -> Iterator[dict]:
    """(where, record) pairs → {"text", "triples"} with every entity string located in the text.

    raw_triples(obj, path, where) → [(field, subject, predicate, object, extra)]; a skipped triple (entity string
    not in the text, skip_unlocatable=True) is counted in `stats` and the count logged on `logger` at the end.
    """
    stats = stats if stats is not None else ReadStats()
    for where, obj in records:
        text = record_text(obj, p, where)
        raw = raw_triples(obj, p, where)
        stats.records += 1
        yield {"text": text,
               "triples": locate_triples(text, raw, p, where, all_occurrences, skip_unlocatable, stats, word_boundary)}
    if stats.skipped_triples:
        logger.warning("%s: skipped %d triples whose entity is not in the text (--data.skip_unlocatable true)",
                       p, stats.skipped_triples)


__all__ = ["ReadStats", "check_file", "open_text", "check_utf8", "check_utf8_file", "read_text", "iter_lines",
           "iter_jsonl", "iter_json_array", "nonblank_lines", "record_text", "LABEL_KEYS", "key_hint", "check_keys",
           "is_int", "check_span", "check_label", "sorted_entities", "occurrences", "locate_triples", "read_located"]
