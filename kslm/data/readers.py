"""NER / RE readers: the datasets' own formats → kslm's canonical records (encoding to tokens: kslm.data.spans).

Canonical records (character offsets, `end` EXCLUSIVE):
    NER  {"text": str, "entities": [{"start": int, "end": int, "type": str}]}
    RE   {"text": str, "triples": [{"subject", "predicate", "object", "subject_span": [s, e], "object_span": [s, e]}]}

Every reader validates every record and raises one `DataError` naming file, line (1-based, JSON Lines and
char-per-line files) or "record N" (0-based index into a JSON array) and the field. Nothing is dropped silently:
the options that skip or repair (`skip_unlocatable`, `repair`) count what they did in a `ReadStats` and log it.

Source formats (see each dataset's SOURCE.md):
    cluener    JSONL `{"text", "label": {type: {entity: [[s, e], ...]}}}`, e INCLUSIVE; test lines have no label
    cmeee      JSON array `{"text", "entities": [{"start_idx", "end_idx", "type", "entity"}]}`, end_idx INCLUSIVE, nested
    bio        one char per line `<char><space|tab><tag>`, blank line between sentences; BIO, BIOES/BMES tags.
               Weibo NER writes the char followed by its word-segment position (`科0`, `p10`): `segpos` strips it
    duie       JSONL `{"text", "spo_list": [{"subject", "predicate", "object", ...}]}` entity strings, no offsets;
               CMeIE is the same with `"object": {"@value": ...}`
    webnlg     JSON array `{"text", "triple_list": [[subject, relation, object]]}`, space-tokenized English
    canonical  JSONL of canonical NER or RE records
"""

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from kslm.errors import DataError

log = logging.getLogger(__name__)

FORMATS = ("cluener", "cmeee", "bio", "duie", "cmeie", "webnlg", "canonical")


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


def _check_file(path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise DataError("file not found", path=p)
    return p


def iter_jsonl(path) -> Iterator[tuple[int, dict]]:
    """(1-based line, object) for every non-blank line."""
    p = _check_file(path)
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"invalid JSON ({exc.msg} at column {exc.colno})", path=p, line=n) from None
            if not isinstance(obj, dict):
                raise DataError(f"expected a JSON object, got {type(obj).__name__}", path=p, line=n)
            yield n, obj


