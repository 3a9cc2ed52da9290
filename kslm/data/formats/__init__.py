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
(`FORMATS`), format sniffing, `read_any`, the dev splits, `read_records_with_lines` (training / validation records)
and `read_texts_with_lines` (prediction inputs, recognised by their own format whatever the training data's is).

Files are UTF-8 (a byte-order mark is dropped; another encoding is an error naming line, column and byte). A
labelled record may hold only its format's keys (plus "id"): a misspelled label key is an error, not a record
without labels. Hints name the command-line options (`--data.format`, `--data.skip_unlocatable`, `--data.repair`).
"""

import logging
from dataclasses import dataclass
from typing import Callable, Iterator, List

from kslm.data.formats.bio import is_tag_line, read_bio
from kslm.data.formats.canonical import check_record, read_canonical
from kslm.data.formats.cluener import cluener_train_dev, read_cluener
from kslm.data.formats.cmeee import cmeee_train_dev, read_cmeee
from kslm.data.formats.duie import read_cmeie, read_duie
from kslm.data.formats.jsonl import (
    ReadStats,
    check_file,
    iter_json_array,
    iter_jsonl,
    iter_lines,
    key_hint,
    nonblank_lines,
    record_text,
)
from kslm.data.formats.webnlg import read_webnlg
from kslm.errors import DataError
from kslm.io import JsonInputError, json_loads

log = logging.getLogger(__name__)


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


def _first_line(path) -> tuple[int, str]:
    """(1-based number, text) of the first non-blank line of `path`, read whole however long (a byte-order mark
    dropped); (0, "") for a blank file."""
    for n, line in iter_lines(path):
        if line.strip():
            return n, line
    return 0, ""


def _sniff_keys(keys, path, line, array: bool) -> str:
    """The format of records with these keys (JSON Lines records, or the elements of a JSON array)."""
    if array:
        if "triple_list" in keys:
            return "webnlg"
        if "entities" in keys or set(keys) <= {"text", "id"}:
            return "cmeee"
        if "label" in keys or "spo_list" in keys:
            raise DataError(f"a JSON array of records with key {'label' if 'label' in keys else 'spo_list'!r}: "
                            f"{'cluener' if 'label' in keys else 'duie'} files are JSON Lines, one record per line "
                            "(a JSON array is read as cmeee or webnlg)", path=path, line=line)
    else:
        if "label" in keys:
            return "cluener"
        if "spo_list" in keys:
            return "duie"
        if "entities" in keys or "triples" in keys or "text" in keys:
            return "canonical"
    hint = next((key_hint(k) for k in sorted(keys) if key_hint(k)), "")
    raise DataError(f"cannot tell the format from keys {sorted(keys)}: give --data.format (one of "
                    f"{', '.join(format_names())}){hint}", path=path, line=line)


def sniff_format(path) -> str:
    """Guess the format from the first record (see FORMATS)."""
    p = check_file(path)
    n, first = _first_line(p)
    if not first:
        raise DataError("empty file: no records", path=p)
    stripped = first.lstrip()
    if stripped.startswith("["):
        rec = next(iter(iter_json_array(p)), None)
        if rec is None:
            raise DataError("an empty JSON array: no records", path=p)
        return _sniff_keys(rec[1].keys(), p, rec[0], array=True)
    if stripped.startswith("{"):
        try:
            obj = json_loads(first)
        except JsonInputError as exc:
            raise DataError(f"starts like JSON but is not one JSON object ({exc}); JSON Lines files hold one record "
                            "per line, JSON files one array of records", path=p, line=n) from None
        if not isinstance(obj, dict):
            raise DataError(f"expected a JSON object, got {type(obj).__name__}", path=p, line=n)
        return _sniff_keys(obj.keys(), p, n, array=False)
    if is_tag_line(first.rstrip("\n")):
        return "bio"
    raise DataError(f"cannot tell the format (not JSON Lines, a JSON array or '<char> <tag>' lines); give --data.format "
                    f"(one of {', '.join(format_names())})", path=p, line=n)


def read_any(path, fmt: str = "auto", **kwargs) -> Iterator[dict]:
    """Read `path` in format `fmt` (one of FORMATS, or "auto" to sniff); kwargs go to the reader."""
    if fmt == "auto":
        fmt = sniff_format(path)
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; expected auto or one of {format_names()}", path=path, field="fmt")
    return FORMATS[fmt].reader(path, **kwargs)


def read_records_with_lines(path, fmt: str = "auto", **kwargs) -> List[dict]:
    """Records of `path` with a "line" key: the 1-based line for JSON Lines formats, else the 1-based record number.
    kwargs go to the reader (e.g. skip_unlocatable for DuIE / WebNLG). With a format given, an error in a file that
    looks like another format says so."""
    given = fmt != "auto"
    fmt = sniff_format(path) if fmt == "auto" else fmt
    try:
        recs = list(read_any(path, fmt, **kwargs))
    except DataError as exc:
        guess = _guess(path) if given else None
        if guess is None or guess == fmt or "--data.format" in str(exc):
            raise
        raise DataError(f"{exc}; the file looks like {guess}, not {fmt} (--data.format {guess})") from None
    lines = nonblank_lines(path) if fmt in JSONL_FORMATS else list(range(1, len(recs) + 1))
    return [{**r, "line": n} for r, n in zip(recs, lines, strict=True)]


def _guess(path):
    try:
        return sniff_format(path)
    except DataError:
        return None


def read_texts_with_lines(path, fmt: str = "auto") -> List[dict]:
    """Prediction inputs: {"text", "line"} of every record of `path` (labels are not read: a labelled file serves as
    well as an unlabelled one). The file's format is recognised on its own — a JSON Lines file of {"text": …}
    records is always read, whatever `fmt` (the training data's format) says; `fmt` is used only for a file that
    cannot be sniffed. "line" is as in `read_records_with_lines`."""
    if not _first_line(check_file(path))[1]:
        log.warning("%s: no records to predict", path)
        return []
    guess = _guess(path)
    if guess is None:
        if fmt == "auto":
            sniff_format(path)  # raises its error
        guess = fmt
    if FORMATS[guess].jsonl:
        return [{"text": record_text(obj, path, n), "line": n} for n, obj in iter_jsonl(path)]
    if guess == "bio":  # tags are not read: an orphan I- tag is no reason to refuse a text
        return [{"text": r["text"], "line": i} for i, r in enumerate(read_bio(path, repair=True, stats=ReadStats()), 1)]
    return [{"text": record_text(obj, path, where), "line": i}
            for i, (where, obj) in enumerate(iter_json_array(path), 1)]


__all__ = ["FORMATS", "Format", "JSONL_FORMATS", "ReadStats", "check_record", "cluener_train_dev", "cmeee_train_dev",
           "format_names", "iter_jsonl", "read_any", "read_bio", "read_canonical", "read_cluener", "read_cmeee",
           "read_cmeie", "read_duie", "read_records_with_lines", "read_texts_with_lines", "read_webnlg", "sniff_format"]
