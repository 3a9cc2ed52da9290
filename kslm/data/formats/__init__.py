"""NER / RE source formats: the datasets' own files → kslm's canonical records (encoding to tokens: kslm.data.spans).

Canonical records (character offsets, `end` EXCLUSIVE):
    NER  {"text": str, "entities": [{"start": int, "end": int, "type": str}]}
    RE   {"text": str, "triples": [{"subject", "predicate", "object", "subject_span": [s, e], "object_span": [s, e]}]}

Every reader validates every record and raises one `DataError` naming file, line (1-based, JSON Lines and
char-per-line files) or "record N" (0-based index into a JSON array) and the field. Nothing is dropped silently:
the options that skip or repair (`skip_unlocatable`, `repair`) count what they did in a `ReadStats` and log it.

Source formats (see each dataset's SOURCE.md), one module each:
    cluener    JSONL `{"text", "label": {type: {entity: [[s, e], ...]}}}`, e INCLUSIVE; test lines have no label
    cmeee      JSON array `{"text", "entities": [{"start_idx", "end_idx", "type", "entity"}]}`, end_idx INCLUSIVE, nested
    bio        one char per line `<char><space|tab><tag>`, blank line between sentences; BIO, BIOES/BMES tags.
               Weibo NER writes the char followed by its word-segment position (`科0`, `p10`): `segpos` strips it
    duie       JSONL `{"text", "spo_list": [{"subject", "predicate", "object", ...}]}` entity strings, no offsets;
               CMeIE (`cmeie`, same module) is the same with `"object": {"@value": ...}`
    webnlg     JSON array `{"text", "triple_list": [[subject, relation, object]]}`, space-tokenized English
    canonical  JSONL of canonical NER or RE records
What they share (file access, ReadStats, record checks, placing entity strings) is kslm.data.formats.jsonl, the
only kslm module besides kslm.errors that the format modules import. This package holds the one registry of them
(`FORMATS`), format sniffing, `read_any`, the dev splits and `read_records_with_lines`.
"""

import json
from dataclasses import dataclass
from typing import Callable, Iterator, List

from kslm.data.formats.bio import is_tag_line, read_bio
from kslm.data.formats.canonical import check_record, read_canonical
from kslm.data.formats.cluener import cluener_train_dev, read_cluener
from kslm.data.formats.cmeee import cmeee_train_dev, read_cmeee
from kslm.data.formats.duie import read_cmeie, read_duie
from kslm.data.formats.jsonl import ReadStats, check_file, iter_json_array, iter_jsonl, nonblank_lines
from kslm.data.formats.webnlg import read_webnlg
from kslm.errors import DataError


@dataclass(frozen=True)
class Format:
    """One source format: its reader (path, **options → canonical records), the tasks its records serve ("ner",
    "re") and whether it holds one record per non-blank line (JSON Lines: records are numbered by line)."""

    reader: Callable[..., Iterator[dict]]
    tasks: tuple[str, ...]
    jsonl: bool


FORMATS: dict[str, Format] = {
    "cluener": Format(read_cluener, ("ner",), jsonl=True),
    "cmeee": Format(read_cmeee, ("ner",), jsonl=False),
    "bio": Format(read_bio, ("ner",), jsonl=False),
    "duie": Format(read_duie, ("re",), jsonl=True),
    "cmeie": Format(read_cmeie, ("re",), jsonl=True),
    "webnlg": Format(read_webnlg, ("re",), jsonl=False),
    "canonical": Format(read_canonical, ("ner", "re"), jsonl=True),
}
JSONL_FORMATS = frozenset(name for name, f in FORMATS.items() if f.jsonl)


def format_names(task: str | None = None) -> tuple[str, ...]:
    """The registered format names, or those whose records serve `task` ("ner" or "re")."""
    return tuple(name for name, f in FORMATS.items() if task is None or task in f.tasks)


def sniff_format(path) -> str:
    """Guess the format from the first record (see FORMATS)."""
    p = check_file(path)
    with open(p, encoding="utf-8") as f:
        head = f.read(1 << 16)
    stripped = head.lstrip()
    if stripped.startswith("["):
        first = next(iter(iter_json_array(p)), (None, {}))[1]
        return "webnlg" if "triple_list" in first else "cmeee"
    if stripped.startswith("{"):
        try:
            first = json.loads(stripped.split("\n", 1)[0])
        except json.JSONDecodeError:
            raise DataError("starts like JSON but its first line is not a JSON object; pass fmt=", path=p, line=1) from None
        if "label" in first:
            return "cluener"
        if "spo_list" in first:
            return "duie"
        if "entities" in first or "triples" in first or "text" in first:
            return "canonical"
        raise DataError(f"cannot tell the format from keys {sorted(first)}; pass fmt= (one of {format_names()})",
                        path=p, line=1)
    if is_tag_line(stripped.split("\n", 1)[0]):
        return "bio"
    raise DataError(f"cannot tell the format; pass fmt= (one of {format_names()})", path=p, line=1)


def read_any(path, fmt: str = "auto", **kwargs) -> Iterator[dict]:
    """Read `path` in format `fmt` (one of FORMATS, or "auto" to sniff); kwargs go to the reader."""
    if fmt == "auto":
        fmt = sniff_format(path)
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; expected auto or one of {format_names()}", path=path, field="fmt")
    return FORMATS[fmt].reader(path, **kwargs)


def read_records_with_lines(path, fmt: str = "auto", **kwargs) -> List[dict]:
    """Records of `path` with a "line" key: the 1-based line for JSON Lines formats, else the 1-based record number.
    kwargs go to the reader (e.g. skip_unlocatable for DuIE / WebNLG)."""
    fmt = sniff_format(path) if fmt == "auto" else fmt
    recs = list(read_any(path, fmt, **kwargs))
    lines = nonblank_lines(path) if fmt in JSONL_FORMATS else list(range(1, len(recs) + 1))
    return [{**r, "line": n} for r, n in zip(recs, lines, strict=True)]


__all__ = ["FORMATS", "Format", "JSONL_FORMATS", "ReadStats", "check_record", "cluener_train_dev", "cmeee_train_dev",
           "format_names", "iter_jsonl", "read_any", "read_bio", "read_canonical", "read_cluener", "read_cmeee",
           "read_cmeie", "read_duie", "read_records_with_lines", "read_webnlg", "sniff_format"]