def _json_array(path) -> Iterator[tuple[str, dict]]:
    """("record N", object) for each element of a JSON array (N is the 0-based index)."""
    p = _check_file(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON ({exc.msg} at column {exc.colno})", path=p, line=exc.lineno) from None
    if not isinstance(data, list):
        raise DataError(f"expected a JSON array of records, got {type(data).__name__}", path=p)
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise DataError(f"expected a JSON object, got {type(obj).__name__}", path=p, line=f"record {i}")
        yield f"record {i}", obj


def _text(obj: dict, path, line) -> str:
    text = obj.get("text")
    if not isinstance(text, str):
        raise DataError(f"missing or not a string (got {type(text).__name__})", path=path, line=line, field="text")
    if not text:
        raise DataError("empty text", path=path, line=line, field="text")
    return text


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_span(text: str, start, end, path, line, fld: str, entity=None) -> None:
    """`start`, `end` exclusive must lie inside the text, non-empty; if `entity` is given it must be the covered text."""
    if not (_is_int(start) and _is_int(end)):
        raise DataError(f"offsets must be integers, got {start!r}, {end!r}", path=path, line=line, field=fld)
    if not 0 <= start < end <= len(text):
        raise DataError(f"span [{start}, {end}) is empty or outside the text (length {len(text)})",
                        path=path, line=line, field=fld)
    if entity is not None and text[start:end] != entity:
        raise DataError(f"entity {entity!r} != text[{start}:{end}] = {text[start:end]!r}", path=path, line=line, field=fld)


def _sorted_entities(ents: list[dict]) -> list[dict]:
    return sorted(ents, key=lambda e: (e["start"], e["end"], e["type"]))


# ----------------------------------------------------------------------------------------------- NER readers


def read_cluener(path) -> Iterator[dict]:
    """CLUENER2020 JSONL; `[s, e]` ends are INCLUSIVE in the file and exclusive in the output."""
    for n, obj in iter_jsonl(path):
        text = _text(obj, path, n)
        label = obj.get("label", {})  # test.json: {"id", "text"} only
        if not isinstance(label, dict):
            raise DataError("must be an object {type: {entity: [[start, end], ...]}}", path=path, line=n, field="label")
        ents = []
        for typ, by_entity in label.items():
            if not isinstance(by_entity, dict):
                raise DataError("must be an object {entity: [[start, end], ...]}", path=path, line=n, field=f"label.{typ}")
            for entity, spans in by_entity.items():
                fld = f"label.{typ}.{entity}"
                if not isinstance(spans, list):
                    raise DataError("must be a list of [start, end]", path=path, line=n, field=fld)
                for k, span in enumerate(spans):
                    if not (isinstance(span, list) and len(span) == 2):
                        raise DataError(f"expected [start, end], got {span!r}", path=path, line=n, field=f"{fld}[{k}]")
                    s, e = span
                    _check_span(text, s, e + 1 if _is_int(e) else e, path, n, f"{fld}[{k}]", entity)
                    ents.append({"start": s, "end": e + 1, "type": typ})
        rec = {"text": text, "entities": _sorted_entities(ents)}
        if "id" in obj:
            rec["id"] = obj["id"]
        yield rec


def read_cmeee(path) -> Iterator[dict]:
    """CMeEE v1/v2 JSON array; `end_idx` INCLUSIVE (text[s:e+1] == entity); nested entities kept."""
    for where, obj in _json_array(path):
        text = _text(obj, path, where)
        raw = obj.get("entities", [])  # v1 test records have no "entities"
        if not isinstance(raw, list):
            raise DataError("must be a list", path=path, line=where, field="entities")
        ents = []
        for k, ent in enumerate(raw):
            fld = f"entities[{k}]"
            if not isinstance(ent, dict):
                raise DataError("must be an object", path=path, line=where, field=fld)
            for key in ("start_idx", "end_idx", "type"):
                if key not in ent:
                    raise DataError("missing", path=path, line=where, field=f"{fld}.{key}")
            s, e, typ = ent["start_idx"], ent["end_idx"], ent["type"]
            if not (isinstance(typ, str) and typ):
                raise DataError("must be a non-empty string", path=path, line=where, field=f"{fld}.type")
            _check_span(text, s, e + 1 if _is_int(e) else e, path, where, fld, ent.get("entity"))
            ents.append({"start": s, "end": e + 1, "type": typ})
        yield {"text": text, "entities": _sorted_entities(ents)}


_SEGPOS = re.compile(r"^(.+?)(\d+)$")
_LINE = re.compile(r"^(.+?)[ \t]+(\S+)$")


def read_bio(path, segpos: bool | None = None, repair: bool = False, stats: ReadStats | None = None) -> Iterator[dict]:
    """Char-per-line tagged files (People's Daily, MSRA, Weibo): `<char> <tag>` lines, blank line between sentences.

    Tags: `O`, `B-X`, `I-X`, `M-X`, `E-X`, `S-X` (BIO, BIOES and BMES all read). An `I-/M-/E-X` that does not
    continue an open `X` entity is an error, or with `repair=True` starts a new entity (conlleval's reading) and
    is counted in `stats.repaired_tags`.
    segpos: Weibo NER appends the char's position in its word segment (`科0`, `p10`); True strips the trailing
    digits (keeping at least one char, so `310` is `3`), None detects it from the file (every token of the first
    50 lines is a char followed by digits).
    """
    p = _check_file(path)
    stats = stats if stats is not None else ReadStats()
    with open(p, encoding="utf-8") as f:
        lines = f.read().split("\n")
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
                yield {"text": "".join(chars), "entities": _sorted_entities(ents)}
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
                                "pass repair=True to read it as B-", path=p, line=n, field="tag")
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
        yield {"text": "".join(chars), "entities": _sorted_entities(ents)}
    if stats.repaired_tags:
        log.warning("%s: %d tags without an open entity were read as B- (repair=True)", p, stats.repaired_tags)


# ----------------------------------------------------------------------------------------------- canonical


def check_record(rec: dict, path=None, line=None) -> dict:
    """Validate one canonical NER or RE record (returns it)."""
    text = _text(rec, path, line)
    if "entities" in rec or "triples" not in rec:
        ents = rec.get("entities", [])
        if not isinstance(ents, list):
            raise DataError("must be a list", path=path, line=line, field="entities")
        for k, e in enumerate(ents):
            fld = f"entities[{k}]"
            if not isinstance(e, dict) or not {"start", "end", "type"} <= e.keys():
                raise DataError("must be an object with start, end, type", path=path, line=line, field=fld)
            if not (isinstance(e["type"], str) and e["type"]):
                raise DataError("must be a non-empty string", path=path, line=line, field=f"{fld}.type")
            _check_span(text, e["start"], e["end"], path, line, fld)
    if "triples" in rec:
        triples = rec["triples"]
        if not isinstance(triples, list):
            raise DataError("must be a list", path=path, line=line, field="triples")
        for k, t in enumerate(triples):
            fld = f"triples[{k}]"
            if not isinstance(t, dict):
                raise DataError("must be an object", path=path, line=line, field=fld)
            for name in ("subject", "predicate", "object"):
                if not (isinstance(t.get(name), str) and t[name]):
                    raise DataError("must be a non-empty string", path=path, line=line, field=f"{fld}.{name}")
            for name in ("subject", "object"):
                span = t.get(f"{name}_span")
                if not (isinstance(span, list) and len(span) == 2):
                    raise DataError(f"expected [start, end], got {span!r}", path=path, line=line, field=f"{fld}.{name}_span")
                _check_span(text, span[0], span[1], path, line, f"{fld}.{name}_span", t[name])
    return rec


def read_canonical(path) -> Iterator[dict]:
    """kslm's canonical JSONL (NER records with `entities`, RE records with `triples`; a bare {"text"} is NER)."""
    for n, obj in iter_jsonl(path):
        rec = check_record(obj, path, n)
        if "entities" not in rec and "triples" not in rec:
            rec["entities"] = []
        yield rec


def sniff_format(path) -> str:
    """Guess the format from the first record (see FORMATS)."""
    p = _check_file(path)
    with open(p, encoding="utf-8") as f:
        head = f.read(1 << 16)
    stripped = head.lstrip()
    if stripped.startswith("["):
        first = next(iter(_json_array(p)), (None, {}))[1]
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
        raise DataError(f"cannot tell the format from keys {sorted(first)}; pass fmt= (one of {FORMATS})", path=p, line=1)
    if _LINE.match(stripped.split("\n", 1)[0].rstrip("\r")):
        return "bio"
    raise DataError(f"cannot tell the format; pass fmt= (one of {FORMATS})", path=p, line=1)


def read_any(path, fmt: str = "auto", **kwargs) -> Iterator[dict]:
    """Read `path` in format `fmt` (one of FORMATS, or "auto" to sniff); kwargs go to the reader."""
    if fmt == "auto":
        fmt = sniff_format(path)
    from kslm.data.re_readers import read_cmeie, read_duie, read_webnlg

    readers = {"cluener": read_cluener, "cmeee": read_cmeee, "bio": read_bio, "duie": read_duie, "cmeie": read_cmeie,
               "webnlg": read_webnlg, "canonical": read_canonical}
    if fmt not in readers:
        raise DataError(f"unknown format {fmt!r}; expected auto or one of {FORMATS}", path=path, field="fmt")
    return readers[fmt](path, **kwargs)


# ----------------------------------------------------------------------------------------------- dev splits


def cluener_train_dev(path, n_dev: int = 1000) -> tuple[list[dict], list[dict]]:
    """CLUENER's official dev.json is not shipped: the LAST `n_dev` lines of train.json are dev, the rest train."""
    recs = list(read_cluener(path))
    if len(recs) <= n_dev:
        raise DataError(f"{len(recs)} records, need more than n_dev={n_dev}", path=path)
    return recs[:-n_dev], recs[-n_dev:]


def cmeee_train_dev(path, n_train: int = 3200) -> tuple[list[dict], list[dict]]:
    """CMeEE ships only the first 4,000 dev records: the first `n_train` (3,200) in file order are train, the rest
    (800) dev."""
    recs = list(read_cmeee(path))
    if len(recs) <= n_train:
        raise DataError(f"{len(recs)} records, need more than n_train={n_train}", path=path)
    return recs[:n_train], recs[n_train:]


__all__ = ["FORMATS", "ReadStats", "iter_jsonl", "read_cluener", "read_cmeee", "read_bio",
           "read_canonical", "read_any", "sniff_format", "check_record", "cluener_train_dev", "cmeee_train_dev"]


RE_READERS = ("read_duie", "read_cmeie", "read_webnlg")


def __getattr__(name):
    """The RE readers live in kslm.data.re_readers (which imports this module's file-access helpers)."""
    if name in RE_READERS:
        from kslm.data import re_readers

        return getattr(re_readers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
